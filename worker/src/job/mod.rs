//! One job, start to finish: claim it in Postgres with a lease; walk its routes (its provider first, then failover
//! targets) asking the fleet-wide limits for admission; call, retrying what is worth retrying (every attempt counted
//! in Postgres, per route); copy the pictures into our storage; only then mark the job succeeded, conditionally, so
//! a job delivered twice is completed once; publish the event that wakes waiters.
//!
//! A job whose route is saturated or paused does not hold a worker slot: it goes back to the queue with a delay.
//!
//! The consumer calls [`handle`] per queue message with the process's [`JobContext`]. The steps live in their own
//! modules: `ahead` (a fleet permit asked beside the claim, for the provider the last job went to first),
//! `context` (shared state, running jobs, the lease keeper), `route_run` (one route: admit, call,
//! on_failure), `failure` (what a failed attempt means), `finish` (the terminal writes and hand-backs), `inputs`
//! (an edit's stored inputs, read once per run) and `input_fetch` (inputs named by URL, fetched and stored once).

mod ahead;
mod context;
mod failure;
mod finish;
mod input_fetch;
mod inputs;
mod outcome;
mod route_run;

pub use ahead::AheadGuess;
pub use context::{GatheredWrites, JobContext, RunningJobs};
pub use input_fetch::{CapError, FetchError, InputFetcher, read_capped};
pub use outcome::{Outcome, ProcessError};

use ahead::AheadPermit;
use context::spawn_lease_keeper;
use failure::AttemptError;
use finish::{finish_past_deadline, finish_unsuccessful, publish_finished};
use imagegen_shared::db::{self, JobFailure, JobRecord};
use imagegen_shared::domain::{AttemptRecord, FailureCode, JobStatus};
use imagegen_shared::queue::JobMessage;
use imagegen_shared::queue::signals::Progress;
use route_run::{JobRun, RouteResult, RouteRun};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Runs the job a queue message names, in a `job` span that every step's span and log line nests under.
pub async fn handle(ctx: Arc<JobContext>, message: JobMessage) -> Result<Outcome, ProcessError> {
    let span = tracing::info_span!("job", job_id = %message.job_id, correlation_id = %message.correlation_id,
        worker_id = %ctx.worker_id);
    run(ctx, message).instrument(span).await
}

async fn run(ctx: Arc<JobContext>, message: JobMessage) -> Result<Outcome, ProcessError> {
    let id = message.job_id;
    // The claim and a fleet permit for the likely first route, asked at once (see `ahead`).
    let (claimed, mut ahead) = tokio::join!(claim(&ctx, &message), ahead::ask(&ctx));
    let claimed = match claimed {
        // An edit's input fetch could outlast the permit: it asks when it is ready to call.
        Ok(Some(job)) if job.request.0.edit().is_none() => Some(job),
        claimed => {
            ahead::give_back(&ctx, ahead.take()).await;
            claimed?
        }
    };
    let Some(job) = claimed else {
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
        ahead::give_back(&ctx, ahead.take()).await;
        let outcome = finish_past_deadline(&ctx, &job).await?;
        let summary = outcome.summary();
        publish_finished(&ctx, &job, outcome).await;
        return Ok(summary);
    }
    let lost = CancellationToken::new();
    let _registered = ctx.running.register(id, lost.clone());
    let keeper = spawn_lease_keeper(ctx.clone(), id, lost.clone());
    let calls = AtomicI32::new(job.attempts);
    let job_run = JobRun {
        ctx: &ctx,
        job: &job,
        message: &message,
        lost: &lost,
        started: Instant::now(),
        calls: &calls,
        edit: None,
    };
    let result = generate(&job_run, &mut ahead).await;
    // A permit taken ahead that no route used (the job ended before its first call).
    ahead::give_back(&ctx, ahead.take()).await;
    keeper.abort();
    let outcome = result?;
    let summary = outcome.summary();
    publish_finished(&ctx, &job, outcome).await;
    Ok(summary)
}

/// Takes the job for this worker with a lease; `None` when it is not ours to run (see `db::jobs::claim_job`), with
/// the other jobs this worker takes now where claims are gathered.
#[tracing::instrument(skip_all, err)]
async fn claim(ctx: &JobContext, message: &JobMessage) -> Result<Option<JobRecord>, ProcessError> {
    let id = message.job_id;
    Ok(match &ctx.gathered {
        Some(gathered) => gathered.claims.claim(&ctx.pool, id).await?,
        None => db::jobs::claim_job(&ctx.pool, id, &ctx.worker_id, ctx.lease).await?,
    })
}

