//! One job, start to finish: claim it in Postgres with a lease; walk its routes (its provider first, then failover
//! targets) asking the fleet-wide limits for admission; call, retrying what is worth retrying (every attempt counted
//! in Postgres, per route); copy the pictures into our storage; only then mark the job succeeded, conditionally, so
//! a job delivered twice is completed once; publish the event that wakes waiters.
//!
//! A job whose route is saturated or paused does not hold a worker slot: it goes back to the queue with a delay.

use crate::download::Downloader;
use crate::providers::ProviderError;
use crate::retry::Backoff;
use crate::routing::{Route, Routes};
use crate::store::{StoreError, remove_objects, store_all};
use imagegen_shared::db::{self, Db, DbError, JobFailure, JobRecord, NewImage, Served};
use imagegen_shared::domain::{
    FailureCode, JobId, JobStatus, Moderation, ModerationSource, ProviderId,
};
use imagegen_shared::events::JobEvent;
use imagegen_shared::limits::{Admission, FleetLimits, LimitSettings};
use imagegen_shared::queue::{JobMessage, JobQueue};
use imagegen_shared::storage::ImageStorage;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Everything a job needs, shared by all jobs of one worker process.
pub struct JobContext {
    pub pool: Db,
    pub storage: ImageStorage,
    pub routes: Routes,
    pub downloader: Downloader,
    pub queue: JobQueue,
    pub limits: FleetLimits,
    pub limit_settings: HashMap<ProviderId, LimitSettings>,
    pub worker_id: String,
    pub lease: Duration,
    pub backoff: Backoff,
    /// Cancelled when the shutdown grace period is over: jobs still running give themselves back to the queue.
    pub abandon: CancellationToken,
    /// The jobs this process is running, each with the token that stops it (a client's cancel, a lost lease).
    pub in_progress: std::sync::Mutex<HashMap<JobId, CancellationToken>>,
}

impl JobContext {
    /// A client canceled the job: if it runs here, stop it now (the provider call is dropped, nothing is kept).
    pub fn stop_if_running(&self, id: JobId) {
        let running = self.in_progress.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(token) = running.get(&id) {
            tracing::info!(job_id = %id, "job canceled by its client; stopping");
            token.cancel();
        }
    }
}

/// Removes a job from `in_progress` however its run ends.
struct InProgress<'a> {
    ctx: &'a JobContext,
    id: JobId,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.ctx
            .in_progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// How handling one queue message ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This worker took the job to a terminal state.
    Finished(JobStatus),
    /// Nothing to do: the job is already finished, gone, or was taken over by another worker.
    NotOurs,
    /// Its route was saturated or paused: the job went back to the queue, due again after a delay.
    Deferred,
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
    Store(StoreError),
}

impl AttemptError {
    fn retryable(&self) -> bool {
        match self {
            AttemptError::Provider(e) => matches!(e, ProviderError::Retryable { .. }),
            AttemptError::Store(e) => e.retryable(),
        }
    }

    /// A provider's own verdict on our configuration (credentials, credits, deployment): another route may work.
    fn route_broken(&self) -> bool {
        matches!(
            self,
            AttemptError::Provider(ProviderError::Final {
                status: Some(401..=404),
                ..
            })
        )
    }

