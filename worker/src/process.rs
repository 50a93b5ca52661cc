//! One job, start to finish: claim it in Postgres with a lease, call the provider (retrying what is worth retrying,
//! every attempt counted in Postgres), copy the pictures into our storage, and only then mark the job succeeded,
//! conditionally, so a job delivered twice is completed once. Then publish the event that wakes waiters.

use crate::download::{DownloadError, Downloader};
use crate::providers::{GeneratedImage, ImageSource, ProviderError, ProviderOutput, Providers};
use crate::retry::Backoff;
use base64::Engine;
use bytes::Bytes;
use chrono::Utc;
use imagegen_shared::db::{self, DbError, JobFailure, JobRecord, NewImage};
use imagegen_shared::domain::{ImageId, JobId, JobStatus, Moderation, ModerationSource};
use imagegen_shared::events::{self, JobEvent};
use imagegen_shared::queue::JobMessage;
use imagegen_shared::storage::{ImageMetadata, ImageStorage, StorageError, sniff_image};
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Everything a job needs, shared by all jobs of one worker process.
pub struct JobContext {
    pub pool: PgPool,
    pub storage: ImageStorage,
    pub providers: Providers,
    pub downloader: Downloader,
    pub redis: ConnectionManager,
    pub queue_name: String,
    pub worker_id: String,
    pub lease: Duration,
    pub backoff: Backoff,
    /// Cancelled when the shutdown grace period is over: jobs still running give themselves back to the queue.
    pub abandon: CancellationToken,
}

/// How handling one queue message ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This worker took the job to a terminal state.
    Finished(JobStatus),
    /// Nothing to do: the job is already finished, gone, or was taken over by another worker.
    NotOurs,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Postgres trouble: the message should come back later.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Another worker holds a live lease; look again once it could have expired.
    #[error("job {0} is held by another worker")]
    Busy(JobId),
    /// The worker is shutting down and gave the job back to the queue.
    #[error("job {0} released at shutdown")]
    Released(JobId),
}

/// Why one attempt did not produce stored images.
enum AttemptError {
    Provider(ProviderError),
    Download(DownloadError),
    Storage(StorageError),
    BadImage(String),
}

impl AttemptError {
    fn retryable(&self) -> bool {
        match self {
            AttemptError::Provider(e) => matches!(e, ProviderError::Retryable { .. }),
            AttemptError::Download(e) => e.is_retryable(),
            AttemptError::Storage(_) => true,
            AttemptError::BadImage(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Provider(ProviderError::Retryable { retry_after, .. }) => *retry_after,
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            AttemptError::Provider(e) => e.to_string(),
            AttemptError::Download(e) => e.to_string(),
            AttemptError::Storage(e) => e.to_string(),
            AttemptError::BadImage(m) => m.clone(),
        }
    }

    fn failure(&self, exhausted: bool) -> JobFailure {
        let (status, code, message, moderation) = match self {
            AttemptError::Provider(ProviderError::ContentPolicy {
                stage,
                message,
                categories,
            }) => (
                JobStatus::Moderated,
                "content_policy_violation",
                message.clone(),
                Some(Moderation {
                    stage: *stage,
                    source: ModerationSource::Provider,
                    categories: categories.clone(),
                }),
            ),
            AttemptError::Storage(e) => (
                JobStatus::Failed,
                "storage_error",
                format!("Could not store the image: {e}"),
                None,
            ),
            other if exhausted => (
                JobStatus::Failed,
                "provider_unavailable",
                format!(
                    "The provider kept failing; giving up after the last attempt: {}",
                    other.describe()
                ),
                None,
            ),
            other => (JobStatus::Failed, "provider_error", other.describe(), None),
        };
        JobFailure {
            status,
            code: code.to_owned(),
            message,
            moderation,
        }
    }
}

/// Keeps the lease alive while the job runs; cancels `lost` if another worker took the job over.
fn spawn_lease_keeper(
    ctx: Arc<JobContext>,
    id: JobId,
    lost: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ctx.lease / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            match db::jobs::extend_lease(&ctx.pool, id, &ctx.worker_id, ctx.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("lease lost; another worker owns the job now");
                    lost.cancel();
                    return;
                }
                // A blip: the lease is several ticks long, so the next tick can still save it.
                Err(e) => tracing::warn!(error = %e, "could not extend lease"),
            }
        }
    })
}

pub async fn handle(ctx: Arc<JobContext>, message: JobMessage) -> Result<Outcome, ProcessError> {
    let span = tracing::info_span!("job", job_id = %message.job_id, correlation_id = %message.correlation_id,
        worker_id = %ctx.worker_id);
    run(ctx, message.job_id).instrument(span).await
}

