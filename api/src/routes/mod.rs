//! The router: one module per resource, each with its handlers; shared helpers for building answers.

pub mod admin;
pub mod batches;
pub mod budgets;
pub mod edits;
pub mod events;
pub mod generate;
pub mod health;
pub mod images;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod providers;
pub mod usage;
pub mod webhooks;

use crate::error::ApiError;
use crate::links::Links;
use crate::middleware;
use crate::state::AppState;
use crate::views::{JobView, job_view};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imagegen_shared::db::{self, JobParts, JobRecord};
use imagegen_shared::domain::{FailureCode, JobStatus};

/// What a client should wait before polling a job that is still running.
pub const POLL_RETRY_AFTER_SECS: u64 = 2;

/// Every route, with `docs` (the OpenAPI document and its UI, `openapi::docs_router`) among the open ones.
pub fn router(state: AppState, docs: Router<AppState>) -> Router {
    // The owner's endpoints: credentials checked once (`auth::Identify`), then counted against RATE_LIMIT_PER_MINUTE
    // (`rate_limit::per_minute`). Health, metrics, docs and providers are open and unlimited.
    let owned = Router::new()
        .merge(generate::router())
        .merge(edits::router(&state))
        .merge(jobs::router())
        .merge(batches::router())
        .merge(events::router())
        .merge(webhooks::router())
        .merge(images::router())
        .merge(admin::router())
        .merge(usage::router())
        .merge(budgets::router())
        .merge(crate::openai::router(&state))
        .route_layer(crate::layers::AroundLayer(crate::auth::Identify(
            state.clone(),
        )));
    let mut api = Router::new()
        .merge(owned)
        .merge(providers::router())
        .merge(models::router())
        .merge(health::router())
        .merge(crate::ui::router());
    if !state.separate_metrics {
        api = api.merge(metrics::router());
    }
    let api = api
        .route_layer(crate::layers::AroundLayer(middleware::HttpMetrics))
        .merge(docs);
    let cors = state.cors.clone();
    let app = api
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(crate::config::MAX_BODY_BYTES))
        .layer(crate::layers::AroundLayer(middleware::Envelope))
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

/// Where our links point (PUBLIC_BASE_URL, else the client's scheme and host), signed when authentication is on.
/// `peer` is the connection's remote address (`ConnectInfo`): it decides whether forwarded headers are believed.
pub fn base_url(state: &AppState, headers: &HeaderMap, peer: std::net::SocketAddr) -> Links {
    Links {
        base: public_base(state, headers, peer.ip()),
        signer: state.link_signer.clone(),
    }
}

/// PUBLIC_BASE_URL; else `X-Forwarded-Proto` (`http` or `https`) and `X-Forwarded-Host` when `peer` is one of
/// TRUSTED_PROXIES (their first value: the one the client's side of the proxy chain set); else `http` and the `Host`
/// header. A host is used only when it is a well-formed `host[:port]` (a DNS name, an IPv4 address or a bracketed
/// IPv6 address): a bad forwarded host falls back to `Host`, a bad `Host` to `localhost`.
fn public_base(state: &AppState, headers: &HeaderMap, peer: std::net::IpAddr) -> String {
    /// `name[:port]` or `[v6][:port]`: DNS labels of letters, digits, `-` and `_`, and a port up to 65535. Never
    /// spaces, slashes, `@`, quotes, control characters or anything else a URL would read differently.
    fn well_formed(host: &str) -> bool {
        let (name, port) = match host.strip_prefix('[') {
            Some(bracketed) => {
                let Some((v6, rest)) = bracketed.split_once(']') else {
                    return false;
                };
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match rest {
                    "" => (None, None),
                    _ => match rest.strip_prefix(':') {
                        Some(port) => (None, Some(port)),
                        None => return false,
                    },
                }
            }
            None => match host.split_once(':') {
                Some((name, port)) => (Some(name), Some(port)),
                None => (Some(host), None),
            },
        };
        let label = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        name.is_none_or(|n| n.len() <= 253 && n.split('.').all(label))
            && port.is_none_or(|p| {
                (1..=5).contains(&p.len())
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && p.parse::<u16>().is_ok()
            })
    }
    if let Some(base) = &state.public_base_url {
        return base.clone();
    }
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(str::trim)
    };
    // Only a trusted proxy's word counts; a client may send these headers too.
    let forwarded = |name: &str| {
        if state.trusted_proxies.trusts(peer) {
            value(name).and_then(|v| v.split(',').next()).map(str::trim)
        } else {
            None
        }
    };
    let scheme = match forwarded("x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let host = forwarded("x-forwarded-host")
        .filter(|h| well_formed(h))
        .or_else(|| value(header::HOST.as_str()).filter(|h| well_formed(h)))
        .unwrap_or("localhost");
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
    let mut view = job_view(base, job, &images, &state.providers.sandbox);
    if db::job_parts::has_charges(job) {
        view.charges = db::costs::charges_of(&state.pool, job.id).await?;
    }
    Ok(view)
}

/// The view of a job read whole (`db::job_parts`): nothing more to read.
pub fn parts_view(state: &AppState, base: &Links, parts: &JobParts) -> JobView {
    let mut view = job_view(base, &parts.job, &parts.images, &state.providers.sandbox);
    view.charges.clone_from(&parts.charges);
    view
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
pub fn finished_job_response(
    state: &AppState,
    base: &Links,
    parts: &JobParts,
) -> Result<Response, ApiError> {
    let job = &parts.job;
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
        JobStatus::Succeeded => Ok(axum::Json(parts_view(state, base, parts)).into_response()),
        JobStatus::Queued | JobStatus::Running => Ok(accepted(parts_view(state, base, parts))),
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
