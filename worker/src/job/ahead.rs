//! A fleet permit asked for beside the claim (issue 19). Between the queue and the provider call a job makes two
//! round trips one after the other: its claim (Postgres) and its admission by the fleet limits (Redis). Asked at the
//! same time, one of them is off the path. Before the claim the job is not read yet, so the permit asked ahead is a
//! guess: for the provider this worker's last job went to first (in most deployments every job's first route has
//! the same provider). A guess that misses, a job that is not this worker's, or an edit (whose input fetch could
//! outlast the permit's TTL) gives the permit back at once; whatever happens, a permit taken is used or released.
//!
//! Only plain grants are taken ahead (see [`imagegen_shared::limits::FleetLimits::admit_ahead`]): a paused,
//! saturated or half-open route is left for the ordinary admission, which knows what to do with the job.

use super::context::JobContext;
use imagegen_shared::domain::ProviderId;
use std::sync::Mutex;

/// Counts permits taken ahead, by what became of them (`used`, `given_back`).
const METRIC: &str = "imagegen_fleet_permits_ahead_total";

/// The provider to ask ahead for: the one the last job's first route went to.
#[derive(Default)]
pub struct AheadGuess(Mutex<Option<ProviderId>>);

impl AheadGuess {
    fn get(&self) -> Option<ProviderId> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers where a job's first route went, for the next job's guess.
    pub fn remember(&self, provider: ProviderId) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(provider);
    }
}

/// A permit taken before the job was read; must be [used](AheadPermit::use_for_call) or [given back](give_back).
#[derive(Debug)]
pub struct AheadPermit {
    provider: ProviderId,
    id: String,
}

impl AheadPermit {
    /// Whether it was taken for `provider` (to be used by a route of that provider, or given back).
    pub fn is_for(&self, provider: ProviderId) -> bool {
        self.provider == provider
    }

    /// The permit's id, for the call it admits.
    pub fn use_for_call(self) -> String {
        metrics::counter!(METRIC, "outcome" => "used").increment(1);
        self.id
    }
}

/// Asks the fleet limits for a permit on the guessed provider; `None` when there is no guess yet, nothing was
/// granted plainly, or the limits did not answer (the ordinary admission then decides, by LIMITS_ON_REDIS_ERROR).
pub async fn ask(ctx: &JobContext) -> Option<AheadPermit> {
    let provider = ctx.ahead.get()?;
    let id = uuid::Uuid::new_v4().to_string();
    let settings = ctx.limit_settings.get(provider);
    match ctx
        .limits
        .admit_ahead(provider.as_str(), &id, settings)
        .await
    {
        Ok(true) => Some(AheadPermit { provider, id }),
        Ok(false) => None,
        Err(e) => {
            tracing::debug!(error = %e, "could not ask the fleet limits ahead of the claim");
            None
        }
    }
}

/// Releases a permit taken ahead that the job did not use.
pub async fn give_back(ctx: &JobContext, permit: Option<AheadPermit>) {
    let Some(permit) = permit else { return };
    metrics::counter!(METRIC, "outcome" => "given_back").increment(1);
    if let Err(e) = ctx
        .limits
        .release(permit.provider.as_str(), &permit.id)
        .await
    {
        // Its TTL gives it back to the fleet in any case.
        tracing::debug!(error = %e, "could not give back a permit taken ahead");
    }
}
