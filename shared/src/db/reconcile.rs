//! The reconciler's pass over unfinished jobs, in one transaction that only one process at a time may run
//! (a Postgres advisory lock; SQLite has a single process and a single writer). The transitions themselves are
//! `db::jobs`'; this module holds the lock, the transaction and how many stale jobs to pick.

use super::{Conn, Db, DbError, jobs, on_db};
use crate::domain::{BatchId, JobId};
use std::time::Duration;

/// Any fixed number works; it only has to be the same across the fleet.
const LOCK_KEY: i64 = 0x1_6e_67_65_6e;

/// What one pass changed.
#[derive(Debug, Default)]
pub struct Pass {
    /// Queued jobs whose deadline passed: now canceled.
    pub past_deadline: Vec<(JobId, Option<BatchId>)>,
    /// Running jobs whose lease expired with no attempts left: now failed.
    pub failed: Vec<(JobId, Option<BatchId>)>,
    /// Running jobs whose lease expired: back to queued, to be pushed again (id, correlation id).
    pub expired: Vec<(JobId, String)>,
    /// Queued jobs nobody touched for too long and that the queue seems to have lost: to be pushed again.
    pub stale: Vec<(JobId, String)>,
    /// Expired Idempotency-Keys deleted.
    pub purged_keys: u64,
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
        let past_deadline = jobs::cancel_queued_past_deadline(Conn::from(&mut *tx), batch).await?;
        let failed = jobs::fail_expired_out_of_attempts(Conn::from(&mut *tx), batch).await?;
        let expired = jobs::requeue_expired_leases(Conn::from(&mut *tx), batch).await?;
        let queued = jobs::queued_count(Conn::from(&mut *tx)).await?;
        let missing = (queued - i64::try_from(expired.len()).unwrap_or(0) - held).clamp(0, batch);
        let stale = if missing == 0 {
            Vec::new()
        } else {
            jobs::touch_stale_queued(Conn::from(&mut *tx), queued_after, missing).await?
        };
        let purged_keys = super::idempotency::purge_expired(Conn::from(&mut *tx), batch).await?;
        tx.commit().await?;
        Ok(Some(Pass {
            past_deadline,
            failed,
            expired,
            stale,
            purged_keys,
        }))
    })
}

/// Unfinished jobs a process must take up again when it starts as the only one on its database (standalone
/// mode): every running job's worker was this process before it stopped, so each goes back to queued.
pub async fn resume_after_restart(db: &Db, batch: i64) -> Result<Vec<(JobId, String)>, DbError> {
    on_db!(db, |pool, sql| {
        let mut tx = pool.begin_with(sql.begin).await?;
        jobs::requeue_all_running(Conn::from(&mut *tx)).await?;
        let queued = jobs::oldest_queued(Conn::from(&mut *tx), batch).await?;
        tx.commit().await?;
        Ok(queued)
    })
}
