//! One route of a job (one provider serving one model): ask the fleet limits for admission (`admit`), count the
//! attempt and call the provider while renewing the permit, then store what it made (`call`), and decide what a
//! failed attempt means (`on_failure`: retry here after a backoff, defer the job, try the next route, or end it).
//!
//! `RouteRun::new(&job_run, route, &mut history).run()` walks one route; the job's `generate` step (in
//! `job/mod.rs`) walks its routes in order until one returns [`RouteResult::Done`].

use super::ahead::{self, AheadPermit};
use super::context::JobContext;
use super::failure::AttemptError;
use super::finish::{defer, finish_succeeded, finish_unsuccessful, release};
use super::outcome::{Outcome, ProcessError};
use crate::providers::{Call, ProviderError, ProviderOutput};
use crate::routing::Route;
use imagegen_shared::catalogue::SizeParam;
use imagegen_shared::db::{self, JobRecord, NewImage, RouteAttempt, Served};
use imagegen_shared::domain::AttemptRecord;
use imagegen_shared::limits::{Admission, LimitSettings};
use imagegen_shared::queue::JobMessage;
use imagegen_shared::queue::signals::Progress;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod charge;

/// How long a job waits in its worker for a fleet permit before it goes back to the queue, and how often it asks.
const SATURATED_WAIT: Duration = Duration::from_secs(1);
const SATURATED_POLL: Duration = Duration::from_millis(20);
/// Around how long a job whose route stays saturated waits in the queue before it asks again.
const SATURATED_DEFER: Duration = Duration::from_millis(250);
/// Spread added to a fleet-wide pause, so paused jobs do not all come back at the same instant.
const PAUSE_SPREAD: Duration = Duration::from_millis(100);

/// What stays the same across all routes of one job run.
#[derive(Clone, Copy)]
pub struct JobRun<'a> {
    pub ctx: &'a JobContext,
    pub job: &'a JobRecord,
    pub message: &'a JobMessage,
    /// Cancelled when the job stops being this worker's (lease lost, canceled by its client).
    pub lost: &'a CancellationToken,
    /// When this worker started on the job: its generation time counts from here.
    pub started: Instant,
    /// Provider calls the job has made so far, over all routes and workers (against its `call_budget`).
    pub calls: &'a AtomicI32,
    /// An edit's inputs, read once for the run (`job::inputs`); `None` for text-to-image.
    pub edit: Option<&'a crate::providers::EditInputs>,
}

/// What happened on one route.
pub enum RouteResult {
    /// The job reached an outcome; stop.
    Done(Outcome),
    /// Try the next route (attempts used up, circuit open, or the route is misconfigured), with the last error.
    Next(Option<AttemptError>),
}

/// One route being tried for one job.
pub struct RouteRun<'a> {
    ctx: &'a JobContext,
    job: &'a JobRecord,
    message: &'a JobMessage,
    route: &'a Route,
    /// The fleet limits of the route's provider (limits, pauses and breakers are the provider account's).
    limits: &'a LimitSettings,
    lost: &'a CancellationToken,
    started: Instant,
    calls: &'a AtomicI32,
    edit: Option<&'a crate::providers::EditInputs>,
    /// The job's history so far, shared by its routes.
    history: &'a mut Vec<AttemptRecord>,
    /// Attempts made on this route, by any worker.
    used: i32,
    /// Since when admission has found the route saturated.
    saturated_since: Option<Instant>,
    /// A permit taken ahead for this route's provider, used by the first attempt instead of asking.
    ahead: Option<AheadPermit>,
}

/// The answer of `admit`.
enum Admit {
    Granted(Permit),
    /// Ask again (a permit may have freed up).
    Again,
    Stop(RouteResult),
}

/// A fleet permit for one call, held until released.
struct Permit {
    id: String,
}

/// How a call ended: with `T`, or dropped.
enum Called<T> {
    Done(T),
    /// The job is no longer this worker's.
    Lost,
    /// The shutdown grace period ended during the call.
    Abandoned,
}

/// Stored images and what the provider said about them.
struct Made {
    images: Vec<NewImage>,
    meta: serde_json::Value,
    usage: Option<serde_json::Value>,
}

/// What `on_failure` decided.
enum AfterFailure {
    /// Backoff slept: attempt again on this route.
    Retry,
    Stop(RouteResult),
}

