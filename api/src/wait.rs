//! Holding a request until its jobs end: register with the waiters, read Postgres, and read again only when an
//! event (or a resubscription) says something changed, or when the wait is over. A success's event carries the job
//! as the worker wrote it, and a waiter on that job answers with it instead of reading it back.

use crate::error::ApiError;
use crate::state::AppState;
use crate::waiters::WaitGuard;
use imagegen_shared::db::{self, JobParts, JobRecord};
use imagegen_shared::domain::{BatchId, JobId};
use std::time::Duration;
use tokio::time::Instant;

/// The job with its images and charges once it is terminal, or as it stands when `wait` runs out (or the server is
/// stopping). `watch`: one registered before the job was queued (`submit::Submitted`), which has seen every event
/// since, so the job is known to be queued and the first read is skipped.
#[tracing::instrument(level = "debug", skip_all, fields(job_id = %id, wait_ms = wait.as_millis()))]
pub async fn wait_for_job(
    state: &AppState,
    owner: &str,
    id: JobId,
    wait: Duration,
    watch: Option<WaitGuard>,
) -> Result<Option<JobParts>, ApiError> {
    let deadline = Instant::now() + wait;
    // Registered before the first read, so an event that lands during the read is not lost.
    let (guard, mut read_now) = match watch {
        Some(watch) => (watch, false),
        None => (state.waiters.register(&[id]), true),
    };
    // Gated and boxed: when many jobs end together, their waiters queue for the gate as small futures, and a read's
    // state (about 8 KiB) lives only while it runs, not while it queues for a connection or for the whole wait.
    let read = || async {
        let _turn = state.answer_reads.turn().await?;
        Ok::<_, ApiError>(Box::pin(db::job_parts::get_job_parts(&state.pool, owner, id)).await?)
    };
    loop {
        if read_now {
            metrics::counter!("imagegen_wait_reads_total", "from" => "database").increment(1);
            let job = read().await?;
            match &job {
                Some(j) if !j.job.status.is_terminal() && Instant::now() < deadline => {}
                Some(j) if !j.job.status.is_terminal() => return durable(state, job).await,
                _ => return Ok(job),
            }
        }
        read_now = true;
        tokio::select! {
            _ = guard.waiter.notify.notified() => {
                // A success's event brings the job as the worker wrote it: nothing to read back.
                if let Some(job) = guard.waiter.answer(owner, id) {
                    metrics::counter!("imagegen_wait_reads_total", "from" => "event").increment(1);
                    return Ok(Some(job));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.stopping.cancelled() => return durable(state, read().await?).await,
        }
    }
}

/// A wait that ends before its job does names a job the client may only now hear of, possibly recorded without a
/// flush (`submit::Heard::WithOutcome`): on disk before the answer. A job that ended was flushed by its outcome.
async fn durable(state: &AppState, job: Option<JobParts>) -> Result<Option<JobParts>, ApiError> {
    if let Some(j) = job.as_ref().filter(|j| !j.job.status.is_terminal()) {
        db::jobs::make_durable(&state.pool, j.job.id).await?;
    }
    Ok(job)
}

/// Every job of a batch, once all are terminal or the wait runs out.
#[tracing::instrument(level = "debug", skip_all, fields(batch_id = %batch, wait_ms = wait.as_millis()))]
pub async fn wait_for_batch(
    state: &AppState,
    owner: &str,
    batch: BatchId,
    jobs: &[JobId],
    wait: Duration,
) -> Result<Vec<JobRecord>, ApiError> {
    let deadline = Instant::now() + wait;
    let guard = state.waiters.register(jobs);
    loop {
        let records = {
            let _turn = state.answer_reads.turn().await?;
            Box::pin(db::jobs::jobs_in_batch(&state.pool, owner, batch)).await?
        };
        if records.iter().all(|j| j.status.is_terminal()) || Instant::now() >= deadline {
            return Ok(records);
        }
        tokio::select! {
            _ = guard.waiter.notify.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.stopping.cancelled() => return Ok(records),
        }
    }
}