/// Walks the job's routes in order until one ends the job; when none can, the job fails with the last error. A
/// permit taken `ahead` goes to the first route if it is for that route's provider.
async fn generate(
    job_run: &JobRun<'_>,
    ahead: &mut Option<AheadPermit>,
) -> Result<Outcome, ProcessError> {
    let (ctx, job) = (job_run.ctx, job_run.job);
    let request = &job.request.0;
    // Read once for all routes and retries of this run, so each sends the same bytes (URL inputs fetched and stored
    // first). A client's cancel, a lost lease or the end of the shutdown grace period stops a slow fetch too.
    let loaded = tokio::select! {
        // A finished load (every text-to-image job's at once) goes ahead as before.
        biased;
        loaded = inputs::load(ctx, job) => loaded,
        _ = job_run.lost.cancelled() => return Ok(Outcome::NotOurs),
        _ = ctx.abandon.cancelled() => return finish::release(ctx, job).await,
    };
    let edit = match loaded {
        Ok(edit) => edit,
        Err(inputs::InputError::Db(e)) => return Err(e.into()),
        Err(inputs::InputError::Storage(e)) => return Err(ProcessError::Inputs(job.id, e)),
        Err(inputs::InputError::NotOurs) => return Ok(Outcome::NotOurs),
        Err(inputs::InputError::Unusable(why)) => {
            let failure = JobFailure {
                status: JobStatus::Failed,
                code: FailureCode::InvalidInput,
                message: format!("The edit's inputs cannot be sent: {why}"),
                moderation: None,
            };
            return finish_unsuccessful(ctx, job, &failure, &[]).await;
        }
    };
    let job_run = &JobRun {
        edit: edit.as_ref(),
        ..*job_run
    };
    let (chain, skipped) = ctx.routes.chain(request, imagegen_shared::domain::today());
    let mut history: Vec<AttemptRecord> = skipped
        .into_iter()
        .map(|s| AttemptRecord::skipped(s.key, s.why))
        .collect();
    if chain.is_empty() {
        let failure = JobFailure {
            status: JobStatus::Failed,
            code: FailureCode::ProviderNotConfigured,
            message: format!("No worker is configured for model {}", request.model()),
            moderation: None,
        };
        return finish_unsuccessful(ctx, job, &failure, &history).await;
    }
    let first = chain[0].provider();
    ctx.ahead.remember(first);
    // A guess that missed goes back now, not when the job ends.
    let mut ahead = match ahead.take() {
        Some(permit) if permit.is_for(first) => Some(permit),
        missed => {
            ahead::give_back(ctx, missed).await;
            None
        }
    };
    let mut last: Option<AttemptError> = None;
    let budget = job.call_budget();
    let mut previous: Option<&str> = None;
    for route in &chain {
        // Every call may be paid: the job's budget bounds them over all routes, failover included.
        if job_run.calls.load(Ordering::Relaxed) >= budget {
            history.push(AttemptRecord::skipped(
                route.key.as_str(),
                format!("the job's budget of {budget} provider calls is used up"),
            ));
            continue;
        }
        if let Some(from) = previous {
            let failover = Progress::Failover {
                from: from.to_owned(),
                to: route.key.to_string(),
            };
            ctx.progress(job, failover).await;
        }
        let run = RouteRun::new(job_run, route, &mut history).with_ahead(ahead.take());
        match run.run().await? {
            RouteResult::Done(outcome) => return Ok(outcome),
            RouteResult::Next(err) => {
                if err.is_some() {
                    last = err;
                    previous = Some(route.key.as_str());
                }
            }
        }
    }
    let failure = match &last {
        Some(e) => e.failure(e.retryable()),
        None => JobFailure {
            status: JobStatus::Failed,
            code: FailureCode::ProviderError,
            message: if job_run.calls.load(Ordering::Relaxed) > 0 {
                "Every route's attempts, or the job's budget of provider calls, are used up"
            } else {
                "Every provider that could serve this job is unavailable (circuit open)"
            }
            .into(),
            moderation: None,
        },
    };
    finish_unsuccessful(ctx, job, &failure, &history).await
}
