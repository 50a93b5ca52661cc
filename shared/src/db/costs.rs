//! `charges`, a job's cost columns and `budgets`: what each charged provider call cost (recorded as it happens,
//! before the pictures are stored, since the money is spent either way), the settling of a job's budget
//! reservation once it ends, the sums a missing budget counter is rebuilt from, and the usage reports.

use super::{Db, DbError, on_db};
use crate::cost::{Charge, Cost};
use crate::domain::JobId;
use chrono::{DateTime, Utc};

/// A charged provider call about to be recorded.
#[derive(Debug, Clone)]
pub struct NewCharge<'a> {
    pub job_id: JobId,
    pub attempt: i32,
    pub owner: &'a str,
    pub api_key_id: Option<uuid::Uuid>,
    pub provider: &'a str,
    pub model: &'a str,
    pub cost: Cost,
    pub images: i32,
}

/// A charge row, once per attempt: `$1` to `$10` as `bind_charge!` binds them.
const INSERT_CHARGE: &str = "INSERT INTO charges (job_id, attempt, owner, api_key_id, provider, model, usd_micros, \
    basis, estimated, images) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (job_id, attempt) DO NOTHING";

/// Binds a charge's columns as `$1` to `$10` (`INSERT_CHARGE`) to a query of either database.
macro_rules! bind_charge {
    ($query:expr, $c:expr) => {
        $query
            .bind($c.job_id)
            .bind($c.attempt)
            .bind($c.owner)
            .bind($c.api_key_id)
            .bind($c.provider)
            .bind($c.model)
            .bind($c.cost.usd_micros)
            .bind($c.cost.basis.as_str())
            .bind($c.cost.estimated)
            .bind($c.images)
    };
}

/// `record_charge`'s statement on Postgres, built once (it runs for every provider call that is charged).
static CHARGE_AND_COST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH charged AS ({INSERT_CHARGE} RETURNING job_id) \
         UPDATE jobs SET cost_usd_micros = cost_usd_micros + $7, \
            cost_basis = CASE WHEN cost_basis = 'none' OR cost_basis = $8 THEN $8 ELSE 'mixed' END, \
            cost_estimated = (cost_estimated OR $9) \
         WHERE id = (SELECT job_id FROM charged) RETURNING budget_settled, created_at"
    )
});

/// `CHARGE_AND_COST` with the storage intents of the answer's pictures (`$11` their keys, `$12` the worker) in the
/// same statement: one round trip and one commit where the charge and the intents were two.
static CHARGE_COST_AND_INTENTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH charged AS ({INSERT_CHARGE} RETURNING job_id), \
         intents AS (INSERT INTO pending_objects (storage_key, job_id, worker_id) \
            SELECT key, $1, $12 FROM UNNEST($11::text[]) AS key ON CONFLICT DO NOTHING) \
         UPDATE jobs SET cost_usd_micros = cost_usd_micros + $7, \
            cost_basis = CASE WHEN cost_basis = 'none' OR cost_basis = $8 THEN $8 ELSE 'mixed' END, \
            cost_estimated = (cost_estimated OR $9) \
         WHERE id = (SELECT job_id FROM charged) RETURNING budget_settled, created_at"
    )
});

/// Records a charge as [`record_charge`] does and, in the same transaction, the intents of the pictures its answer
/// is about to store under `keys` ([`super::pending::record_all`]): both or neither. No keys: the charge alone.
pub async fn record_charge_and_intents(
    db: &Db,
    c: &NewCharge<'_>,
    keys: &[String],
    worker_id: &str,
) -> Result<Option<Settlement>, DbError> {
    if keys.is_empty() {
        return record_charge(db, c).await;
    }
    let pool = match db {
        Db::Postgres(pool) => pool,
        // Standalone: one process, no round trip to save.
        Db::Sqlite(_) => {
            let late = record_charge(db, c).await?;
            super::pending::record_all(db, keys, c.job_id, worker_id).await?;
            return Ok(late);
        }
    };
    let settled: Option<(bool, DateTime<Utc>)> = bind_charge!(
        sqlx::query_as(sqlx::AssertSqlSafe(CHARGE_COST_AND_INTENTS.as_str())),
        c
    )
    .bind(keys)
    .bind(worker_id)
    .fetch_optional(pool)
    .await?;
    Ok(late_settlement(c, settled))
}

