//! What every job of one worker process shares (`JobContext`, built once by the consumer), the registry of the jobs
//! running here (so a client's cancel can stop one at once), and the lease keeper that holds a claimed job's lease
//! while it runs.

use crate::config::ProviderLimits;
use crate::download::Downloader;
use crate::retry::Backoff;
use crate::routing::Routes;
use crate::store::StoreContext;
use imagegen_shared::db::{self, Db};
use imagegen_shared::domain::JobId;
use imagegen_shared::limits::FleetLimits;
use imagegen_shared::queue::JobQueue;
use imagegen_shared::queue::signals::{JobEvent, Progress};
use imagegen_shared::storage::ImageStorage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

/// The longest a progress event may hold its job up.
const PROGRESS_TIMEOUT: Duration = Duration::from_millis(500);

/// Everything a job needs, shared by all jobs of one worker process.
pub struct JobContext {
    pub pool: Db,
    /// The job writes gathered with the other jobs' of the moment (Postgres); `None` writes one by one.
    pub gathered: Option<GatheredWrites>,
    pub storage: ImageStorage,
    pub routes: Routes,
    pub downloader: Downloader,
    pub queue: JobQueue,
    pub limits: FleetLimits,
    /// Budget counters: a job's reservation is settled to its cost when it ends.
    pub budgets: imagegen_shared::budget::BudgetLedger,
    pub limit_settings: ProviderLimits,
    /// LIMITS_ON_REDIS_ERROR: whether a call waits (closed) or goes ahead (open) when the fleet limits are down.
    pub limits_fail: imagegen_shared::limits::FailMode,
    pub worker_id: String,
    pub lease: Duration,
    pub backoff: Backoff,
    /// Cancelled when the shutdown grace period is over: jobs still running give themselves back to the queue.
    pub abandon: CancellationToken,
    pub running: RunningJobs,
    /// Fetches edit inputs named by URL (EDIT_*: limits and address policy).
    pub inputs: super::input_fetch::InputFetcher,
    /// Which provider to ask a fleet permit for beside the next claim.
    pub ahead: super::ahead::AheadGuess,
}

/// A job's writes that this worker gathers, each into one statement per flush with the same write of the other
/// jobs finishing that step at the same moment (`db::group_*`; issue 19). SQLite, one process alone, has none.
pub struct GatheredWrites {
    pub claims: db::group_claim::GroupClaims,
    /// Attempt counts, made as provider calls start.
    pub attempts: db::group_attempt::GroupAttempts,
    /// Charges, with the storage intents of their answers' pictures.
    pub charges: db::group_charge::GroupCharges,
    pub successes: db::group_success::GroupSuccesses,
    /// Budget settlements of jobs that end otherwise (a success settles its own).
    pub settles: db::group_settle::GroupSettles,
}

impl GatheredWrites {
    pub fn new(pool: &sqlx::PgPool, worker_id: &str, lease: Duration) -> Self {
        let (pool, worker) = (pool.clone(), worker_id.to_owned());
        Self {
            claims: db::group_claim::GroupClaims::new(pool.clone(), worker.clone(), lease),
            attempts: db::group_attempt::GroupAttempts::new(pool.clone(), worker.clone()),
            charges: db::group_charge::GroupCharges::new(pool.clone(), worker.clone()),
            successes: db::group_success::GroupSuccesses::new(pool.clone(), worker),
            settles: db::group_settle::GroupSettles::new(pool),
        }
    }
}

impl JobContext {
    /// What copying pictures into storage needs.
    pub fn store(&self) -> StoreContext<'_> {
        StoreContext {
            pool: &self.pool,
            storage: &self.storage,
            downloader: &self.downloader,
            worker_id: &self.worker_id,
        }
    }

    /// Tells live event streams what a running job is doing. Best effort and bounded: a slow Redis never holds the
    /// job up (the stream still sees the job's end, published with its state change).
    pub async fn progress(&self, job: &db::JobRecord, progress: Progress) {
        let event = JobEvent::progress(job.id, job.batch_id, progress);
        match tokio::time::timeout(PROGRESS_TIMEOUT, self.queue.publish_event(&event)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not publish job progress"),
            Err(_) => tracing::debug!("publishing job progress timed out"),
        }
    }

    /// A client canceled the job: if it runs here, stop it now (the provider call is dropped, nothing is kept).
    pub fn stop_if_running(&self, id: JobId) {
        self.running.stop(id);
    }
}

/// The jobs this process is running, each with the token that stops it (a client's cancel, a lost lease).
#[derive(Default)]
pub struct RunningJobs(Mutex<HashMap<JobId, CancellationToken>>);

impl RunningJobs {
    /// Records `id` as running here until the returned guard is dropped; the token is cancelled by `stop`.
    pub fn register(&self, id: JobId, token: CancellationToken) -> Registration<'_> {
        self.lock().insert(id, token);
        Registration { jobs: self, id }
    }

    fn stop(&self, id: JobId) {
        if let Some(token) = self.lock().get(&id) {
            tracing::info!(job_id = %id, "job canceled by its client; stopping");
            token.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, CancellationToken>> {
        // A panic elsewhere while holding the lock leaves the map itself intact.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a job from [`RunningJobs`] however its run ends.
pub struct Registration<'a> {
    jobs: &'a RunningJobs,
    id: JobId,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.jobs.lock().remove(&self.id);
    }
}

/// Keeps the lease alive while the job runs, until the handle is aborted or dropped (dropped too when the job's run
/// panics, so the queue's catch-panic does not leave a lease renewed forever on a job nobody runs); cancels `lost`
/// if another worker took the job over.
pub fn spawn_lease_keeper(
    ctx: Arc<JobContext>,
    id: JobId,
    lost: CancellationToken,
) -> AbortOnDropHandle<()> {
    let keep = async move {
        // First renewal a third of the lease from now (an `interval`'s immediate first tick is one timer wake more).
        let every = ctx.lease / 3;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
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
    };
    // Under the job's span, so its warnings say which job.
    AbortOnDropHandle::new(tokio::spawn(keep.in_current_span()))
}
