//! `budgets`: per-owner spending limits set through the admin API, over the deployment's defaults
//! (BUDGET_USD_PER_DAY, BUDGET_USD_PER_MONTH). Read at every submission, so a change holds at once on every API
//! process. `None` in a field means the default applies.

use super::{Db, DbError, on_db};
use chrono::{DateTime, Utc};

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
