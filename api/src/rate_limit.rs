//! Per-owner limits, shared by the whole API fleet: requests per minute on /api/v1 (a middleware), and at
//! submission, images per day and jobs queued or running at once. Over a limit: 429 with Retry-After and the
//! `RateLimit-Limit` / `-Remaining` / `-Reset` headers. Health, metrics, docs and the provider list are not limited.

use crate::error::ApiError;
use crate::owner_limits::Window;
use crate::state::AppState;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// The owner's count this minute, for the answer's `RateLimit-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    limit: u64,
    window: Window,
}

impl Counted {
    /// Adds the `RateLimit-*` headers, unless the handler gave its own limit's (jobs in flight, daily quota).
    pub fn add_headers(&self, h: &mut HeaderMap) {
        if h.contains_key("ratelimit-limit") {
            return;
        }
        h.insert("ratelimit-limit", HeaderValue::from(self.limit));
        h.insert(
            "ratelimit-remaining",
            HeaderValue::from(self.limit.saturating_sub(self.window.count)),
        );
        h.insert("ratelimit-reset", HeaderValue::from(self.window.reset_secs));
    }
}

/// Counts a request of `owner` against their minute: the refusal when over RATE_LIMIT_PER_MINUTE, else the count
/// for the answer's headers (`None`: not counted). Runs inside `auth::Identify` (its `admit`), once the principal is known;
/// requests without credentials (`owner` is `None`: signed download links, or refused with 401 by the handler) are
/// not counted against anyone. Decides only: the request goes on in `Identify`, so a waiting request keeps none of
/// this future.
pub async fn per_minute(
    state: &AppState,
    owner: Option<String>,
) -> Result<Option<Counted>, Response> {
    let limit = state.rate_limit_per_minute;
    let Some(owner) = owner.filter(|_| limit > 0) else {
        return Ok(None);
    };
    let window = match state.owners.count("rpm", &owner, 1, MINUTE).await {
        Ok(w) => w,
        // LIMITS_ON_REDIS_ERROR: refuse (closed) or let through uncounted (open; a submission fails at the queue
        // anyway while Redis is down, reads go on).
        Err(e) if state.limits_fail.is_closed() => {
            tracing::warn!(error = %e, "rate limiter unavailable; request refused (fail closed)");
            return Err(ApiError::Unavailable(
                "The rate limiter is unavailable; try again shortly".into(),
            )
            .into_response());
        }
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable; request not counted");
            return Ok(None);
        }
    };
    if window.count > limit {
        tracing::info!(%owner, limit, "rate limit reached");
        return Err(ApiError::RateLimited {
            message: format!(
                "Rate limit of {limit} requests per minute reached; retry after the reset"
            ),
            limit,
            remaining: 0,
            reset_secs: window.reset_secs,
        }
        .into_response());
    }
    Ok(Some(Counted { limit, window }))
}

/// Before jobs are recorded: counts `images` against the owner's daily quota (IMAGE_QUOTA_PER_DAY), refusing when
/// over. A request that then records nothing (a replay found in a race, the active-jobs limit, an error) gives them
/// back with `refund_image_quota`. The active-jobs limit is checked where the jobs are inserted, under a per-owner
/// lock (`db::jobs::insert_admitted`), so concurrent submissions from several API processes cannot overshoot it.
pub async fn spend_image_quota(state: &AppState, owner: &str, images: u64) -> Result<(), ApiError> {
    let quota = state.image_quota_per_day;
    if quota == 0 {
        return Ok(());
    }
    let window = state
        .owners
        .count("images", owner, images, DAY)
        .await
        .map_err(|e| ApiError::Unavailable(format!("The quota store is unavailable: {e}")))?;
    if window.count > quota {
        state.owners.uncount("images", owner, images, DAY).await;
        let used = window.count - images;
        return Err(ApiError::RateLimited {
            message: format!(
                "Daily quota of {quota} images reached ({used} used); it resets at midnight UTC"
            ),
            limit: quota,
            remaining: quota.saturating_sub(used),
            reset_secs: window.reset_secs,
        });
    }
    Ok(())
}

/// Gives back what `spend_image_quota` counted for a request that recorded nothing.
pub async fn refund_image_quota(state: &AppState, owner: &str, images: u64) {
    if state.image_quota_per_day > 0 {
        state.owners.uncount("images", owner, images, DAY).await;
    }
}

/// The answer when the owner already has MAX_ACTIVE_JOBS_PER_OWNER jobs queued or running (`active`).
pub fn active_limit(state: &AppState, active: i64) -> ApiError {
    let max_active = state.max_active_jobs_per_owner;
    ApiError::RateLimited {
        message: format!(
            "At most {max_active} jobs may be queued or running at once; {active} are. Retry when some finish"
        ),
        limit: u64::try_from(max_active).unwrap_or(0),
        remaining: u64::try_from((max_active - active).max(0)).unwrap_or(0),
        reset_secs: 5,
    }
}
