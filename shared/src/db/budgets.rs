//! `budgets`: per-owner spending limits set through the admin API, over the deployment's defaults
//! (BUDGET_USD_PER_DAY, BUDGET_USD_PER_MONTH). Read at every submission, so a change holds at once on every API
//! process. `None` in a field means the default applies.

use super::{Db, DbError, on_db};
use crate::gather::Gather;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OwnerBudget {
    pub owner: String,
    pub usd_micros_per_day: Option<i64>,
    pub usd_micros_per_month: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

pub async fn get(db: &Db, owner: &str) -> Result<Option<OwnerBudget>, DbError> {
    get_in(&mut db.session().await?, owner).await
}

/// [`get`] on a connection the caller holds (a submission's).
pub async fn get_in(
    session: &mut super::Session,
    owner: &str,
) -> Result<Option<OwnerBudget>, DbError> {
    let row = super::on_session!(session, |conn, sql| {
        sqlx::query_as::<_, OwnerBudget>(
            "SELECT owner, usd_micros_per_day, usd_micros_per_month, updated_at FROM budgets WHERE owner = $1",
        )
        .bind(owner)
        .fetch_optional(conn)
        .await?
    });
    Ok(row)
}

/// Submissions' budget reads gathered (see [`crate::gather`]): the owners asked for at the same time are read in
/// one statement. Still read at every submission, after it arrived, so a change holds at once as before.
pub struct GroupReads {
    gather: Arc<Gather<String, Option<Option<OwnerBudget>>>>,
}

/// The most owners one gathered read asks for.
const MAX_GROUP_READ: usize = 256;
/// Gathered reads running at once (each takes a pool connection for one round trip).
const READ_SLOTS: usize = 4;

impl GroupReads {
    pub fn new(pool: PgPool) -> Self {
        let gather = Gather::new(
            "budget_read",
            MAX_GROUP_READ,
            READ_SLOTS,
            Box::new(move |owners| Box::pin(read_group(pool.clone(), owners))),
        );
        Self { gather }
    }

    /// `owner`'s row, read with whatever other owners are asked for now. Should the gathered read fail, the row is
    /// read again on a connection of its own, so the caller sees that read's own error.
    pub async fn get(&self, db: &Db, owner: &str) -> Result<Option<OwnerBudget>, DbError> {
        match self.gather.call(owner.to_owned()).await {
            Ok(Some(row)) => Ok(row),
            Ok(None) | Err(_) => get(db, owner).await,
        }
    }
}

/// One gathered read: `None` for every owner when it failed (each then reads on its own).
async fn read_group(pool: PgPool, owners: Vec<String>) -> Vec<Option<Option<OwnerBudget>>> {
    let rows = sqlx::query_as::<_, OwnerBudget>(
        "SELECT owner, usd_micros_per_day, usd_micros_per_month, updated_at FROM budgets WHERE owner = ANY($1)",
    )
    .bind(&owners)
    .fetch_all(&pool)
    .await;
    match rows {
        Ok(rows) => owners
            .iter()
            .map(|owner| Some(rows.iter().find(|r| &r.owner == owner).cloned()))
            .collect(),
        Err(e) => {
            tracing::debug!(owners = owners.len(), error = %e, "gathered budget read failed; reading one by one");
            owners.iter().map(|_| None).collect()
        }
    }
}

pub async fn list(db: &Db) -> Result<Vec<OwnerBudget>, DbError> {
    let rows = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, OwnerBudget>(
            "SELECT owner, usd_micros_per_day, usd_micros_per_month, updated_at FROM budgets ORDER BY owner",
        )
        .fetch_all(pool)
        .await?
    });
    Ok(rows)
}

/// Sets an owner's limits (replacing both).
pub async fn set(
    db: &Db,
    owner: &str,
    per_day: Option<i64>,
    per_month: Option<i64>,
) -> Result<OwnerBudget, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, OwnerBudget>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO budgets (owner, usd_micros_per_day, usd_micros_per_month) VALUES ($1, $2, $3) \
             ON CONFLICT (owner) DO UPDATE SET usd_micros_per_day = $2, usd_micros_per_month = $3, \
                updated_at = {now} \
             RETURNING owner, usd_micros_per_day, usd_micros_per_month, updated_at",
            now = sql.now,
        )))
        .bind(owner)
        .bind(per_day)
        .bind(per_month)
        .fetch_one(pool)
        .await?
    });
    Ok(row)
}

/// Removes an owner's limits (the defaults apply again); `false` if there were none.
pub async fn delete(db: &Db, owner: &str) -> Result<bool, DbError> {
    let affected = on_db!(db, |pool, sql| {
        sqlx::query("DELETE FROM budgets WHERE owner = $1")
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(affected == 1)
}
