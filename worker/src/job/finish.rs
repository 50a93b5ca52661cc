//! The last step of a job on this worker, each a conditional write in `db::jobs` so a job delivered twice is finished
//! once: record success (with its images) or the failure, hand the job back to the queue (`defer` while its route is
//! busy, `release` at the end of the shutdown grace period), and tell waiters it finished (`publish_finished`).

use super::context::JobContext;
use super::outcome::{Outcome, ProcessError};
use crate::store::remove_objects;
use imagegen_shared::db::{self, DbError, JobFailure, JobRecord, NewImage, Served, Succeeded};
use imagegen_shared::domain::{AttemptRecord, JobStatus};
use imagegen_shared::queue::JobMessage;
use imagegen_shared::queue::signals::{Answer, JobEvent, Progress};
use std::time::{Duration, Instant};

/// Writes the final state; Postgres errors here are retried, since the provider call (which costs money) already
/// succeeded and a lost write would mean paying for it again.
#[tracing::instrument(skip_all, err)]
pub async fn finish_succeeded(
    ctx: &JobContext,
    job: &JobRecord,
    images: Vec<NewImage>,
    meta: &serde_json::Value,
    elapsed_ms: i64,
    served: &Served,
) -> Result<Outcome, ProcessError> {
    let mut last_error = None;
    // Keep trying for as long as nobody else can have taken the job over (twice the lease: while Postgres is down the
    // reconciler cannot requeue it either), so a Postgres blip does not mean paying the provider twice.
    let give_up = Instant::now() + ctx.lease * 2;
    let mut pause = Duration::ZERO;
    while Instant::now() < give_up {
        // No sleep before the first try: even a zero sleep waits for the timer wheel's next millisecond.
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        pause = (pause * 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
        let written = match &ctx.gathered {
            Some(gathered) => {
                gathered
                    .successes
                    .complete(&ctx.pool, job.id, &images, meta, elapsed_ms, served)
                    .await
            }
            None => {
                db::jobs::complete_succeeded(
                    &ctx.pool,
                    job.id,
                    &ctx.worker_id,
                    &images,
                    meta,
                    elapsed_ms,
                    served,
                )
                .await
            }
        };
        match written {
            Ok(Some(succeeded)) => {
                tracing::info!(images = images.len(), generation_time_ms = elapsed_ms, served_by = %served.route, "job succeeded");
                return Ok(Outcome::Succeeded(Box::new(succeeded)));
            }
            Ok(None) => {
                tracing::warn!(
                    "job was taken over before it could be completed; discarding this result"
                );
                remove_objects(ctx.store(), &images).await;
                return Ok(Outcome::NotOurs);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record success; retrying");
                last_error = Some(e);
            }
        }
    }
    remove_objects(ctx.store(), &images).await;
    Err(ProcessError::Db(last_error.unwrap_or_else(|| {
        DbError::Corrupt("no attempt made".into())
    })))
}

/// Ends the job failed or moderated, its history kept.
#[tracing::instrument(skip_all, err)]
pub async fn finish_unsuccessful(
    ctx: &JobContext,
    job: &JobRecord,
    failure: &JobFailure,
    history: &[AttemptRecord],
) -> Result<Outcome, ProcessError> {
    let done = db::jobs::complete_unsuccessful(&ctx.pool, job.id, &ctx.worker_id, failure, history)
        .await?;
    Ok(ended_without_images(done))
}

/// Ends a job claimed after its deadline: canceled, no provider called.
#[tracing::instrument(skip_all, err)]
pub async fn finish_past_deadline(
    ctx: &JobContext,
    job: &JobRecord,
) -> Result<Outcome, ProcessError> {
    let done = db::jobs::cancel_claimed_past_deadline(&ctx.pool, job.id, &ctx.worker_id).await?;
    Ok(ended_without_images(done))
}

/// The outcome of a write that ended the job without images: `None` means it was no longer this worker's.
fn ended_without_images(done: Option<JobRecord>) -> Outcome {
    match done {
        Some(job) => {
            let code = job.error_code.as_ref().map(|c| c.as_str());
            tracing::info!(status = %job.status, code, "job ended without images");
            Outcome::Finished(job.status)
        }
        None => Outcome::NotOurs,
    }
}

/// Gives the job back to the queue, due again after `delay`, without holding this worker's slot meanwhile.
#[tracing::instrument(skip_all, err)]
pub async fn defer(
    ctx: &JobContext,
    job: &JobRecord,
    message: &JobMessage,
    delay: Duration,
) -> Result<Outcome, ProcessError> {
    if !db::jobs::release_job(&ctx.pool, job.id, &ctx.worker_id).await? {
        return Ok(Outcome::NotOurs);
    }
    if let Err(e) = ctx.queue.push_delayed(message.clone(), delay).await {
        // The row is queued in Postgres; the reconciler re-enqueues queued jobs nobody picked up.
        tracing::error!(error = %e, "could not re-queue a deferred job");
    }
    metrics::counter!("imagegen_jobs_deferred_total").increment(1);
    let requeued = Progress::Requeued {
        reason: "the provider is busy or paused".into(),
        retry_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
    };
    ctx.progress(job, requeued).await;
    tracing::debug!(
        delay_ms = delay.as_millis() as u64,
        "route busy or paused; job deferred"
    );
    Ok(Outcome::Deferred)
}

/// At the end of the shutdown grace period: the job goes back to `queued` with a fresh message, so another worker
/// takes it now rather than after this one's heartbeats are missed. Always `Err(Released)` (or a database error):
/// the consumer must not acknowledge the message as handled.
#[tracing::instrument(skip_all)]
pub async fn release(ctx: &JobContext, job: &JobRecord) -> Result<Outcome, ProcessError> {
    if db::jobs::release_job(&ctx.pool, job.id, &ctx.worker_id).await? {
        let message = JobMessage {
            job_id: job.id,
            correlation_id: job.correlation_id.to_string(),
        };
        if let Err(e) = ctx.queue.push(message).await {
            tracing::warn!(error = %e, "could not re-queue the released job; the reconciler will");
        }
    }
    tracing::info!("shutdown grace period over; job handed back to the queue");
    Err(ProcessError::Released(job.id))
}

/// Tells waiters (wait mode, batch streams) that the job finished (they re-read Postgres anyway if this is lost),
/// and settles its budget reservation to its cost (the reconciler settles any this misses). A success settled the
/// budget in its own write and sends its waiters the job as it wrote it, so they need not read it back.
#[tracing::instrument(skip_all)]
pub async fn publish_finished(ctx: &JobContext, job: &JobRecord, outcome: Outcome) {
    let id = job.id;
    let (status, answer, settlement) = match outcome {
        Outcome::Succeeded(succeeded) => {
            let Succeeded { parts, settlement } = *succeeded;
            (JobStatus::Succeeded, Some(parts), Some(settlement))
        }
        Outcome::Finished(status) => (status, None, None),
        Outcome::NotOurs | Outcome::Deferred => return,
    };
    // Counted by the component that ended the job, here this worker (the API does not count job events).
    metrics::counter!("imagegen_jobs_finished_total", "status" => status.as_str()).increment(1);
    // Settled before the event goes out, so a client that hears of the end finds its budget's counters moved.
    let settled = match settlement {
        Some(Some(settlement)) => ctx.budgets.settle(&settlement).await,
        Some(None) => Ok(()),
        None => {
            imagegen_shared::budget::settle_job(
                &ctx.pool,
                &ctx.budgets,
                id,
                ctx.gathered.as_ref().map(|g| &g.settles),
            )
            .await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, "could not settle the job's budget; the reconciler will");
    }
    let mut event = JobEvent::status(id, job.batch_id, status);
    event.answer = answer.map(Answer::new);
    if let Err(e) = ctx.queue.publish_event(&event).await {
        // Waiters re-read Postgres when their wait ends or their subscription reconnects.
        tracing::warn!(error = %e, "could not publish job event");
    }
}