/// Records a charge and adds it to its job's cost, once: a second record of the same attempt changes nothing.
/// `Some` when the job's budget was already settled (canceled by its client while the call ran): the charge must
/// then be added to the budget counters directly (`BudgetLedger::settle` of the returned settlement).
pub async fn record_charge(db: &Db, c: &NewCharge<'_>) -> Result<Option<Settlement>, DbError> {
    let settled: Option<(bool, DateTime<Utc>)> = match db {
        // One statement, one round trip: the job's cost moves only if the charge row was new.
        Db::Postgres(pool) => {
            bind_charge!(
                sqlx::query_as(sqlx::AssertSqlSafe(CHARGE_AND_COST.as_str())),
                c
            )
            .fetch_optional(pool)
            .await?
        }
        // SQLite has no data-modifying CTEs: the same two writes in a transaction.
        Db::Sqlite(pool) => {
            let sql = &super::SQLITE;
            let mut tx = pool.begin_with(sql.begin).await?;
            let inserted = bind_charge!(sqlx::query(INSERT_CHARGE), c)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            let settled = if inserted {
                sqlx::query_as(
                    "UPDATE jobs SET cost_usd_micros = cost_usd_micros + $2, \
                        cost_basis = CASE WHEN cost_basis = 'none' OR cost_basis = $3 THEN $3 ELSE 'mixed' END, \
                        cost_estimated = (cost_estimated OR $4) \
                     WHERE id = $1 RETURNING budget_settled, created_at",
                )
                .bind(c.job_id)
                .bind(c.cost.usd_micros)
                .bind(c.cost.basis.as_str())
                .bind(c.cost.estimated)
                .fetch_optional(&mut *tx)
                .await?
            } else {
                None
            };
            tx.commit().await?;
            settled
        }
    };
    Ok(late_settlement(c, settled))
}

/// What a charge recorded after its job's budget was settled adds to the counters (`None`: it counts through the
/// job's own settlement, or it was recorded before).
pub(crate) fn late_settlement(
    c: &NewCharge<'_>,
    settled: Option<(bool, DateTime<Utc>)>,
) -> Option<Settlement> {
    match settled {
        Some((true, created_at)) => Some(Settlement {
            owner: c.owner.to_owned(),
            api_key_id: c.api_key_id,
            created_at,
            reserved_usd_micros: 0,
            cost_usd_micros: c.cost.usd_micros,
        }),
        _ => None,
    }
}

/// A job's charges (`$1`) in attempt order, as [`super::job_parts::ChargeTuple`]s.
pub(crate) const CHARGES_OF_JOB: &str = "SELECT attempt, provider, model, usd_micros, basis, estimated, images \
    FROM charges WHERE job_id = $1 ORDER BY attempt";

/// A job's charges in attempt order.
pub async fn charges_of(db: &Db, job: JobId) -> Result<Vec<Charge>, DbError> {
    let rows: Vec<super::job_parts::ChargeTuple> = on_db!(db, |pool, sql| {
        sqlx::query_as(CHARGES_OF_JOB)
            .bind(job)
            .fetch_all(pool)
            .await?
    });
    Ok(rows.into_iter().map(super::job_parts::charge).collect())
}

/// A finished job's reservation against its cost, to settle the budget counters with.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Settlement {
    pub owner: String,
    pub api_key_id: Option<uuid::Uuid>,
    pub created_at: DateTime<Utc>,
    pub reserved_usd_micros: i64,
    pub cost_usd_micros: i64,
}

