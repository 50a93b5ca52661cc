//! `GET /metrics`: Prometheus text format. Queue depth is read at scrape time.

use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use imagegen_shared::limits::BreakerState;
use std::time::Duration;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(render))
}

/// Prometheus metrics of this API process.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn render(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(Ok(depth)) = tokio::time::timeout(Duration::from_secs(1), state.queue.depth()).await {
        metrics::gauge!("imagegen_queue_depth").set(depth as f64);
    }
    metrics::gauge!("imagegen_waiting_requests").set(state.waiters.len() as f64);
    for provider in state.providers.configured() {
        let route = provider.as_str();
        let read =
            tokio::time::timeout(Duration::from_millis(500), state.fleet.breaker_state(route))
                .await;
        if let Ok(Ok(circuit)) = read {
            // 0 closed, 0.5 half-open (probing), 1 open.
            let value = match circuit {
                BreakerState::Closed => 0.0,
                BreakerState::HalfOpen => 0.5,
                BreakerState::Open => 1.0,
            };
            metrics::gauge!("imagegen_provider_circuit_state", "provider" => route).set(value);
        }
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), state.fleet.in_flight(route)).await
        {
            metrics::gauge!("imagegen_provider_in_flight", "provider" => route).set(n as f64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Serves this process's metrics alone on `listener` until `stop` (the standalone mode's WORKER_METRICS_PORT: its
/// workers record into the same registry as its API).
pub async fn serve_process_metrics(
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) {
    let handle = crate::state::metrics_handle();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    crate::http_server::serve(listener, app, stop.cancelled_owned()).await
}