impl<'a> RouteRun<'a> {
    pub fn new(
        job_run: &JobRun<'a>,
        route: &'a Route,
        history: &'a mut Vec<AttemptRecord>,
    ) -> Self {
        let JobRun {
            ctx,
            job,
            message,
            lost,
            started,
            calls,
            edit,
        } = *job_run;
        let used = job
            .provider_attempts
            .0
            .get(route.key.as_str())
            .copied()
            .unwrap_or(0);
        Self {
            ctx,
            job,
            message,
            route,
            limits: ctx.limit_settings.get(route.provider()),
            lost,
            started,
            calls,
            edit,
            history,
            used,
            saturated_since: None,
            ahead: None,
        }
    }

    /// Starts with `permit` (taken ahead for this route's provider) instead of asking the fleet limits.
    pub fn with_ahead(self, permit: Option<AheadPermit>) -> Self {
        Self {
            ahead: permit,
            ..self
        }
    }

    /// Attempts the route until it produces images, its attempts run out, or the job stops here.
    #[tracing::instrument(name = "route", skip_all, fields(route = %self.route.key))]
    pub async fn run(mut self) -> Result<RouteResult, ProcessError> {
        let result = self.attempts().await;
        // Not used (the route had no attempt left): its place goes back to the fleet now.
        ahead::give_back(self.ctx, self.ahead.take()).await;
        result
    }

    async fn attempts(&mut self) -> Result<RouteResult, ProcessError> {
        loop {
            if self.used >= self.job.max_attempts || self.budget_spent() {
                return Ok(RouteResult::Next(None));
            }
            let permit = match self.ahead.take() {
                Some(ahead) => Permit {
                    id: ahead.use_for_call(),
                },
                None => match self.admit().await? {
                    Admit::Granted(permit) => permit,
                    Admit::Again => continue,
                    Admit::Stop(result) => return Ok(result),
                },
            };
            // Counted, announced and called at once: the attempt's UPDATE and the "attempt started" event go out
            // with the request instead of a Postgres and a Redis round trip ahead of it (a commit is most of the
            // time from submit to the provider). The count is polled first, so its commands are sent as the call
            // starts (or, gathered with other calls' counts, once a flush slot frees); the answer is looked at only
            // once the count is written.
            let started = Progress::Attempt {
                route: self.key().to_owned(),
                attempt: self.calls.load(Ordering::Relaxed) + 1,
            };
            let counted = {
                let counting = async {
                    let (counted, ()) =
                        tokio::join!(self.record_attempt(), self.ctx.progress(self.job, started));
                    counted
                };
                tokio::pin!(counting);
                let call = self.call_provider(&permit);
                tokio::pin!(call);
                let (counted, answered) = tokio::select! {
                    biased;
                    counted = &mut counting => (counted, None),
                    answered = &mut call => (counting.await, Some(answered)),
                };
                match counted {
                    Ok(Some(attempt)) => Ok((
                        attempt,
                        match answered {
                            Some(answered) => answered,
                            None => call.await,
                        },
                    )),
                    // Not ours any more (taken over), or the count could not be written: a call still running is
                    // dropped here (as one is when the job is taken over mid-call), and an answer is not used.
                    not_counted => Err(not_counted),
                }
            };
            let (attempt, answered) = match counted {
                Ok(counted) => counted,
                Err(not_counted) => {
                    self.release_permit(&permit).await;
                    return match not_counted {
                        Err(e) => Err(e),
                        Ok(_) => Ok(RouteResult::Done(Outcome::NotOurs)),
                    };
                }
            };
            self.used = attempt.on_route;
            self.calls.store(attempt.total, Ordering::Relaxed);
            let called = self.after_call(permit, attempt, answered).await;
            let made = match called {
                Called::Done(made) => made,
                Called::Lost => return Ok(RouteResult::Done(Outcome::NotOurs)),
                Called::Abandoned => {
                    return release(self.ctx, self.job).await.map(RouteResult::Done);
                }
            };
            match made {
                Ok(made) => return self.succeed(made, attempt).await.map(RouteResult::Done),
                Err(e) => match self.on_failure(e, attempt).await? {
                    AfterFailure::Retry => {}
                    AfterFailure::Stop(result) => return Ok(result),
                },
            }
        }
    }

    /// The job's budget of provider calls over all its routes is used up.
    fn budget_spent(&self) -> bool {
        self.calls.load(Ordering::Relaxed) >= self.job.call_budget()
    }