    fn describe(&self) -> String {
        match self {
            AttemptError::Provider(e) => e.to_string(),
            AttemptError::Store(e) => e.to_string(),
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
                FailureCode::ContentPolicyViolation,
                message.clone(),
                Some(Moderation {
                    stage: *stage,
                    source: ModerationSource::Provider,
                    categories: categories.clone(),
                }),
            ),
            AttemptError::Store(StoreError::Storage(e)) => (
                JobStatus::Failed,
                FailureCode::StorageError,
                format!("Could not store the image: {e}"),
                None,
            ),
            other if exhausted => (
                JobStatus::Failed,
                FailureCode::ProviderError,
                format!(
                    "The provider kept failing; giving up after the last attempt: {}",
                    other.describe()
                ),
                None,
            ),
            other => (
                JobStatus::Failed,
                FailureCode::ProviderError,
                other.describe(),
                None,
            ),
        };
        JobFailure {
            status,
            code,
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
    run(ctx, message).instrument(span).await
}

async fn run(ctx: Arc<JobContext>, message: JobMessage) -> Result<Outcome, ProcessError> {
    let id = message.job_id;
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
    // Not started by its deadline: it ends canceled without any provider call.
    if job.attempts == 0 && job.deadline_at.is_some_and(|d| d <= chrono::Utc::now()) {
        let failure = JobFailure {
            status: JobStatus::Canceled,
            code: FailureCode::DeadlineExceeded,
            message: db::jobs::DEADLINE_MESSAGE.into(),
            moderation: None,
        };
        let outcome = finish_unsuccessful(&ctx, &job, &failure, &serde_json::json!({})).await?;
        publish_finished(&ctx, id, &outcome).await;
        return Ok(outcome);
    }
    let lost = CancellationToken::new();
    ctx.in_progress
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, lost.clone());
    let _registered = InProgress { ctx: &ctx, id };
    let keeper = spawn_lease_keeper(ctx.clone(), id, lost.clone());
    let result = generate(&ctx, &job, &message, &lost).await;
    keeper.abort();
    let outcome = result?;
    publish_finished(&ctx, id, &outcome).await;
    Ok(outcome)
}

async fn publish_finished(ctx: &JobContext, id: JobId, outcome: &Outcome) {
    if let Outcome::Finished(status) = *outcome {
        metrics::counter!("imagegen_jobs_finished_total", "status" => status.as_str()).increment(1);
        let event = JobEvent { job_id: id, status };
        if let Err(e) = ctx.queue.publish_event(&event).await {
            // Waiters re-read Postgres when their wait ends or their subscription reconnects.
            tracing::warn!(error = %e, "could not publish job event");
        }
    }
}

/// What happened on one route.
enum RouteResult {
    /// The job reached an outcome; stop.
    Done(Outcome),
    /// Try the next route (attempts used up, circuit open, or the route is misconfigured).
    Next(Option<AttemptError>),
}

async fn generate(
    ctx: &JobContext,
    job: &JobRecord,
    message: &JobMessage,
    lost: &CancellationToken,
) -> Result<Outcome, ProcessError> {
    let request = &job.request.0;
    let started = Instant::now();
    let (chain, skipped) = ctx.routes.chain(request, imagegen_shared::domain::today());
    let mut history: Vec<serde_json::Value> = skipped
        .iter()
        .map(|s| serde_json::json!({"route": s.key, "skipped": s.why}))
        .collect();
    if chain.is_empty() {
        let failure = JobFailure {
            status: JobStatus::Failed,
            code: FailureCode::ProviderNotConfigured,
            message: format!("No worker is configured for model {}", request.model),
            moderation: None,
        };
        let meta = serde_json::json!({ "retries": history });
        return finish_unsuccessful(ctx, job, &failure, &meta).await;
    }
    let mut last: Option<AttemptError> = None;
    for route in &chain {
        match try_route(ctx, job, message, route, lost, started, &mut history).await? {
            RouteResult::Done(outcome) => return Ok(outcome),
            RouteResult::Next(err) => {
                if err.is_some() {
                    last = err;
                }
            }
        }
    }
    let meta = serde_json::json!({ "retries": history });
    let failure = match &last {
        Some(e) => e.failure(e.retryable()),
        None => JobFailure {
            status: JobStatus::Failed,
            code: FailureCode::ProviderError,
            message: "Every provider that could serve this job is unavailable (circuit open)"
                .into(),
            moderation: None,
        },
    };
    finish_unsuccessful(ctx, job, &failure, &meta).await
}

