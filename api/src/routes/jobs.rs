//! `POST /api/v1/jobs` (submit, then poll), `GET /api/v1/jobs/{id}` (with `?wait=N` long-polls and ETags) and
//! `GET /api/v1/jobs` (the caller's jobs, newest first, cursor-paginated).

use super::{accepted, base_url, load_job_view, parts_view};
use crate::auth::{Owner, Submitter};
use crate::error::{ApiError, ErrorBody};
use crate::extract::AppQuery;
use crate::extract::{AppJson, CorrelationId, PathId};
use crate::state::AppState;
use crate::views::{JobListView, JobView, job_view};
use crate::wait::wait_for_job;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use imagegen_shared::db::{self, JobRecord};
use imagegen_shared::domain::{GenerateBody, JobId};
use serde::Deserialize;
use std::time::Duration;
use utoipa::IntoParams;

const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs", post(create_job).get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
}

/// Submit a generation job; answers 202 at once.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = GenerateBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            description = "1 to 255 visible ASCII characters: the same key and request give the same job"),
        ("Cancel-After" = Option<String>, Header, nullable = false, pattern = r"^[+-]?[0-9]+$",
            description = "Seconds, 1 to 86400: cancel the job if it has not started by then"),
        ("X-Correlation-ID" = Option<String>, Header, nullable = false, description = "Your id for tracing; echoed back")),
    responses(
        (status = 202, description = "Accepted; poll `Location`", body = JobView,
            headers(("Location" = String, description = "The job's URL"), ("Retry-After" = u64))),
        (status = 400, description = "Invalid request (`validation_failed`) or blocked prompt (`content_blocked`)", body = ErrorBody),
        (status = 410, description = "The model is retired and MODEL_ALIASES=none (`model_retired`, naming its replacement)", body = ErrorBody),
        (status = 402, description = "A budget is spent (`budget_exceeded`, with `budget`: its limit, what is spent, when it resets)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not sent as `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "This Idempotency-Key was used with another request (`idempotency_key_reused`)", body = ErrorBody),
    ))]
pub async fn create_job(
    State(state): State<AppState>,
    submitter: Submitter,
    CorrelationId(correlation_id): CorrelationId,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    AppJson(body): AppJson<GenerateBody>,
) -> Result<Response, ApiError> {
    let (submitted, notices) = crate::submit::submit_request(
        &state,
        &submitter,
        &correlation_id,
        &headers,
        peer,
        crate::submit::Via {
            endpoint: "jobs",
            heard: crate::submit::Heard::AtOnce,
        },
        body,
    )
    .await?;
    let mut response =
        accepted(load_job_view(&state, &base_url(&state, &headers, peer), &submitted.job).await?);
    crate::submit::lifecycle_headers(&notices, response.headers_mut());
    Ok(response)
}

/// The longest `?wait=` accepted: the largest WAIT_MAX_SECS a service may be given (a service holds a request
/// for its own WAIT_MAX_SECS at most).
pub const MAX_WAIT_QUERY_SECS: u64 = 3600;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Hold the request up to N seconds until the job ends: 0 (do not wait) to 3600; the service holds it at most
    /// its WAIT_MAX_SECS.
    #[param(minimum = 0, maximum = 3600)]
    pub wait: Option<u64>,
}

impl WaitQuery {
    /// How long to hold the request (`None`: answer at once), never above `cap`.
    pub fn hold(&self, cap: Duration) -> Result<Option<Duration>, ApiError> {
        match self.wait {
            None | Some(0) => Ok(None),
            Some(secs) if secs <= MAX_WAIT_QUERY_SECS => {
                Ok(Some(Duration::from_secs(secs).min(cap)))
            }
            Some(_) => Err(ApiError::InvalidBody(format!(
                "wait must be 0 to {MAX_WAIT_QUERY_SECS} seconds"
            ))),
        }
    }
}

/// A weak validator that changes whenever the job does.
fn etag(job: &JobRecord) -> String {
    format!(
        "W/\"{}-{}-{}\"",
        job.id.0.simple(),
        job.status,
        job.updated_at.timestamp_micros()
    )
}

/// Get a job and its images.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, format = Uuid, description = "Job id"), WaitQuery,
           ("If-None-Match" = Option<String>, Header, nullable = false, description = "ETag of a previous answer")),
    responses(
        (status = 200, description = "The job", body = JobView, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the ETag given", headers(("ETag" = String))),
        (status = 400, description = "A malformed or out-of-range `wait`", body = ErrorBody),
        (status = 404, description = "No such job (for this caller)", body = ErrorBody),
    ))]
