//! The reconciler: Redis only wakes workers, so anything Redis loses (a flush, a restart without persistence, a
//! message dropped between the Postgres commit and the push) is found again in Postgres and queued anew:
//! - `queued` jobs nobody has touched for RECONCILE_QUEUED_AFTER are pushed again, but only as many as the queue is
//!   short of (Postgres' queued count minus the messages Redis holds), oldest first, so a long healthy backlog is
//!   not flooded with duplicates;
//! - `running` jobs whose lease expired (their worker died) go back to `queued` and are pushed again, or fail once
//!   their attempts are used up.
//!
//! - finished jobs whose budget reservation nobody settled (canceled by their client, failed here, or ended by a
//!   worker that died before settling) are settled to their cost.
//!
//! Every worker runs it; a Postgres advisory lock lets one pass run at a time across the fleet (see `db::reconcile`).
//! Duplicate messages are harmless: a worker claims a job only if it is still queued (or its lease expired).

use imagegen_shared::budget::{BudgetError, BudgetLedger};
use imagegen_shared::db::{self, Db};
use imagegen_shared::domain::JobStatus;
use imagegen_shared::queue::signals::JobEvent;
use imagegen_shared::queue::{JobMessage, JobQueue};
use imagegen_shared::storage::ImageStorage;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows handled per pass, so one pass stays short.
const BATCH: i64 = 500;

#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    pub every: Duration,
    pub queued_after: Duration,
}

/// One pass; returns (re-queued stale queued jobs, expired leases re-queued, expired leases failed), or `None`
/// when another process holds the lock.
pub async fn reconcile_once(
    pool: &Db,
    queue: &JobQueue,
    settings: &ReconcilerSettings,
) -> Result<Option<(usize, usize, usize)>, db::DbError> {
    // How many messages the queue holds; unknown, nothing counts as missing this pass.
    let held = match queue.depth().await {
        Ok(d) => i64::try_from(d).unwrap_or(i64::MAX),
        Err(e) => {
            tracing::warn!(error = %e, "reconciler cannot read the queue; skipping queued jobs this pass");
            i64::MAX
        }
    };
    let Some(pass) = db::reconcile::pass(pool, held, settings.queued_after, BATCH).await? else {
        return Ok(None);
    };
    // Waiters hear of every job the reconciler ends, as they do of the workers'.
    let ended = (pass
        .past_deadline
        .iter()
        .map(|job| (job, JobStatus::Canceled)))
    .chain(pass.failed.iter().map(|job| (job, JobStatus::Failed)));
    for ((id, batch), status) in ended {
        // The reconciler ended it, so it counts it (the API does not count job events).
        metrics::counter!("imagegen_jobs_finished_total", "status" => status.as_str()).increment(1);
        let event = JobEvent::status(*id, *batch, status);
        if let Err(e) = queue.publish_event(&event).await {
            tracing::warn!(error = %e, %status, "could not publish a job the reconciler ended");
        }
    }
    for (id, correlation_id) in pass.expired.iter().chain(pass.stale.iter()) {
        let message = JobMessage {
            job_id: *id,
            correlation_id: correlation_id.clone(),
        };
        if let Err(e) = queue.push(message).await {
            // The row stays queued; the next pass tries again.
            tracing::warn!(error = %e, job_id = %id, "reconciler could not re-queue a job");
        }
    }
    if !pass.failed.is_empty() {
        metrics::counter!("imagegen_reconciler_jobs_total", "action" => "failed_lease_expired")
            .increment(pass.failed.len() as u64);
    }
    if !pass.expired.is_empty() {
        metrics::counter!("imagegen_reconciler_jobs_total", "action" => "requeued_lease_expired")
            .increment(pass.expired.len() as u64);
    }
    if !pass.stale.is_empty() {
        metrics::counter!("imagegen_reconciler_jobs_total", "action" => "requeued_stale")
            .increment(pass.stale.len() as u64);
    }
    Ok(Some((
        pass.stale.len(),
        pass.expired.len(),
        pass.failed.len(),
    )))
}

/// Deletes objects whose writer died before recording them (see `db::pending`). Returns how many.
pub async fn sweep_orphans(pool: &Db, storage: &ImageStorage) -> Result<usize, db::DbError> {
    let keys = db::pending::orphans(pool, BATCH).await?;
    let mut removed = Vec::with_capacity(keys.len());
    for key in keys {
        match storage.delete_image(&key).await {
            Ok(()) => removed.push(key),
            Err(e) => {
                tracing::warn!(%key, error = %e, "could not delete an orphaned object; will retry")
            }
        }
    }
    db::pending::forget(pool, &removed).await?;
    if !removed.is_empty() {
        metrics::counter!("imagegen_reconciler_jobs_total", "action" => "orphan_deleted")
            .increment(removed.len() as u64);
    }
    Ok(removed.len())
}

/// Settles the budget reservation of finished jobs nobody settled. Returns how many.
pub async fn settle_unsettled(pool: &Db, budgets: &BudgetLedger) -> Result<usize, BudgetError> {
    let ids = db::costs::unsettled_finished(pool, BATCH).await?;
    for id in &ids {
        imagegen_shared::budget::settle_job(pool, budgets, *id, None).await?;
    }
    Ok(ids.len())
}

/// Runs a pass, an orphan sweep and a settle sweep every `settings.every` until `stop`.
pub async fn run(
    pool: Db,
    queue: JobQueue,
    storage: ImageStorage,
    budgets: BudgetLedger,
    settings: ReconcilerSettings,
    stop: CancellationToken,
) {
    let mut ticks = imagegen_shared::ticker::every(settings.every, &stop);
    while ticks.next().await {
        match reconcile_once(&pool, &queue, &settings).await {
            Ok(Some((stale, expired, failed))) if stale + expired + failed > 0 => {
                tracing::info!(stale, expired, failed, "reconciler re-queued lost work");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciler pass failed; will retry"),
        }
        match sweep_orphans(&pool, &storage).await {
            Ok(n) if n > 0 => tracing::info!(
                removed = n,
                "reconciler deleted objects of workers that died mid-write"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "orphan sweep failed; will retry"),
        }
        match settle_unsettled(&pool, &budgets).await {
            Ok(n) if n > 0 => {
                tracing::debug!(settled = n, "reconciler settled finished jobs' budgets")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "budget settle sweep failed; will retry"),
        }
    }
}