    /// The fleet limits' key: the provider account's.
    fn limit_key(&self) -> &'static str {
        self.route.provider().as_str()
    }

    fn key(&self) -> &'a str {
        self.route.key.as_str()
    }

    /// Asks the fleet limits for a permit. A saturated route is asked again for a moment (the job keeps its slot),
    /// then the job goes back to the queue; a paused route sends it back at once; an open circuit moves on.
    #[tracing::instrument(skip_all)]
    async fn admit(&mut self) -> Result<Admit, ProcessError> {
        let permit = Permit {
            id: uuid::Uuid::new_v4().to_string(),
        };
        let admission = match self
            .ctx
            .limits
            .admit(self.limit_key(), &permit.id, self.limits)
            .await
        {
            Ok(a) => a,
            // Without Redis there are no fleet limits to consult (and no queue either): by LIMITS_ON_REDIS_ERROR,
            // call without a permit (open) or hand the job back to wait for them (closed).
            Err(e) if self.ctx.limits_fail.is_closed() => {
                tracing::warn!(error = %e, route = self.key(), "fleet limits unavailable; job handed back (fail closed)");
                return self.hand_back(jitter(SATURATED_DEFER * 4)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, route = self.key(), "fleet limits unavailable; calling without a permit");
                Admission::Granted
            }
        };
        match admission {
            Admission::Granted | Admission::Probe => Ok(Admit::Granted(permit)),
            Admission::Open => {
                tracing::info!(route = self.key(), "circuit open; trying the next route");
                self.history
                    .push(AttemptRecord::skipped(self.key(), "circuit open"));
                Ok(Admit::Stop(RouteResult::Next(None)))
            }
            Admission::Saturated => {
                // A permit usually frees up within one provider call: wait for it here a little (the job keeps
                // its slot) before handing the job back to the queue, whose redelivery costs far more.
                let since = *self.saturated_since.get_or_insert_with(Instant::now);
                if since.elapsed() < SATURATED_WAIT {
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(SATURATED_POLL)) => return Ok(Admit::Again),
                        _ = self.lost.cancelled() => return Ok(Admit::Stop(RouteResult::Done(Outcome::NotOurs))),
                    }
                }
                self.hand_back(jitter(SATURATED_DEFER)).await
            }
            Admission::Paused(wait) => self.hand_back(wait + jitter(PAUSE_SPREAD)).await,
        }
    }

    /// Defers the job (see `finish::defer`) instead of calling.
    async fn hand_back(&self, delay: Duration) -> Result<Admit, ProcessError> {
        let outcome = defer(self.ctx, self.job, self.message, delay).await?;
        Ok(Admit::Stop(RouteResult::Done(outcome)))
    }

    /// Counts the attempt in Postgres, on the job and on this route; `None`: the job is no longer ours. Sent as the
    /// call starts (see `run`), so a crash mid-call still uses the attempt up; only one within the statement's own
    /// round trip of the call's start (and, gathered, the wait for a flush slot) could leave it uncounted.
    #[tracing::instrument(skip_all, err)]
    async fn record_attempt(&self) -> Result<Option<RouteAttempt>, ProcessError> {
        let (db, id) = (&self.ctx.pool, self.job.id);
        Ok(match &self.ctx.gathered {
            Some(gathered) => gathered.attempts.record(db, id, self.key()).await?,
            None => db::jobs::record_attempt(db, id, &self.ctx.worker_id, self.key()).await?,
        })
    }

    async fn release_permit(&self, permit: &Permit) {
        let _ = self.ctx.limits.release(self.limit_key(), &permit.id).await;
    }

    /// After the provider call made holding `permit`: gives the permit back, tells the breaker, and copies the
    /// pictures into storage, recording the charge meanwhile.
    #[tracing::instrument(skip_all, fields(attempt = attempt.total))]
    async fn after_call(
        &self,
        permit: Permit,
        attempt: RouteAttempt,
        answered: Called<Result<ProviderOutput, ProviderError>>,
    ) -> Called<Result<Made, AttemptError>> {
        let answer = match answered {
            Called::Done(answer) => answer,
            Called::Lost => {
                self.release_permit(&permit).await;
                return Called::Lost;
            }
            Called::Abandoned => {
                self.release_permit(&permit).await;
                return Called::Abandoned;
            }
        };
        Called::Done(match answer {
            Ok(output) => {
                // The permit's release (Redis) and the charge with the pictures' storage (Postgres, storage) are
                // independent: made at once, not one round trip after another. The provider charged for this
                // answer whatever happens to its pictures, so the charge is written even if storing fails.
                let release = async {
                    let _ = self
                        .ctx
                        .limits
                        .release_succeeded(self.limit_key(), &permit.id)
                        .await;
                };
                let ((), stored) = tokio::join!(release, self.charge_and_store(&output, attempt));
                stored
                    .map(|images| Made {
                        images,
                        meta: output.meta,
                        usage: output.usage,
                    })
                    .map_err(AttemptError::Store)
            }
            Err(e) => {
                self.release_permit(&permit).await;
                if matches!(e, ProviderError::Retryable { .. }) {
                    match self
                        .ctx
                        .limits
                        .record_failure(self.limit_key(), self.limits)
                        .await
                    {
                        Ok(true) => {
                            tracing::warn!(
                                route = self.key(),
                                "circuit opened after repeated failures"
                            )
                        }
                        Ok(false) => {}
                        Err(err) => {
                            tracing::warn!(error = %err, "could not record a breaker failure")
                        }
                    }
                }
                Err(AttemptError::Provider(e))
            }
        })
    }

    /// The provider call, renewing the fleet permit meanwhile, so a long call keeps its place and a dead worker's
    /// does not. Dropped (no result kept) when the job is lost or the shutdown grace period ends.
    #[tracing::instrument(name = "provider_call", skip_all)]
    async fn call_provider(
        &self,
        permit: &Permit,
    ) -> Called<Result<ProviderOutput, ProviderError>> {
        let started = Instant::now();
        // Partial pictures asked for (OpenAI-compatible streaming): passed on to the job's listeners as they come.
        let (partials, forwarder) = if self.route.request.partial_images() > 0 {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            (
                Some(tx),
                Some(tokio::spawn(forward_partials(
                    self.ctx.queue.clone(),
                    self.job.id,
                    rx,
                ))),
            )
        } else {
            (None, None)
        };
        let result = self.call_renewing(permit, partials.as_ref()).await;
        // The sender goes with the call: the forwarder ends once it has published what it holds.
        drop(partials);
        if let Some(forwarder) = forwarder {
            // Whatever it still holds goes out before the job is finished (the answer follows the partials).
            let _ = tokio::time::timeout(Duration::from_secs(5), forwarder).await;
        }
        let label = self.route.key.clone();
        metrics::histogram!("imagegen_provider_call_seconds", "route" => label.clone())
            .record(started.elapsed().as_secs_f64());
        if let Called::Done(r) = &result {
            let outcome = match r {
                Ok(_) => "ok",
                Err(e) => e.kind(),
            };
            metrics::counter!("imagegen_provider_calls_total", "route" => label, "outcome" => outcome)
                .increment(1);
        }
        result
    }

    /// The call itself, renewing the permit while it runs.
    async fn call_renewing(
        &self,
        permit: &Permit,
        partials: Option<&crate::providers::stream::PartialSink>,
    ) -> Called<Result<ProviderOutput, ProviderError>> {
        // `input_fidelity` as translated for this route (dropped where the model takes none).
        let edit = self.edit.map(|e| crate::providers::EditInputs {
            input_fidelity: self.route.request.edit().and_then(|p| p.input_fidelity),
            ..e.clone()
        });
        let call = Call {
            model: &self.route.model,
            provider_model: &self.route.provider_model,
            request: &self.route.request,
            correlation_id: &self.job.correlation_id,
            partials,
            edit: edit.as_ref(),
        };
        let call = self.route.client.generate(&call);
        tokio::pin!(call);
        let ttl = self.limits.permit_ttl;
        // The first renewal a third of the TTL from now. Not `interval` and its immediate first tick: awaiting a
        // timer that is already due still waits for the timer wheel's next millisecond, a stall before every call.
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + ttl / 3, ttl / 3);
        loop {
            tokio::select! {
                r = &mut call => break Called::Done(r),
                _ = renew.tick() => {
                    if let Err(e) = self.ctx.limits.renew(self.limit_key(), &permit.id, ttl).await {
                        tracing::warn!(error = %e, "could not renew the fleet permit");
                    }
                }
                _ = self.lost.cancelled() => break Called::Lost,
                _ = self.ctx.abandon.cancelled() => break Called::Abandoned,
            }
        }
    }

    /// Records the job succeeded with `made`: what the provider said, the history, the attempt count, usage, and
    /// any picture whose size is not the one asked for.
    async fn succeed(&self, made: Made, attempt: RouteAttempt) -> Result<Outcome, ProcessError> {
        let Made {
            images,
            mut meta,
            usage,
        } = made;
        let mismatched = size_mismatches(self.route, &images);
        if let (Some(obj), false) = (meta.as_object_mut(), mismatched.is_empty()) {
            obj.insert("size_mismatch".into(), serde_json::json!(mismatched));
        }
        if let Some(obj) = meta.as_object_mut() {
            obj.insert("retries".into(), serde_json::json!(&*self.history));
            obj.insert("attempts".into(), serde_json::json!(attempt.total));
            if let Some(usage) = usage {
                obj.insert("usage".into(), usage);
            }
        }
        let elapsed = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let served = Served {
            route: self.key().to_owned(),
            translations: self.route.translations.clone(),
        };
        finish_succeeded(self.ctx, self.job, images, &meta, elapsed, &served).await
    }

    /// A failed attempt, recorded in the history. Final answers end the job (content policy, the provider's own
    /// validation); a broken route or used-up attempts move to the next route; a provider's Retry-After pauses
    /// the route fleet-wide and defers the job; anything else is retried here after a backoff.
    #[tracing::instrument(skip_all)]
    async fn on_failure(
        &mut self,
        e: AttemptError,
        attempt: RouteAttempt,
    ) -> Result<AfterFailure, ProcessError> {
        let route = self.key();
        tracing::warn!(route, attempt = self.used, max_attempts = self.job.max_attempts, error = %e.describe(),
            "attempt failed");
        self.history.push(e.record(route, attempt.total));
        if e.route_broken() {
            return Ok(AfterFailure::Stop(RouteResult::Next(Some(e))));
        }
        if !e.retryable() {
            // Content policy and the provider's own validation errors are final: no retry, no failover.
            let failure = e.failure(false);
            let outcome =
                finish_unsuccessful(self.ctx, self.job, &failure, self.history.as_slice()).await?;
            return Ok(AfterFailure::Stop(RouteResult::Done(outcome)));
        }
        if self.used >= self.job.max_attempts || self.budget_spent() {
            return Ok(AfterFailure::Stop(RouteResult::Next(Some(e))));
        }
        // A provider that says when to come back pauses the whole fleet; this job waits off the worker.
        if let AttemptError::Provider(ProviderError::Retryable {
            retry_after: Some(wait),
            ..
        }) = &e
            && *wait <= crate::retry::MAX_RETRY_AFTER
        {
            if let Err(err) = self.ctx.limits.pause(self.limit_key(), *wait).await {
                tracing::warn!(error = %err, "could not pause the route for the fleet");
            }
            let outcome = defer(self.ctx, self.job, self.message, *wait).await?;
            return Ok(AfterFailure::Stop(RouteResult::Done(outcome)));
        }
        let delay = self
            .ctx
            .backoff
            .delay(u32::try_from(self.used).unwrap_or(1), None);
        let failure = e.failure(true);
        let retrying = Progress::Retrying {
            route: route.to_owned(),
            attempt: attempt.total,
            code: failure.code.to_string(),
            message: failure.message,
            retry_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        };
        self.ctx.progress(self.job, retrying).await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(AfterFailure::Retry),
            _ = self.lost.cancelled() => Ok(AfterFailure::Stop(RouteResult::Done(Outcome::NotOurs))),
            _ = self.ctx.abandon.cancelled() => {
                release(self.ctx, self.job).await.map(|o| AfterFailure::Stop(RouteResult::Done(o)))
            }
        }
    }
}

