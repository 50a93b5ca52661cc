//! Accepting work: moderate, record in Postgres, then queue. A job that cannot be queued is removed again and the
//! client gets 503, so nothing is left half-accepted.

use crate::error::ApiError;
use crate::state::AppState;
use imagegen_shared::db::{self, BatchRecord, JobRecord, NewJob};
use imagegen_shared::domain::{
    BatchId, GenerationRequest, JobId, JobStatus, Moderation, ModerationSource, ModerationStage,
};
use imagegen_shared::queue::JobMessage;

const BLOCKED_MESSAGE: &str = "The prompt was blocked by content moderation";

fn new_job(
    state: &AppState,
    owner: &str,
    correlation_id: &str,
    request: GenerationRequest,
) -> NewJob {
    let blocked = state
        .keyword_filter
        .as_ref()
        .and_then(|f| f.check(request.prompt.as_str()));
    if let Some(hit) = &blocked {
        // The term goes to the log for operators, never to the client.
        tracing::info!(term = %hit.term, "prompt blocked by keyword moderation");
        metrics::counter!("imagegen_jobs_finished_total", "status" => "moderated").increment(1);
    }
    NewJob {
        id: JobId::new(),
        owner: owner.to_owned(),
        correlation_id: correlation_id.to_owned(),
        max_attempts: i32::try_from(state.providers.max_attempts).unwrap_or(i32::MAX),
        status: if blocked.is_some() {
            JobStatus::Moderated
        } else {
            JobStatus::Queued
        },
        moderation: blocked.as_ref().map(|_| Moderation {
            stage: ModerationStage::Input,
            source: ModerationSource::Keyword,
            categories: None,
        }),
        error: blocked.map(|_| ("content_blocked".to_owned(), BLOCKED_MESSAGE.to_owned())),
        deadline_secs: request.deadline_secs,
        request,
    }
}

fn message(job: &JobRecord) -> JobMessage {
    JobMessage {
        job_id: job.id,
        correlation_id: job.correlation_id.clone(),
    }
}

pub async fn submit_job(
    state: &AppState,
    owner: &str,
    correlation_id: &str,
    request: GenerationRequest,
) -> Result<JobRecord, ApiError> {
    let provider = request.provider;
    let job = new_job(state, owner, correlation_id, request);
    let record = db::jobs::insert(&state.pool, &job).await?;
    if record.status == JobStatus::Moderated {
        return Err(ApiError::ContentBlocked { job_id: record.id });
    }
    if let Err(e) = state.queue.push(message(&record)).await {
        if let Err(undo) = db::jobs::delete_unstarted(&state.pool, record.id).await {
            tracing::error!(job_id = %record.id, error = %undo, "could not undo a job that was never queued");
        }
        return Err(e.into());
    }
    metrics::counter!("imagegen_jobs_submitted_total", "provider" => provider.as_str())
        .increment(1);
    tracing::info!(job_id = %record.id, provider = %provider, "job queued");
    Ok(record)
}

/// Records the whole batch in one transaction, then queues its unblocked items.
pub async fn submit_batch(
    state: &AppState,
    owner: &str,
    correlation_id: &str,
    requests: Vec<GenerationRequest>,
) -> Result<(BatchRecord, Vec<JobRecord>), ApiError> {
    let jobs: Vec<NewJob> = requests
        .into_iter()
        .map(|r| new_job(state, owner, correlation_id, r))
        .collect();
    let batch_id = BatchId::new();
    let (batch, records) =
        db::batches::insert_batch(&state.pool, batch_id, owner, correlation_id, &jobs).await?;
    for record in records.iter().filter(|r| r.status == JobStatus::Queued) {
        if let Err(e) = state.queue.push(message(record)).await {
            if let Err(undo) = db::batches::delete_batch(&state.pool, batch_id).await {
                tracing::error!(%batch_id, error = %undo, "could not undo a batch that was not fully queued");
            }
            return Err(e.into());
        }
        metrics::counter!("imagegen_jobs_submitted_total", "provider" => record.provider.clone())
            .increment(1);
    }
    tracing::info!(%batch_id, items = records.len(), "batch queued");
    Ok((batch, records))
}
