//! `POST /api/v1/generate` (wait mode) and `POST /api/v1/generate/batch`.

use super::{accepted, base_url, finished_job_response, load_job_view};
use crate::auth::Submitter;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{AppJson, CorrelationId, WaitPreference, cancel_after};
use crate::state::AppState;
use crate::submit::{
    Idempotency, Submitted, accept_all, lifecycle_headers, submit_batch, submit_request,
};
use crate::views::{BatchView, JobView, batch_view};
use crate::wait::{wait_for_batch, wait_for_job};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use imagegen_shared::db;
use imagegen_shared::domain::{GenerateBody, JobId};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/generate", post(generate))
        .route("/api/v1/generate/batch", post(generate_batch))
}

/// Generate images and wait for them.
///
/// Holds the request until the job ends (`Prefer: wait=N`, default 60 s, at most 300 s). If it is still running
/// then, answers 202 with the job, `Location` and `Retry-After`; the job runs on. `Prefer: respond-async` answers 202
/// at once. A request for a deprecated model carries `Deprecation` and `Sunset` headers; one for a retired model is
/// served by its replacement (the changes in `translations`) with a `Warning` header as well.
#[utoipa::path(post, path = "/api/v1/generate", tag = "generation", request_body = GenerateBody,
    params(("Prefer" = Option<String>, Header, nullable = false, description = "`wait=N` (seconds) or `respond-async`"),
           ("Idempotency-Key" = Option<String>, Header, nullable = false,
               description = "1 to 255 visible ASCII characters: the same key and request give the same job"),
           ("Cancel-After" = Option<String>, Header, nullable = false, pattern = r"^[+-]?[0-9]+$",
               description = "Seconds, 1 to 86400: cancel the job if it has not started by then"),
           ("X-Correlation-ID" = Option<String>, Header, nullable = false, description = "Your id for tracing; echoed back")),
    responses(
        (status = 200, description = "The job succeeded; its stored images", body = JobView),
        (status = 202, description = "Still running; poll `Location`", body = JobView,
            headers(("Location" = String, description = "The job's URL"), ("Retry-After" = u64))),
        (status = 400, description = "Invalid request (`validation_failed`) or blocked prompt (`content_blocked`)", body = ErrorBody),
        (status = 409, description = "The job was canceled (`job_canceled`): by the client or its deadline", body = ErrorBody),
        (status = 410, description = "The model is retired and MODEL_ALIASES=none (`model_retired`, naming its replacement)", body = ErrorBody),
        (status = 402, description = "A budget is spent (`budget_exceeded`, with `budget`: its limit, what is spent, when it resets)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not sent as `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "The provider's safety system refused (`content_policy_violation`), or this Idempotency-Key was used with another request (`idempotency_key_reused`)", body = ErrorBody),
        (status = 500, description = "The images could not be stored (`storage_error`)", body = ErrorBody),
        (status = 502, description = "The provider failed (`provider_error`)", body = ErrorBody),
        (status = 503, description = "Database or queue unavailable, or the provider is not configured (`service_unavailable`, `provider_not_configured`)", body = ErrorBody),
    ))]
pub fn generate(
    State(state): State<AppState>,
    submitter: Submitter,
    CorrelationId(correlation_id): CorrelationId,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    AppJson(body): AppJson<GenerateBody>,
) -> impl Future<Output = Result<Response, ApiError>> + Send {
    // Memory per waiter: a request that waits holds only what answering needs. The submission (its inputs and its
    // state machine, which are far larger) runs in a boxed future of its own that is freed before the wait; the
    // headers and the job row (whose bytes are large) are dropped before it (`answer_job`).
    let submission = Box::pin(async move {
        let heard = match WaitPreference::from_headers(&headers)
            .duration(state.wait_default, state.wait_max)
        {
            Some(_) => crate::submit::Heard::WithOutcome,
            None => crate::submit::Heard::AtOnce,
        };
        let (submitted, notices) = submit_request(
            &state,
            &submitter,
            &correlation_id,
            &headers,
            peer,
            crate::submit::Via {
                endpoint: "generate",
                heard,
            },
            body,
        )
        .await?;
        Ok::<_, ApiError>((state, submitter.0, headers, submitted, notices))
    });
    async move {
        let (state, owner, headers, submitted, notices) = submission.await?;
        answer_job(&state, &owner, headers, peer, submitted, &notices).await
    }
}

/// The answer to one submitted job, as generate gives it: wait mode (`Prefer: wait=N`) holds until it ends, else 202;
/// with the model's lifecycle headers. Edits answer the same way. Takes the headers and job row by value and keeps
/// neither in the future it returns (a waiting request holds the job's id, not its row), and boxes each step, so a
/// waiting request holds only the small wait future.
pub fn answer_job<'a>(
    state: &'a AppState,
    owner: &'a str,
    headers: HeaderMap,
    peer: std::net::SocketAddr,
    submitted: Submitted,
    notices: &'a [imagegen_shared::domain::LifecycleNotice],
) -> impl Future<Output = Result<Response, ApiError>> + Send + 'a {
    let base = base_url(state, &headers, peer);
    let wait = WaitPreference::from_headers(&headers).duration(state.wait_default, state.wait_max);
    drop(headers);
    let Submitted { job, watch } = submitted;
    let answer = match wait {
        None => {
            drop(watch);
            Answer::Now(Box::new(job))
        }
        Some(wait) => Answer::AfterWait {
            id: job.id,
            wait,
            watch,
        },
    };
    async move {
        let mut response = match answer {
            Answer::Now(job) => accepted(Box::pin(load_job_view(state, &base, &job)).await?),
            Answer::AfterWait { id, wait, watch } => {
                let job = Box::pin(wait_for_job(state, owner, id, wait, watch))
                    .await?
                    .ok_or(ApiError::NotFound("Job"))?;
                // A job that ended without images is an error answer; it carries the notices all the same.
                finished_job_response(state, &base, &job)
                    .unwrap_or_else(IntoResponse::into_response)
            }
        };
        lifecycle_headers(notices, response.headers_mut());
        Ok(response)
    }
}