async fn run(ctx: Arc<JobContext>, id: JobId) -> Result<Outcome, ProcessError> {
    let Some(job) = db::jobs::claim_job(&ctx.pool, id, &ctx.worker_id, ctx.lease).await? else {
        return match db::jobs::get_job_unscoped(&ctx.pool, id).await? {
            Some(job) if job.status == JobStatus::Running => Err(ProcessError::Busy(id)),
            Some(job) => {
                tracing::info!(status = %job.status, "job already settled; message dropped");
                Ok(Outcome::NotOurs)
            }
            None => {
                tracing::warn!("queued message for a job that does not exist");
                Ok(Outcome::NotOurs)
            }
        };
    };
    tracing::info!(provider = %job.provider, attempts = job.attempts, "job claimed");
    let lost = CancellationToken::new();
    let keeper = spawn_lease_keeper(ctx.clone(), id, lost.clone());
    let result = generate(&ctx, &job, &lost).await;
    keeper.abort();
    let outcome = result?;
    if let Outcome::Finished(status) = outcome {
        metrics::counter!("imagegen_jobs_finished_total", "status" => status.as_str(), "provider" => job.provider.clone())
            .increment(1);
        let event = JobEvent { job_id: id, status };
        if let Err(e) = events::publish(&ctx.redis, &ctx.queue_name, &event).await {
            // Waiters re-read Postgres when their wait ends or their subscription reconnects.
            tracing::warn!(error = %e, "could not publish job event");
        }
    }
    Ok(outcome)
}

async fn generate(
    ctx: &JobContext,
    job: &JobRecord,
    lost: &CancellationToken,
) -> Result<Outcome, ProcessError> {
    let request = &job.request.0;
    let started = Instant::now();
    let Some(provider) = ctx.providers.get(request.provider) else {
        let failure = JobFailure {
            status: JobStatus::Failed,
            code: "provider_not_configured".into(),
            message: format!("No worker is configured for provider {}", request.provider),
            moderation: None,
        };
        return finish_unsuccessful(ctx, job, &failure, &serde_json::json!({})).await;
    };
    let mut retries = Vec::new();
    loop {
        let Some(attempt) = db::jobs::record_attempt(&ctx.pool, job.id, &ctx.worker_id).await?
        else {
            return Ok(Outcome::NotOurs);
        };
        // A job may come back with its attempts already used up (its worker died mid-call).
        if attempt > job.max_attempts {
            let failure = JobFailure {
                status: JobStatus::Failed,
                code: "provider_unavailable".into(),
                message: format!("No attempts left ({} used)", job.max_attempts),
                moderation: None,
            };
            return finish_unsuccessful(
                ctx,
                job,
                &failure,
                &serde_json::json!({ "retries": retries }),
            )
            .await;
        }
        let call_started = Instant::now();
        let provider_label = request.provider.as_str();
        let result = tokio::select! {
            r = provider.generate(request, &job.correlation_id) => r,
            _ = lost.cancelled() => return Ok(Outcome::NotOurs),
            _ = ctx.abandon.cancelled() => return release(ctx, job.id).await,
        };
        metrics::histogram!("imagegen_provider_call_seconds", "provider" => provider_label)
            .record(call_started.elapsed().as_secs_f64());
        let attempt_result = match result {
            Ok(output) => {
                metrics::counter!("imagegen_provider_calls_total", "provider" => provider_label, "outcome" => "ok")
                    .increment(1);
                store_all(ctx, job, &output)
                    .await
                    .map(|images| (images, output.meta))
            }
            Err(e) => {
                metrics::counter!("imagegen_provider_calls_total", "provider" => provider_label, "outcome" => e.kind())
                    .increment(1);
                Err(AttemptError::Provider(e))
            }
        };
        match attempt_result {
            Ok((images, mut meta)) => {
                if let Some(obj) = meta.as_object_mut() {
                    obj.insert("retries".into(), serde_json::json!(retries));
                    obj.insert("attempts".into(), serde_json::json!(attempt));
                }
                let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
                return finish_succeeded(ctx, job, images, &meta, elapsed).await;
            }
            Err(e) => {
                let retry = e.retryable() && attempt < job.max_attempts;
                tracing::warn!(attempt, max_attempts = job.max_attempts, retry, error = %e.describe(), "attempt failed");
                retries.push(serde_json::json!({
                    "attempt": attempt,
                    "error": e.describe(),
                    "status": if let AttemptError::Provider(p) = &e { p.status() } else { None },
                    "code": if let AttemptError::Provider(p) = &e { p.code().map(str::to_owned) } else { None },
                }));
                if !retry {
                    let failure = e.failure(e.retryable());
                    return finish_unsuccessful(
                        ctx,
                        job,
                        &failure,
                        &serde_json::json!({ "retries": retries }),
                    )
                    .await;
                }
                let delay = ctx
                    .backoff
                    .delay(u32::try_from(attempt).unwrap_or(1), e.retry_after());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = lost.cancelled() => return Ok(Outcome::NotOurs),
                    _ = ctx.abandon.cancelled() => return release(ctx, job.id).await,
                }
            }
        }
    }
}

async fn release(ctx: &JobContext, id: JobId) -> Result<Outcome, ProcessError> {
    db::jobs::release_job(&ctx.pool, id, &ctx.worker_id).await?;
    tracing::info!("shutdown grace period over; job released to the queue");
    Err(ProcessError::Released(id))
}

