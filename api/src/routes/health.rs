//! Health: `/health/` (every component), `/health/ready` (503 while Postgres or Redis is unreachable) and
//! `/health/live` (the process answers).

use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// A health probe must answer quickly even when a dependency hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

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

async fn check<F, E>(f: F) -> ComponentHealth
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let (status, error) = match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(Ok(())) => ("healthy", None),
        Ok(Err(e)) => ("unhealthy", Some(e.to_string())),
        Err(_) => (
            "unhealthy",
            Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
        ),
    };
    ComponentHealth {
        status: status.to_owned(),
        latency_ms: Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
        error,
    }
}

async fn components(state: &AppState) -> BTreeMap<String, ComponentHealth> {
    let (database, queue, storage) = tokio::join!(
        check(imagegen_shared::db::ping(&state.pool)),
        check(state.queue.ping()),
        check(state.storage.check())
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
#[utoipa::path(get, path = "/health/", tag = "health",
    responses((status = 200, body = HealthView), (status = 503, description = "A dependency is down", body = HealthView)))]
pub async fn health(State(state): State<AppState>) -> Response {
    let mut components = components(&state).await;
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
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = HealthView), (status = 503, body = HealthView)))]
pub async fn ready(State(state): State<AppState>) -> Response {
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
    let components = components(&state).await;
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