pub async fn get_job(
    State(state): State<AppState>,
    Owner(owner): Owner,
    PathId(id): PathId<JobId>,
    AppQuery(query): AppQuery<WaitQuery>,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Result<Response, ApiError> {
    let hold = query.hold(state.wait_max)?;
    let parts = match hold {
        Some(wait) => wait_for_job(&state, &owner, id, wait, None).await?,
        None => db::job_parts::get_job_parts(&state.pool, &owner, id).await?,
    }
    .ok_or(ApiError::NotFound("Job"))?;
    let job = &parts.job;
    let tag = etag(job);
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        axum::Json(parts_view(
            &state,
            &base_url(&state, &headers, peer),
            &parts,
        ))
        .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    if !job.status.is_terminal() {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(super::POLL_RETRY_AFTER_SECS),
        );
    }
    Ok(response)
}

/// Cancel a job.
///
/// A queued job is canceled at once; a running one as soon as its worker notices (at its next lease renewal): the
/// provider call is dropped and anything stored is removed. A finished job answers 409.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, format = Uuid, description = "Job id")),
    responses(
        (status = 200, description = "Canceled", body = JobView),
        (status = 404, description = "No such job (for this caller)", body = ErrorBody),
        (status = 409, description = "Already finished (`job_not_cancelable`)", body = ErrorBody),
    ))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Owner(owner): Owner,
    PathId(id): PathId<JobId>,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Result<axum::Json<JobView>, ApiError> {
    let Some(job) = db::jobs::cancel(
        &state.pool,
        &owner,
        id,
        imagegen_shared::domain::FailureCode::Canceled,
        "Canceled by the client",
    )
    .await?
    else {
        return match db::jobs::get_job(&state.pool, &owner, id).await? {
            None => Err(ApiError::NotFound("Job")),
            Some(job) => Err(ApiError::Conflict(format!(
                "The job already ended ({})",
                job.status
            ))),
        };
    };
    tracing::info!(job_id = %id, "job canceled by the client");
    // This API ended the job, so it counts it (once: nobody counts job events; its worker, if it was running,
    // finds it no longer its own).
    metrics::counter!("imagegen_jobs_finished_total", "status" => job.status.as_str()).increment(1);
    let event = imagegen_shared::queue::signals::JobEvent::status(id, job.batch_id, job.status);
    if let Err(e) = state.queue.publish_event(&event).await {
        tracing::warn!(error = %e, "could not publish the cancel event; waiters see it when their wait ends");
    }
    // Its reservation goes back now (a charge its worker still records is counted then).
    if let Err(e) = imagegen_shared::budget::settle_job(&state.pool, &state.budgets, id, None).await
    {
        tracing::warn!(error = %e, "could not settle the canceled job's budget; the reconciler will");
    }
    Ok(axum::Json(
        load_job_view(&state, &base_url(&state, &headers, peer), &job).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn encode_cursor(job: &JobRecord) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", job.created_at.timestamp_micros(), job.id))
}

fn decode_cursor(raw: &str) -> Result<(DateTime<Utc>, JobId), ApiError> {
    let bad = || ApiError::InvalidBody("cursor is not one this API handed out".into());
    let text =
        String::from_utf8(URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?).map_err(|_| bad())?;
    let (micros, id) = text.split_once('|').ok_or_else(bad)?;
    let ts = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((ts, id.parse().map_err(|_| bad())?))
}

/// List the caller's jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobListView),
        (status = 400, description = "A malformed or out-of-range `limit`, or a cursor this API did not hand out", body = ErrorBody),
    ))]
pub async fn list_jobs(
    State(state): State<AppState>,
    Owner(owner): Owner,
    AppQuery(query): AppQuery<ListQuery>,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Result<axum::Json<JobListView>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidBody(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    // One extra row tells whether another page exists.
    let mut jobs = db::jobs::list_jobs(&state.pool, &owner, after, limit + 1).await?;
    let more = jobs.len() as i64 > limit;
    jobs.truncate(usize::try_from(limit).unwrap_or(0));
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let images = db::images::images_for_jobs(&state.pool, &owner, &ids).await?;
    let base = base_url(&state, &headers, peer);
    let next_cursor = if more {
        jobs.last().map(encode_cursor)
    } else {
        None
    };
    Ok(axum::Json(JobListView {
        success: true,
        jobs: jobs
            .iter()
            .map(|j| job_view(&base, j, &images, &state.providers.sandbox))
            .collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_reject_garbage() {
        assert!(decode_cursor("not base64!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("12|not-a-uuid")).is_err());
        let id = JobId::new();
        let (ts, back) = decode_cursor(&URL_SAFE_NO_PAD.encode(format!("1700000000000000|{id}")))
            .expect("valid");
        assert_eq!((ts.timestamp(), back), (1_700_000_000, id));
    }
}