/// Copies every picture of one provider answer into storage; on any failure removes what it stored.
async fn store_all(
    ctx: &JobContext,
    job: &JobRecord,
    output: &ProviderOutput,
) -> Result<Vec<NewImage>, AttemptError> {
    let mut stored = Vec::with_capacity(output.images.len());
    for (position, image) in (0i32..).zip(&output.images) {
        match store_one(ctx, job, position, image).await {
            Ok(img) => stored.push(img),
            Err(e) => {
                remove_objects(ctx, &stored).await;
                return Err(e);
            }
        }
    }
    Ok(stored)
}

async fn store_one(
    ctx: &JobContext,
    job: &JobRecord,
    position: i32,
    image: &GeneratedImage,
) -> Result<NewImage, AttemptError> {
    let bytes: Bytes = match &image.source {
        ImageSource::Base64(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map(Bytes::from)
            .map_err(|e| AttemptError::BadImage(format!("provider sent invalid base64: {e}")))?,
        ImageSource::Url(url) => ctx
            .downloader
            .fetch(url)
            .await
            .map_err(AttemptError::Download)?,
    };
    let (ext, content_type) = sniff_image(&bytes).ok_or_else(|| {
        AttemptError::BadImage("provider sent something that is not an image".into())
    })?;
    let dims = imagesize::blob_size(&bytes)
        .map_err(|e| AttemptError::BadImage(format!("unreadable image: {e}")))?;
    let (width, height) = (
        u32::try_from(dims.width).map_err(|_| AttemptError::BadImage("image too wide".into()))?,
        u32::try_from(dims.height).map_err(|_| AttemptError::BadImage("image too tall".into()))?,
    );
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let id = ImageId::new();
    let created_at = Utc::now();
    let key = ImageStorage::key_for(id, created_at, ext);
    let seed = image.seed.or(job.request.0.seed.map(i64::from));
    let size_bytes = bytes.len() as u64;
    let metadata = ImageMetadata {
        image_id: id,
        job_id: job.id,
        owner: job.owner.clone(),
        prompt: job.request.0.prompt.as_str().to_owned(),
        revised_prompt: image.revised_prompt.clone(),
        provider: job.provider.clone(),
        width,
        height,
        seed,
        sha256: sha256.clone(),
        content_type: content_type.to_owned(),
        size_bytes,
        created_at,
    };
    ctx.storage
        .put_image(&key, bytes, &metadata)
        .await
        .map_err(AttemptError::Storage)?;
    Ok(NewImage {
        id,
        position,
        storage_key: key,
        content_type: content_type.to_owned(),
        size_bytes: i64::try_from(size_bytes).unwrap_or(i64::MAX),
        sha256,
        width: i32::try_from(width).unwrap_or(i32::MAX),
        height: i32::try_from(height).unwrap_or(i32::MAX),
        revised_prompt: image.revised_prompt.clone(),
        seed,
    })
}

async fn remove_objects(ctx: &JobContext, images: &[NewImage]) {
    for image in images {
        if let Err(e) = ctx.storage.delete_image(&image.storage_key).await {
            tracing::error!(key = %image.storage_key, error = %e, "could not remove a stored object; it is orphaned");
        }
    }
}

/// Writes the final state; Postgres errors here are retried a few times, since the provider call (which costs
/// money) already succeeded and a lost write would mean paying for it again.
async fn finish_succeeded(
    ctx: &JobContext,
    job: &JobRecord,
    images: Vec<NewImage>,
    meta: &serde_json::Value,
    elapsed_ms: i64,
) -> Result<Outcome, ProcessError> {
    let mut last_error = None;
    for pause in [0u64, 200, 1000, 3000] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        match db::jobs::complete_succeeded(
            &ctx.pool,
            job.id,
            &ctx.worker_id,
            &images,
            meta,
            elapsed_ms,
        )
        .await
        {
            Ok(Some(_)) => {
                tracing::info!(
                    images = images.len(),
                    generation_time_ms = elapsed_ms,
                    "job succeeded"
                );
                return Ok(Outcome::Finished(JobStatus::Succeeded));
            }
            Ok(None) => {
                tracing::warn!(
                    "job was taken over before it could be completed; discarding this result"
                );
                remove_objects(ctx, &images).await;
                return Ok(Outcome::NotOurs);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record success; retrying");
                last_error = Some(e);
            }
        }
    }
    remove_objects(ctx, &images).await;
    Err(ProcessError::Db(last_error.unwrap_or_else(|| {
        DbError::Corrupt("no attempt made".into())
    })))
}

async fn finish_unsuccessful(
    ctx: &JobContext,
    job: &JobRecord,
    failure: &JobFailure,
    meta: &serde_json::Value,
) -> Result<Outcome, ProcessError> {
    match db::jobs::complete_unsuccessful(&ctx.pool, job.id, &ctx.worker_id, failure, meta).await? {
        Some(_) => {
            tracing::info!(status = %failure.status, code = %failure.code, "job ended without images");
            Ok(Outcome::Finished(failure.status))
        }
        None => Ok(Outcome::NotOurs),
    }
}