/// What was made is recorded as it is; a size other than the one asked for is said, not hidden (`auto` and
/// aspect-ratio models choose their own pixels, so only an exact width x height ask is compared).
fn size_mismatches(route: &Route, images: &[NewImage]) -> Vec<String> {
    let request = &route.request;
    let asked = request.size().exact().filter(|_| {
        route
            .model
            .serves
            .get(&route.provider())
            .is_none_or(|s| s.size_param == SizeParam::WidthHeight)
    });
    let Some(asked) = asked else {
        return Vec::new();
    };
    images
        .iter()
        .filter(|i| (i.width, i.height) != (asked.width as i32, asked.height as i32))
        .map(|i| {
            format!(
                "image {} is {}x{}, asked {}",
                i.position,
                i.width,
                i.height,
                request.size()
            )
        })
        .collect()
}

/// Publishes a call's partial pictures for the job's listeners until the call ends (its sender is dropped).
async fn forward_partials(
    queue: imagegen_shared::queue::JobQueue,
    job_id: imagegen_shared::domain::JobId,
    mut rx: tokio::sync::mpsc::Receiver<crate::providers::stream::PartialPicture>,
) {
    while let Some(p) = rx.recv().await {
        let frame = imagegen_shared::queue::partials::PartialFrame {
            job_id,
            image_index: p.image_index,
            partial_image_index: p.partial_image_index,
            b64_json: p.b64_json,
        };
        if let Err(e) = queue.publish_partial(&frame).await {
            tracing::debug!(error = %e, "could not publish a partial picture");
        }
    }
}

/// Around `around`: between half of it and one and a half times it.
fn jitter(around: Duration) -> Duration {
    let ms = u64::try_from(around.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(ms / 2 + rand::random_range(0..=ms))
}
