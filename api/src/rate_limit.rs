//! Per-owner limits, shared by the whole API fleet: requests per minute on /api/v1 (a middleware), and at
//! submission, images per day and jobs queued or running at once. Over a limit: 429 with Retry-After and the
//! `RateLimit-Limit` / `-Remaining` / `-Reset` headers. Health, metrics, docs and the provider list are not limited.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::layers::Inner;
use crate::state::AppState;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// Counts the request against its owner's minute; refuses it when over RATE_LIMIT_PER_MINUTE. Runs inside
/// `auth::identify`, once the request's principal is known.
pub async fn per_minute<S: Inner>(state: &AppState, req: Request, next: S) -> Response {
    let limit = state.rate_limit_per_minute;
    if limit == 0 {
        return crate::layers::call(next, req).await;
    }
    // `auth::identify` ran first. Requests without credentials (signed download links, or refused with 401 by the
    // handler) are not counted against anyone.
    let Some(owner) = req.extensions().get::<Principal>().map(|p| p.owner.clone()) else {
        return crate::layers::call(next, req).await;
    };
    // Boxed: this future lives as long as the request (a whole wait) and should not carry the count's state.
    let window = match Box::pin(state.owners.count("rpm", &owner, 1, MINUTE)).await {
        Ok(w) => w,
        // LIMITS_ON_REDIS_ERROR: refuse (closed) or let through uncounted (open; a submission fails at the queue
        // anyway while Redis is down, reads go on).
        Err(e) if state.limits_fail.is_closed() => {
            tracing::warn!(error = %e, "rate limiter unavailable; request refused (fail closed)");
            return ApiError::Unavailable(
                "The rate limiter is unavailable; try again shortly".into(),
            )
            .into_response();
        }
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable; request not counted");
            return crate::layers::call(next, req).await;
        }
    };
    if window.count > limit {
        tracing::info!(%owner, limit, "rate limit reached");
        return ApiError::RateLimited {
            message: format!(
                "Rate limit of {limit} requests per minute reached; retry after the reset"
            ),
            limit,
            remaining: 0,
            reset_secs: window.reset_secs,
        }
        .into_response();
    }
    let mut response = crate::layers::call(next, req).await;
    // A handler's own limit answer (jobs in flight, daily quota) keeps its figures.
    let h = response.headers_mut();
    if !h.contains_key("ratelimit-limit") {
        h.insert("ratelimit-limit", HeaderValue::from(limit));
        h.insert(
            "ratelimit-remaining",
            HeaderValue::from(limit.saturating_sub(window.count)),
        );
        h.insert("ratelimit-reset", HeaderValue::from(window.reset_secs));
    }
    response
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