async fn try_route(
    ctx: &JobContext,
    job: &JobRecord,
    message: &JobMessage,
    route: &Route,
    lost: &CancellationToken,
    started: Instant,
    history: &mut Vec<serde_json::Value>,
) -> Result<RouteResult, ProcessError> {
    let request = &route.request;
    let settings = ctx
        .limit_settings
        .get(&route.provider())
        .cloned()
        .unwrap_or_else(default_limits);
    let key = route.key.as_str();
    // Fleet limits, 429 pauses and circuit breakers are the provider account's; attempts are per route.
    let limit_key = route.provider().as_str();
    let mut used = job.provider_attempts.0.get(key).copied().unwrap_or(0);
    let mut saturated_since: Option<Instant> = None;
    loop {
        if used >= job.max_attempts {
            return Ok(RouteResult::Next(None));
        }
        let permit = uuid::Uuid::new_v4().to_string();
        let admission = match ctx.limits.admit(limit_key, &permit, &settings).await {
            Ok(a) => a,
            // Without Redis there are no fleet limits to consult (and no queue either); go on rather than stall.
            Err(e) => {
                tracing::warn!(error = %e, route = key, "fleet limits unavailable; calling without a permit");
                Admission::Granted
            }
        };
        match admission {
            Admission::Open => {
                tracing::info!(route = key, "circuit open; trying the next route");
                history.push(serde_json::json!({"route": key, "skipped": "circuit open"}));
                return Ok(RouteResult::Next(None));
            }
            Admission::Saturated => {
                // A permit usually frees up within one provider call: wait for it here a little (the job keeps
                // its slot) before handing the job back to the queue, whose redelivery costs far more.
                let since = *saturated_since.get_or_insert_with(Instant::now);
                if since.elapsed() < SATURATED_WAIT {
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(SATURATED_POLL)) => continue,
                        _ = lost.cancelled() => return Ok(RouteResult::Done(Outcome::NotOurs)),
                    }
                }
                return defer(ctx, job, message, jitter(Duration::from_millis(250))).await;
            }
            Admission::Paused(wait) => {
                return defer(ctx, job, message, wait + jitter(Duration::from_millis(100))).await;
            }
            Admission::Granted | Admission::Probe => {}
        }
        let attempt = db::jobs::record_attempt(&ctx.pool, job.id, &ctx.worker_id, key).await;
        let attempt = match attempt {
            Ok(Some(a)) => a,
            Ok(None) => {
                let _ = ctx.limits.release(limit_key, &permit).await;
                return Ok(RouteResult::Done(Outcome::NotOurs));
            }
            Err(e) => {
                let _ = ctx.limits.release(limit_key, &permit).await;
                return Err(e.into());
            }
        };
        used = attempt.on_route;
        let result = call_with_permit(ctx, route, job, &permit, &settings, lost).await;
        let _ = ctx.limits.release(limit_key, &permit).await;
        let output = match result {
            CallResult::Lost => return Ok(RouteResult::Done(Outcome::NotOurs)),
            CallResult::Abandoned => return release(ctx, job).await.map(RouteResult::Done),
            CallResult::Done(r) => r,
        };
        let attempt_result = match output {
            Ok(output) => {
                let _ = ctx.limits.record_success(limit_key).await;
                let usage = output.usage.clone();
                store_all(ctx, job, request, key, &output)
                    .await
                    .map(|images| (images, output.meta, usage))
                    .map_err(AttemptError::Store)
            }
            Err(e) => {
                if matches!(e, ProviderError::Retryable { .. }) {
                    match ctx.limits.record_failure(limit_key, &settings).await {
                        Ok(true) => {
                            tracing::warn!(route = key, "circuit opened after repeated failures")
                        }
                        Ok(false) => {}
                        Err(err) => {
                            tracing::warn!(error = %err, "could not record a breaker failure")
                        }
                    }
                }
                Err(AttemptError::Provider(e))
            }
        };
        match attempt_result {
            Ok((images, mut meta, usage)) => {
                // What was made is recorded as it is; a size other than the one asked for is said, not hidden
                // (`auto` and aspect-ratio models choose their own pixels).
                let asked = request.size.exact().filter(|_| {
                    route.model.serves.get(&route.provider()).is_none_or(|s| {
                        s.size_param == imagegen_shared::catalogue::SizeParam::WidthHeight
                    })
                });
                let mismatched: Vec<String> = images
                    .iter()
                    .filter(|i| {
                        asked.is_some_and(|a| {
                            (i.width, i.height) != (a.width as i32, a.height as i32)
                        })
                    })
                    .map(|i| {
                        format!(
                            "image {} is {}x{}, asked {}",
                            i.position, i.width, i.height, request.size
                        )
                    })
                    .collect();
                if let (Some(obj), false) = (meta.as_object_mut(), mismatched.is_empty()) {
                    obj.insert("size_mismatch".into(), serde_json::json!(mismatched));
                }
                if let Some(obj) = meta.as_object_mut() {
                    obj.insert("retries".into(), serde_json::json!(history));
                    obj.insert("attempts".into(), serde_json::json!(attempt.total));
                    if let Some(usage) = usage {
                        obj.insert("usage".into(), usage);
                    }
                }
                let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
                let served = Served {
                    route: key.to_owned(),
                    translations: route.translations.clone(),
                };
                return finish_succeeded(ctx, job, images, &meta, elapsed, &served)
                    .await
                    .map(RouteResult::Done);
            }
            Err(e) => {
                tracing::warn!(route = key, attempt = used, max_attempts = job.max_attempts, error = %e.describe(),
                    "attempt failed");
                history.push(serde_json::json!({
                    "route": key,
                    "attempt": attempt.total,
                    "error": e.describe(),
                    "status": if let AttemptError::Provider(p) = &e { p.status() } else { None },
                    "code": if let AttemptError::Provider(p) = &e { p.code().map(str::to_owned) } else { None },
                }));
                if e.route_broken() {
                    return Ok(RouteResult::Next(Some(e)));
                }
                if !e.retryable() {
                    // Content policy and the provider's own validation errors are final: no retry, no failover.
                    let failure = e.failure(false);
                    let meta = serde_json::json!({ "retries": history });
                    return finish_unsuccessful(ctx, job, &failure, &meta)
                        .await
                        .map(RouteResult::Done);
                }
                if used >= job.max_attempts {
                    return Ok(RouteResult::Next(Some(e)));
                }
                // A provider that says when to come back pauses the whole fleet; this job waits off the worker.
                if let AttemptError::Provider(ProviderError::Retryable {
                    retry_after: Some(wait),
                    ..
                }) = &e
                    && *wait <= crate::retry::MAX_RETRY_AFTER
                {
                    if let Err(err) = ctx.limits.pause(limit_key, *wait).await {
                        tracing::warn!(error = %err, "could not pause the route for the fleet");
                    }
                    return defer(ctx, job, message, *wait).await;
                }
                let delay = ctx.backoff.delay(u32::try_from(used).unwrap_or(1), None);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = lost.cancelled() => return Ok(RouteResult::Done(Outcome::NotOurs)),
                    _ = ctx.abandon.cancelled() => return release(ctx, job).await.map(RouteResult::Done),
                }
            }
        }
    }
}

