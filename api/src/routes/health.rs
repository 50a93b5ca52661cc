//! Health: `/health/` (every component), `/health/ready` (503 while Postgres or Redis is unreachable) and
//! `/health/live` (the process answers). A failed check's own message (which may name a host, a user or a path) is
//! shown only to a caller with a valid credential, or to everyone when authentication is off (a private
//! deployment); others see a generic `unavailable` or `timed out`.

use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// A health probe must answer quickly even when a dependency hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The `error` of a failed or hung check as an anonymous caller sees it while authentication is on.
const UNAVAILABLE: &str = "unavailable";
const TIMED_OUT: &str = "timed out";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/health/", get(health))
        .route("/health/ready", get(ready))
        .route("/health/live", get(live))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ComponentHealth {
    /// `healthy` or `unhealthy` (providers: `configured` or `not_configured`).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Why the check failed: the dependency's own message when authentication is off or the request carries a
    /// valid credential, else `unavailable` or `timed out`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthView {
    /// `healthy` when database, redis and storage all answer, else `unhealthy`.
    pub status: String,
    pub environment: String,
    pub version: &'static str,
    pub components: BTreeMap<String, ComponentHealth>,
}

/// Whether this caller may read the dependencies' own error messages: always with authentication off, else only
/// with a valid credential (any principal; an API key or a token, checked as on `/api/v1`).
async fn shows_details(state: &AppState, headers: &HeaderMap) -> bool {
    !state.authentication
        || matches!(
            tokio::time::timeout(CHECK_TIMEOUT, crate::auth::authenticate(headers, state)).await,
            Ok(Ok(_))
        )
}

/// One dependency's check; `detailed`: its error message as it is, else only `unavailable` or `timed out`.
async fn check<F, E>(f: F, detailed: bool) -> ComponentHealth
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let (status, error) = match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(Ok(())) => ("healthy", None),
        Ok(Err(e)) if detailed => ("unhealthy", Some(e.to_string())),
        Ok(Err(_)) => ("unhealthy", Some(UNAVAILABLE.to_owned())),
        Err(_) if detailed => (
            "unhealthy",
            Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
        ),
        Err(_) => ("unhealthy", Some(TIMED_OUT.to_owned())),
    };
    ComponentHealth {
        status: status.to_owned(),
        latency_ms: Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
        error,
    }
}

async fn components(state: &AppState, detailed: bool) -> BTreeMap<String, ComponentHealth> {
    let (database, queue, storage) = tokio::join!(
        check(imagegen_shared::db::ping(&state.pool), detailed),
        check(state.queue.ping(), detailed),
        check(state.storage.check(), detailed)
    );
    let mut map = BTreeMap::new();
    map.insert("database".to_owned(), database);
    // `redis`, or `queue` for the standalone mode's in-process queue, which is no Redis.
    map.insert(state.queue.health_name().to_owned(), queue);
    map.insert("storage".to_owned(), storage);
    map
}

fn all_healthy(map: &BTreeMap<String, ComponentHealth>) -> bool {
    map.values().all(|c| c.status == "healthy")
}

/// Overall health, component by component.
///
/// Open to everyone. A failed component's `error` is the dependency's own message only when authentication is off
/// (ENABLE_AUTHENTICATION=false) or the request carries a valid credential (an API key or a token, as on `/api/v1`;
/// any caller). Otherwise it is generic: `unavailable`, or `timed out` when the check got no answer in time.
#[utoipa::path(get, path = "/health/", tag = "health",
    responses((status = 200, body = HealthView), (status = 503, description = "A dependency is down", body = HealthView)))]
pub async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let detailed = shows_details(&state, &headers).await;
    let mut components = components(&state, detailed).await;
    let healthy = all_healthy(&components);
    for id in &state.providers.enabled {
        let configured = state.providers.is_configured(*id);
        // A provider's open circuit is reported, but does not make the service unhealthy: jobs fail over.
        let status = if configured {
            format!(
                "circuit_{}",
                super::providers::fleet_state(&state, *id).await.0
            )
        } else {
            "not_configured".to_owned()
        };
        components.insert(
            format!("provider:{id}"),
            ComponentHealth {
                status,
                latency_ms: None,
                error: None,
            },
        );
    }
    components.insert(
        "job_events".to_owned(),
        ComponentHealth {
            status: if state.waiters.is_subscribed() {
                "healthy"
            } else {
                "unhealthy"
            }
            .to_owned(),
            latency_ms: None,
            error: None,
        },
    );
    let view = HealthView {
        status: if healthy { "healthy" } else { "unhealthy" }.to_owned(),
        environment: state.environment.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        components,
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(view)).into_response()
}

/// Ready to take traffic: the database, the queue and storage answer, and no shutdown has begun.
///
/// Errors are shown as on `/health/`: generic unless authentication is off or the request carries a valid
/// credential.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = HealthView), (status = 503, body = HealthView)))]
pub async fn ready(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.stopping.is_cancelled() {
        // Shutting down: tell the load balancer to stop sending at once, whatever the dependencies say.
        let view = HealthView {
            status: "stopping".to_owned(),
            environment: state.environment.to_string(),
            version: env!("CARGO_PKG_VERSION"),
            components: BTreeMap::new(),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(view)).into_response();
    }
    let detailed = shows_details(&state, &headers).await;
    let components = components(&state, detailed).await;
    let healthy = all_healthy(&components);
    let view = HealthView {
        status: if healthy { "ready" } else { "not_ready" }.to_owned(),
        environment: state.environment.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        components,
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(view)).into_response()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LiveView {
    pub status: &'static str,
}

/// The process is alive (no dependency is checked).
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = LiveView)))]
pub async fn live() -> axum::Json<LiveView> {
    axum::Json(LiveView { status: "alive" })
}