/// What `answer_job` keeps until it answers.
enum Answer {
    /// Respond-async: 202 with the job as recorded.
    Now(Box<db::JobRecord>),
    /// Wait mode: the job's id and the waiter registered before it was queued.
    AfterWait {
        id: JobId,
        wait: std::time::Duration,
        watch: Option<crate::waiters::WaitGuard>,
    },
}

/// Generate several sets of images.
///
/// A JSON array of 1 to BATCH_MAX_REQUESTS generation requests. Any invalid item rejects the whole batch (400, each
/// problem named by its index). Otherwise every item becomes a job; wait mode answers 200 once all have ended (each
/// with its own status; partial success is a success) or 202 with the batch so far.
#[utoipa::path(post, path = "/api/v1/generate/batch", tag = "generation", request_body = Vec<GenerateBody>,
    params(("Prefer" = Option<String>, Header, nullable = false, description = "`wait=N` (seconds) or `respond-async`"),
           ("Idempotency-Key" = Option<String>, Header, nullable = false,
               description = "1 to 255 visible ASCII characters: the same key and requests give the same batch"),
           ("Cancel-After" = Option<String>, Header, nullable = false, pattern = r"^[+-]?[0-9]+$",
               description = "Seconds, 1 to 86400: cancel each job that has not started by then"),
           ("X-Correlation-ID" = Option<String>, Header, nullable = false, description = "Your id for tracing; echoed back")),
    responses(
        (status = 200, description = "Every item ended", body = BatchView),
        (status = 202, description = "Some items still running; poll `Location`", body = BatchView,
            headers(("Location" = String, description = "The batch's URL"), ("Retry-After" = u64))),
        (status = 400, description = "An item is invalid, or the batch is empty or too large", body = ErrorBody),
        (status = 402, description = "A budget is spent (`budget_exceeded`, with `budget`: its limit, what is spent, when it resets)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not sent as `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "This Idempotency-Key was used with another request (`idempotency_key_reused`)", body = ErrorBody),
        (status = 503, description = "Database or queue unavailable", body = ErrorBody),
    ))]
pub async fn generate_batch(
    State(state): State<AppState>,
    submitter: Submitter,
    CorrelationId(correlation_id): CorrelationId,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    AppJson(items): AppJson<Vec<GenerateBody>>,
) -> Result<Response, ApiError> {
    if items.is_empty() || items.len() > state.batch_max_requests {
        return Err(ApiError::InvalidBody(format!(
            "A batch holds 1 to {} requests, got {}",
            state.batch_max_requests,
            items.len()
        )));
    }
    let accepted_items = accept_all(&state, items, cancel_after(&headers)?)?;
    let notices: Vec<_> = accepted_items
        .iter()
        .flat_map(|a| a.notices.clone())
        .collect();
    let mut requests: Vec<_> = accepted_items.into_iter().map(|a| a.request).collect();
    let idempotency = Idempotency::from_headers(&headers, "generate/batch", &requests)?;
    let links_base = base_url(&state, &headers, peer).base;
    for request in &mut requests {
        request.set_webhook_link_base(links_base.clone());
    }
    // Boxed, as in `generate`: a waiting batch holds only the wait's state.
    let (batch, jobs) = Box::pin(submit_batch(
        &state,
        &submitter,
        &correlation_id,
        requests,
        Vec::new(),
        idempotency.as_ref(),
    ))
    .await?;
    answer_batch(&state, &submitter.0, &headers, peer, batch, jobs, &notices).await
}

/// A submitted batch's answer: held until every item ends when the client asked to wait, else 202 with the batch so
/// far; the models' lifecycle notices as headers.
pub async fn answer_batch(
    state: &AppState,
    owner: &str,
    headers: &HeaderMap,
    peer: std::net::SocketAddr,
    batch: db::BatchRecord,
    jobs: Vec<db::JobRecord>,
    notices: &[imagegen_shared::domain::LifecycleNotice],
) -> Result<Response, ApiError> {
    let base = base_url(state, headers, peer);
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let jobs =
        match WaitPreference::from_headers(headers).duration(state.wait_default, state.wait_max) {
            Some(wait) => Box::pin(wait_for_batch(state, owner, batch.id, &ids, wait)).await?,
            None => jobs,
        };
    let images = db::images::images_for_jobs(&state.pool, owner, &ids).await?;
    let view = batch_view(&base, &batch, &jobs, &images, &state.providers.sandbox);
    let mut response = batch_response(view);
    lifecycle_headers(notices, response.headers_mut());
    Ok(response)
}

pub fn batch_response(view: BatchView) -> Response {
    if view.pending == 0 {
        return axum::Json(view).into_response();
    }
    let location = format!("/api/v1/batches/{}", view.batch_id);
    let mut response = (StatusCode::ACCEPTED, axum::Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(super::POLL_RETRY_AFTER_SECS),
    );
    response
}
