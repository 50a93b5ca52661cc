//! `GET /api/v1/providers`: the seed's shape, enabled providers only, with whether each can run.

use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use imagegen_shared::domain::ProviderId;
use serde::Serialize;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/providers", get(list_providers))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    pub id: ProviderId,
    pub name: &'static str,
    pub description: &'static str,
    pub supported_sizes: Vec<String>,
    pub max_images: u8,
    pub supports_quality: bool,
    pub supports_style: bool,
    pub supports_seed: bool,
    pub typical_generation_time: &'static str,
    /// Whether this service has credentials for it (requests to an unconfigured provider are refused).
    pub configured: bool,
    /// `true` when the built-in emulator answers instead of the real service (standalone mode without its key):
    /// the pictures are deterministic patterns, free of charge.
    pub sandbox: bool,
    /// The ways this service reaches it, primary first, with their fleet-wide state.
    pub routes: Vec<RouteView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RouteView {
    /// `dalle3:openai`, `dalle3:azure` or `flux_schnell`.
    pub route: &'static str,
    /// `closed` (healthy), `open` (failing; requests fail over) or `half_open` (one probe call decides);
    /// `unknown` while Redis cannot be read.
    pub circuit: String,
    /// Calls in flight on this route across the worker fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
}

/// Each configured route's circuit and fleet-wide calls in flight (Redis trouble shows as `unknown`).
pub async fn route_views(state: &AppState, provider: ProviderId) -> Vec<RouteView> {
    let mut out = Vec::new();
    for (_, route) in state
        .providers
        .routes()
        .into_iter()
        .filter(|(p, _)| *p == provider)
    {
        let circuit =
            match tokio::time::timeout(STATE_TIMEOUT, state.fleet.breaker_state(route)).await {
                Ok(Ok(s)) => serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned)),
                _ => None,
            };
        let in_flight = tokio::time::timeout(STATE_TIMEOUT, state.fleet.in_flight(route))
            .await
            .ok()
            .and_then(Result::ok);
        out.push(RouteView {
            route,
            circuit: circuit.unwrap_or_else(|| "unknown".into()),
            in_flight,
        });
    }
    out
}

const STATE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, Serialize, ToSchema)]
pub struct ProvidersView {
    pub providers: Vec<ProviderView>,
    pub default_provider: ProviderId,
}

/// The providers this service offers.
#[utoipa::path(get, path = "/api/v1/providers", tag = "generation", responses((status = 200, body = ProvidersView)))]
pub async fn list_providers(State(state): State<AppState>) -> axum::Json<ProvidersView> {
    let mut providers = Vec::new();
    for id in &state.providers.enabled {
        let spec = id.spec();
        providers.push(ProviderView {
            id: *id,
            name: spec.name,
            description: spec.description,
            supported_sizes: spec
                .supported_sizes
                .iter()
                .map(ToString::to_string)
                .collect(),
            max_images: spec.max_images.min(state.limits.max_images_per_request),
            supports_quality: spec.supports_quality,
            supports_style: spec.supports_style,
            supports_seed: spec.supports_seed,
            typical_generation_time: spec.typical_generation_time,
            configured: state.providers.is_configured(*id),
            sandbox: state.providers.sandbox.contains(id),
            routes: route_views(&state, *id).await,
        });
    }
    axum::Json(ProvidersView {
        providers,
        default_provider: state.providers.default_provider,
    })
}
