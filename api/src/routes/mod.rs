//! The router: one module per resource, each with its handlers; shared helpers for building answers.

pub mod admin;
pub mod batches;
pub mod generate;
pub mod health;
pub mod images;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod providers;

use crate::error::ApiError;
use crate::links::Links;
use crate::middleware;
use crate::state::AppState;
use crate::views::{JobView, job_view};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imagegen_shared::db::{self, JobRecord};
use imagegen_shared::domain::{FailureCode, JobStatus};

/// What a client should wait before polling a job that is still running.
pub const POLL_RETRY_AFTER_SECS: u64 = 2;

/// Every route, with `docs` (the OpenAPI document and its UI, `openapi::docs_router`) among the open ones.
pub fn router(state: AppState, docs: Router<AppState>) -> Router {
    // The owner's endpoints: credentials checked once (`identify`, outermost), then counted against
    // RATE_LIMIT_PER_MINUTE. Health, metrics, docs and providers are open and unlimited.
    let owned = Router::new()
        .merge(generate::router())
        .merge(jobs::router())
        .merge(batches::router())
        .merge(images::router())
        .merge(admin::router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::rate_limit::per_minute,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::identify,
        ));
    let mut api = Router::new()
        .merge(owned)
        .merge(providers::router())
        .merge(models::router())
        .merge(health::router());
    if !state.separate_metrics {
        api = api.merge(metrics::router());
    }
    let api = api
        .route_layer(axum::middleware::from_fn(middleware::http_metrics))
        .merge(docs);
    let cors = state.cors.clone();
    let app = api
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(crate::config::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(middleware::header_limit))
        .layer(axum::middleware::from_fn(middleware::correlation))
        .layer(axum::middleware::from_fn(crate::security::headers))
        .with_state(state);
    match cors {
        // Outermost, so preflights are answered before anything else runs.
        Some(cors) => app.layer(cors),
        None => app,
    }
}

async fn not_found() -> ApiError {
    ::metrics::counter!("imagegen_http_requests_total", "method" => "any", "route" => "unmatched", "status" => "404")
        .increment(1);
    ApiError::NotFound("Route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Where our links point (PUBLIC_BASE_URL, else the Host the client used), signed when authentication is on.
pub fn base_url(state: &AppState, headers: &HeaderMap) -> Links {
    Links {
        base: public_base(state, headers),
        signer: state.link_signer.clone(),
    }
}

fn public_base(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.public_base_url {
        return base.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// A job with its images, as its owner sees it.
pub async fn load_job_view(
    state: &AppState,
    base: &Links,
    job: &JobRecord,
) -> Result<JobView, ApiError> {
    let images = if job.status == JobStatus::Succeeded {
        db::images::images_for_jobs(&state.pool, &job.owner, &[job.id]).await?
    } else {
        Vec::new()
    };
    Ok(job_view(base, job, &images, &state.providers.sandbox))
}

/// 202 with the job, where to poll it, and when.
pub fn accepted(view: JobView) -> Response {
    let location = format!("/api/v1/jobs/{}", view.job_id);
    let mut response = (StatusCode::ACCEPTED, axum::Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(POLL_RETRY_AFTER_SECS),
    );
    response
}

/// The answer of wait mode for one job: 200 with images, an error in the seed shape (carrying the job id), or 202
/// when it is still running.
pub async fn finished_job_response(
    state: &AppState,
    base: &Links,
    job: &JobRecord,
) -> Result<Response, ApiError> {
    // The stored code when there is one (a canceled job's says `canceled` or `deadline_exceeded`).
    let failure = |status: StatusCode, default_code: &str| ApiError::JobUnsuccessful {
        status,
        code: job
            .error_code
            .as_ref()
            .map_or_else(|| default_code.to_owned(), ToString::to_string),
        message: job
            .error_message
            .clone()
            .unwrap_or_else(|| "The job did not succeed".to_owned()),
        job_id: job.id,
    };
    match job.status {
        JobStatus::Succeeded => {
            Ok(axum::Json(load_job_view(state, base, job).await?).into_response())
        }
        JobStatus::Queued | JobStatus::Running => {
            Ok(accepted(load_job_view(state, base, job).await?))
        }
        JobStatus::Moderated => Err(failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            FailureCode::ContentPolicyViolation.as_str(),
        )),
        JobStatus::Canceled => Err(failure(StatusCode::CONFLICT, "job_canceled")),
        JobStatus::Failed => {
            let code = job.error_code.clone().unwrap_or(FailureCode::ProviderError);
            Err(failure(crate::error::failure_status(&code), code.as_str()))
        }
    }
}
