//! The reconciler: Redis only wakes workers, so anything Redis loses (a flush, a restart without persistence, a
//! message dropped between the Postgres commit and the push) is found again in Postgres and queued anew:
//! - `queued` jobs nobody has touched for RECONCILE_QUEUED_AFTER are pushed again, but only as many as the queue is
//!   short of (Postgres' queued count minus the messages Redis holds), oldest first, so a long healthy backlog is
//!   not flooded with duplicates;
//! - `running` jobs whose lease expired (their worker died) go back to `queued` and are pushed again, or fail once
//!   their attempts are used up.
//!
//! Every worker runs it; a Postgres advisory lock lets one pass run at a time across the fleet. Duplicate messages
//! are harmless: a worker claims a job only if it is still queued (or its lease expired).

use imagegen_shared::db;
use imagegen_shared::domain::{JobId, JobStatus};
use imagegen_shared::events::JobEvent;
use imagegen_shared::queue::{JobMessage, JobQueue};
use imagegen_shared::storage::ImageStorage;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Any fixed number works; it only has to be the same across the fleet.
const LOCK_KEY: i64 = 0x1_6e_67_65_6e;
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
    pool: &PgPool,
    queue: &JobQueue,
    settings: &ReconcilerSettings,
) -> Result<Option<(usize, usize, usize)>, db::DbError> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(None);
    }
    // Queued jobs whose deadline passed never start; their waiters learn it when they next read.
    let past_deadline: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "UPDATE jobs SET status = 'canceled', error_code = 'deadline_exceeded', \
            error_message = 'The job''s deadline passed before it could start', finished_at = now(), updated_at = now() \
         WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND deadline_at <= now() AND attempts = 0 \
                      LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING id",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let failed: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "UPDATE jobs SET status = 'failed', error_code = 'provider_error', \
            error_message = 'The worker running this job stopped and its attempts are used up', \
            lease_until = NULL, finished_at = now(), updated_at = now() \
         WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_until < now() \
                      AND attempts >= max_attempts LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING id",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let expired: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_until = NULL, updated_at = now() \
         WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_until < now() LIMIT $1 \
                      FOR UPDATE SKIP LOCKED) \
         RETURNING id, correlation_id",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    // How many queued jobs have no message in Redis? Unknown which, so the oldest untouched ones go first.
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'queued'")
        .fetch_one(&mut *tx)
        .await?;
    let held = match queue.depth().await {
        Ok(d) => i64::try_from(d).unwrap_or(i64::MAX),
        Err(e) => {
            tracing::warn!(error = %e, "reconciler cannot read the queue; skipping queued jobs this pass");
            i64::MAX
        }
    };
    let missing = (queued - i64::try_from(expired.len()).unwrap_or(0) - held).clamp(0, BATCH);
    let stale: Vec<(uuid::Uuid, String)> = if missing == 0 {
        Vec::new()
    } else {
        sqlx::query_as(
            "UPDATE jobs SET updated_at = now() \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' \
                          AND updated_at < now() - make_interval(secs => $1) \
                          ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING id, correlation_id",
        )
        .bind(settings.queued_after.as_secs_f64())
        .bind(missing)
        .fetch_all(&mut *tx)
        .await?
    };
    tx.commit().await?;
    for (id,) in &past_deadline {
        let event = JobEvent {
            job_id: JobId(*id),
            status: JobStatus::Canceled,
        };
        if let Err(e) = queue.publish_event(&event).await {
            tracing::warn!(error = %e, "could not publish a deadline cancel");
        }
    }
    for (id, correlation_id) in expired.iter().chain(stale.iter()) {
        let message = JobMessage {
            job_id: imagegen_shared::domain::JobId(*id),
            correlation_id: correlation_id.clone(),
        };
        if let Err(e) = queue.push(message).await {
            // The row stays queued; the next pass tries again.
            tracing::warn!(error = %e, job_id = %id, "reconciler could not re-queue a job");
        }
    }
    if !failed.is_empty() {
        metrics::counter!("imagegen_reconciler_jobs_total", "action" => "failed_lease_expired")
            .increment(failed.len() as u64);
    }
    if !expired.is_empty() {
        metrics::counter!("imagegen_reconciler_jobs_total", "action" => "requeued_lease_expired")
            .increment(expired.len() as u64);
    }
    if !stale.is_empty() {
        metrics::counter!("imagegen_reconciler_jobs_total", "action" => "requeued_stale")
            .increment(stale.len() as u64);
    }
    Ok(Some((stale.len(), expired.len(), failed.len())))
}

/// Deletes objects whose writer died before recording them (see `db::pending`). Returns how many.
pub async fn sweep_orphans(pool: &PgPool, storage: &ImageStorage) -> Result<usize, db::DbError> {
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

pub async fn run(
    pool: PgPool,
    queue: JobQueue,
    storage: ImageStorage,
    settings: ReconcilerSettings,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
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
    }
}
