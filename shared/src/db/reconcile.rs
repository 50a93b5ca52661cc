//! The reconciler's pass over unfinished jobs, in one transaction that only one process at a time may run
//! (a Postgres advisory lock; SQLite has a single process and a single writer).

use super::{Db, DbError, on_db};
use crate::domain::{FailureCode, JobId};
use std::time::Duration;

/// Any fixed number works; it only has to be the same across the fleet.
const LOCK_KEY: i64 = 0x1_6e_67_65_6e;

/// What one pass changed.
#[derive(Debug, Default)]
pub struct Pass {
    /// Queued jobs whose deadline passed: now canceled.
    pub past_deadline: Vec<JobId>,
    /// Running jobs whose lease expired with no attempts left: now failed.
    pub failed: Vec<JobId>,
    /// Running jobs whose lease expired: back to queued, to be pushed again (id, correlation id).
    pub expired: Vec<(JobId, String)>,
    /// Queued jobs nobody touched for too long and that the queue seems to have lost: to be pushed again.
    pub stale: Vec<(JobId, String)>,
}

/// One pass, or `None` when another process holds the lock. `held` is how many messages the queue holds; only as
/// many stale queued jobs as it is short of are picked, oldest first, so a healthy backlog is not duplicated.
pub async fn pass(
    db: &Db,
    held: i64,
    queued_after: Duration,
    batch: i64,
) -> Result<Option<Pass>, DbError> {
    on_db!(db, |pool, sql| {
        let mut tx = pool.begin_with(sql.begin).await?;
        if matches!(db, Db::Postgres(_)) {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut *tx)
                .await?;
            if !locked {
                return Ok(None);
            }
        }
        let now = sql.now;
        let skip = sql.skip_locked();
        // Queued jobs whose deadline passed never start; their waiters learn it when they next read.
        let past_deadline: Vec<(JobId,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'canceled', error_code = $2, error_message = $3, finished_at = {now}, \
                updated_at = {now} \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND deadline_at <= {now} AND attempts = 0 \
                          LIMIT $1 {skip}) \
             RETURNING id"
        )))
        .bind(batch)
        .bind(FailureCode::DeadlineExceeded)
        .bind(crate::db::jobs::DEADLINE_MESSAGE)
        .fetch_all(&mut *tx)
        .await?;
        let failed: Vec<(JobId,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'failed', error_code = $2, \
                error_message = 'The worker running this job stopped and its attempts are used up', \
                lease_until = NULL, finished_at = {now}, updated_at = {now} \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_until < {now} \
                          AND attempts >= max_attempts LIMIT $1 {skip}) \
             RETURNING id"
        )))
        .bind(batch)
        .bind(FailureCode::ProviderError)
        .fetch_all(&mut *tx)
        .await?;
        let expired: Vec<(JobId, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_until = NULL, updated_at = {now} \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_until < {now} LIMIT $1 {skip}) \
             RETURNING id, correlation_id"
        )))
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'queued'")
            .fetch_one(&mut *tx)
            .await?;
        let missing = (queued - i64::try_from(expired.len()).unwrap_or(0) - held).clamp(0, batch);
        let stale: Vec<(JobId, String)> = if missing == 0 {
            Vec::new()
        } else {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE jobs SET updated_at = {now} \
                 WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND updated_at < {before} \
                              ORDER BY updated_at LIMIT $2 {skip}) \
                 RETURNING id, correlation_id",
                before = sql.now_minus("$1"),
            )))
            .bind(queued_after.as_secs_f64())
            .bind(missing)
            .fetch_all(&mut *tx)
            .await?
        };
        tx.commit().await?;
        Ok(Some(Pass {
            past_deadline: past_deadline.into_iter().map(|(id,)| id).collect(),
            failed: failed.into_iter().map(|(id,)| id).collect(),
            expired,
            stale,
        }))
    })
}

/// Unfinished jobs a process must take up again when it starts as the only one on its database (standalone
/// mode): every running job's worker was this process before it stopped, so each goes back to queued.
pub async fn resume_after_restart(db: &Db, batch: i64) -> Result<Vec<(JobId, String)>, DbError> {
    on_db!(db, |pool, sql| {
        let mut tx = pool.begin_with(sql.begin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_until = NULL, updated_at = {now} \
             WHERE status = 'running'",
            now = sql.now,
        )))
        .execute(&mut *tx)
        .await?;
        let queued: Vec<(JobId, String)> = sqlx::query_as(
            "SELECT id, correlation_id FROM jobs WHERE status = 'queued' ORDER BY created_at LIMIT $1",
        )
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(queued)
    })
}