/// Marks a finished job's budget settled, once: `Some` for the one caller that flips it.
pub async fn settle(db: &Db, job: JobId) -> Result<Option<Settlement>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, Settlement>(
            "UPDATE jobs SET budget_settled = TRUE \
             WHERE id = $1 AND NOT budget_settled \
               AND status IN ('succeeded', 'failed', 'moderated', 'canceled') \
             RETURNING owner, api_key_id, created_at, reserved_usd_micros, cost_usd_micros",
        )
        .bind(job)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Finished jobs not yet settled (whoever ended them did not settle: the client's cancel, the reconciler, a
/// worker that died in between), oldest first.
pub async fn unsettled_finished(db: &Db, limit: i64) -> Result<Vec<JobId>, DbError> {
    let rows: Vec<(JobId,)> = on_db!(db, |pool, sql| {
        sqlx::query_as(
            "SELECT id FROM jobs WHERE NOT budget_settled \
               AND status IN ('succeeded', 'failed', 'moderated', 'canceled') \
             ORDER BY created_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Whose spending a budget counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Spender {
    Owner(String),
    Key(uuid::Uuid),
}

/// What `who` has spent in `[from, to)` as the budget counters count it: the charges of settled jobs, and the
/// reservation of each job not yet settled (which stands for its charges until it ends).
pub async fn spent_in(
    db: &Db,
    who: &Spender,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<i64, DbError> {
    let (column, owner, key) = match who {
        Spender::Owner(o) => ("owner", Some(o.as_str()), None),
        Spender::Key(k) => ("api_key_id", None, Some(*k)),
    };
    let spent: (i64,) = on_db!(db, |pool, sql| {
        let query = format!(
            "SELECT CAST(COALESCE((SELECT SUM(c.usd_micros) FROM charges c \
                 WHERE c.{column} = $1 AND c.created_at >= {from} AND c.created_at < {to} \
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = c.job_id AND NOT j.budget_settled)), 0) \
               + COALESCE((SELECT SUM(reserved_usd_micros) FROM jobs \
                 WHERE {column} = $1 AND NOT budget_settled AND created_at >= {from} AND created_at < {to}), 0) \
               AS BIGINT)",
            from = sql.timestamp("$2"),
            to = sql.timestamp("$3"),
        );
        let q = sqlx::query_as(sqlx::AssertSqlSafe(query));
        let q = match (owner, key) {
            (Some(o), _) => q.bind(o.to_owned()),
            (None, k) => q.bind(k),
        };
        q.bind(sql.format_timestamp(from))
            .bind(sql.format_timestamp(to))
            .fetch_one(pool)
            .await?
    });
    Ok(spent.0)
}

/// How a usage report groups charges.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// The UTC day of the charge (`YYYY-MM-DD`).
    Day,
    Model,
    Provider,
}

/// One group of a usage report: pictures paid for, jobs that paid, and what they cost.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageRow {
    pub key: String,
    pub images: i64,
    pub jobs: i64,
    pub usd_micros: i64,
}

/// Charges in `[from, to)` of `owner` (every owner when `None`), grouped, and their total (a job charged on two
/// providers counts once in the total's `jobs`). One indexed aggregate query each.
pub async fn usage(
    db: &Db,
    owner: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    group: GroupBy,
) -> Result<(Vec<UsageRow>, UsageRow), DbError> {
    on_db!(db, |pool, sql| {
        let key = match group {
            GroupBy::Day if sql.is_sqlite() => "substr(created_at, 1, 10)",
            GroupBy::Day => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
        };
        let filter = format!(
            "created_at >= {from} AND created_at < {to}{owner}",
            from = sql.timestamp("$1"),
            to = sql.timestamp("$2"),
            owner = if owner.is_some() {
                " AND owner = $3"
            } else {
                ""
            },
        );
        let sums = "CAST(COALESCE(SUM(images), 0) AS BIGINT) AS images, COUNT(DISTINCT job_id) AS jobs, \
                    CAST(COALESCE(SUM(usd_micros), 0) AS BIGINT) AS usd_micros";
        let grouped = format!(
            "SELECT {key} AS key, {sums} FROM charges WHERE {filter} GROUP BY {key} ORDER BY {key}"
        );
        let total = format!("SELECT '' AS key, {sums} FROM charges WHERE {filter}");
        let (from, to) = (sql.format_timestamp(from), sql.format_timestamp(to));
        let rows = sqlx::query_as::<_, UsageRow>(sqlx::AssertSqlSafe(grouped))
            .bind(&from)
            .bind(&to)
            .bind(owner)
            .fetch_all(pool)
            .await?;
        let total = sqlx::query_as::<_, UsageRow>(sqlx::AssertSqlSafe(total))
            .bind(&from)
            .bind(&to)
            .bind(owner)
            .fetch_one(pool)
            .await?;
        Ok((rows, total))
    })
}