fn default_limits() -> LimitSettings {
    LimitSettings {
        concurrency: 0,
        breaker_failures: 5,
        breaker_cooldown: Duration::from_secs(30),
        permit_ttl: Duration::from_secs(30),
    }
}

/// How long a job waits in its worker for a fleet permit before it goes back to the queue, and how often it asks.
const SATURATED_WAIT: Duration = Duration::from_secs(1);
const SATURATED_POLL: Duration = Duration::from_millis(20);

fn jitter(around: Duration) -> Duration {
    let ms = u64::try_from(around.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(ms / 2 + rand::random_range(0..=ms))
}

enum CallResult {
    Done(Result<crate::providers::ProviderOutput, ProviderError>),
    Lost,
    Abandoned,
}

/// Calls the route while renewing its fleet permit, so a long call keeps its place and a dead worker's does not.
async fn call_with_permit(
    ctx: &JobContext,
    route: &Route,
    job: &JobRecord,
    permit: &str,
    settings: &LimitSettings,
    lost: &CancellationToken,
) -> CallResult {
    let started = Instant::now();
    let label = route.key.clone();
    let call = crate::providers::Call {
        model: &route.model,
        provider_model: &route.provider_model,
        request: &route.request,
        correlation_id: &job.correlation_id,
    };
    let call = route.client.generate(&call);
    tokio::pin!(call);
    let mut renew = tokio::time::interval(settings.permit_ttl / 3);
    renew.tick().await;
    let result = loop {
        tokio::select! {
            r = &mut call => break CallResult::Done(r),
            _ = renew.tick() => {
                if let Err(e) = ctx.limits.renew(route.provider().as_str(), permit, settings.permit_ttl).await {
                    tracing::warn!(error = %e, "could not renew the fleet permit");
                }
            }
            _ = lost.cancelled() => break CallResult::Lost,
            _ = ctx.abandon.cancelled() => break CallResult::Abandoned,
        }
    };
    metrics::histogram!("imagegen_provider_call_seconds", "route" => label.clone())
        .record(started.elapsed().as_secs_f64());
    if let CallResult::Done(r) = &result {
        let outcome = match r {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        metrics::counter!("imagegen_provider_calls_total", "route" => label, "outcome" => outcome)
            .increment(1);
    }
    result
}

/// Gives the job back to the queue, due again after `delay`, without holding this worker's slot meanwhile.
async fn defer(
    ctx: &JobContext,
    job: &JobRecord,
    message: &JobMessage,
    delay: Duration,
) -> Result<RouteResult, ProcessError> {
    if !db::jobs::release_job(&ctx.pool, job.id, &ctx.worker_id).await? {
        return Ok(RouteResult::Done(Outcome::NotOurs));
    }
    if let Err(e) = ctx.queue.push_delayed(message.clone(), delay).await {
        // The row is queued in Postgres; the reconciler re-enqueues queued jobs nobody picked up.
        tracing::error!(error = %e, "could not re-queue a deferred job");
    }
    metrics::counter!("imagegen_jobs_deferred_total").increment(1);
    tracing::debug!(
        delay_ms = delay.as_millis() as u64,
        "route busy or paused; job deferred"
    );
    Ok(RouteResult::Done(Outcome::Deferred))
}

/// At the end of the shutdown grace period: the job goes back to `queued` with a fresh message, so another worker
/// takes it now rather than after this one's heartbeats are missed.
async fn release(ctx: &JobContext, job: &JobRecord) -> Result<Outcome, ProcessError> {
    if db::jobs::release_job(&ctx.pool, job.id, &ctx.worker_id).await? {
        let message = JobMessage {
            job_id: job.id,
            correlation_id: job.correlation_id.clone(),
        };
        if let Err(e) = ctx.queue.push(message).await {
            tracing::warn!(error = %e, "could not re-queue the released job; the reconciler will");
        }
    }
    tracing::info!("shutdown grace period over; job handed back to the queue");
    Err(ProcessError::Released(job.id))
}

/// Writes the final state; Postgres errors here are retried, since the provider call (which costs money) already
/// succeeded and a lost write would mean paying for it again.
async fn finish_succeeded(
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
        tokio::time::sleep(pause).await;
        pause = (pause * 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
        match db::jobs::complete_succeeded(
            &ctx.pool,
            job.id,
            &ctx.worker_id,
            &images,
            meta,
            elapsed_ms,
            served,
        )
        .await
        {
            Ok(Some(_)) => {
                tracing::info!(images = images.len(), generation_time_ms = elapsed_ms, served_by = %served.route, "job succeeded");
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
