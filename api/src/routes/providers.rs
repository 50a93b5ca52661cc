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
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProvidersView {
    pub providers: Vec<ProviderView>,
    pub default_provider: ProviderId,
}

/// The providers this service offers.
#[utoipa::path(get, path = "/api/v1/providers", tag = "generation", responses((status = 200, body = ProvidersView)))]
pub async fn list_providers(State(state): State<AppState>) -> axum::Json<ProvidersView> {
    let providers = state
        .providers
        .enabled
        .iter()
        .map(|id| {
            let spec = id.spec();
            ProviderView {
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
            }
        })
        .collect();
    axum::Json(ProvidersView {
        providers,
        default_provider: state.providers.default_provider,
    })
}
