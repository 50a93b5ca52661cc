//! `GET /api/v1/providers`: the seed's shape, one entry per enabled provider (`openai`, `azure_openai`, `flux`,
//! `bfl`), with whether it can run, the models it serves here, what its default model accepts, and its fleet-wide
//! state. Any `id` listed is accepted as a request's `provider`.

use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use imagegen_shared::domain::{ModelId, Offer, ProviderId, today};
use serde::Serialize;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/providers", get(list_providers))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    pub id: ProviderId,
    pub name: &'static str,
    /// What it serves and how it is reached.
    pub description: String,
    /// Whether this service has credentials for it (requests pinned to an unconfigured provider are refused).
    pub configured: bool,
    /// `true` when the built-in emulator answers instead of the real service (standalone mode without its key):
    /// the pictures are deterministic patterns, free of charge.
    pub sandbox: bool,
    /// The model a request naming only this provider gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub default_model: Option<ModelId>,
    /// The current models it serves here (`GET /api/v1/models` has each one's parameters).
    #[schema(value_type = Vec<String>)]
    pub models: Vec<ModelId>,
    /// The default model's sizes, image count and options, as the seed listed them.
    pub supported_sizes: Vec<String>,
    pub max_images: u8,
    pub supports_quality: bool,
    pub supports_style: bool,
    pub supports_seed: bool,
    pub typical_generation_time: String,
    /// `closed` (healthy), `open` (failing; requests fail over) or `half_open` (one probe call decides);
    /// `unknown` while Redis cannot be read or the provider is not configured.
    pub circuit: String,
    /// Calls in flight on it across the worker fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProvidersView {
    pub providers: Vec<ProviderView>,
    /// The provider first in line for requests that name nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_provider: Option<ProviderId>,
    /// The model of requests that name neither a model nor a provider.
    #[schema(value_type = String)]
    pub default_model: ModelId,
}

const STATE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The provider's circuit and fleet-wide calls in flight (Redis trouble shows as `unknown`).
pub async fn fleet_state(state: &AppState, provider: ProviderId) -> (String, Option<u64>) {
    let key = provider.as_str();
    let circuit = match tokio::time::timeout(STATE_TIMEOUT, state.fleet.breaker_state(key)).await {
        Ok(Ok(s)) => serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned)),
        _ => None,
    };
    let in_flight = tokio::time::timeout(STATE_TIMEOUT, state.fleet.in_flight(key))
        .await
        .ok()
        .and_then(Result::ok);
    (circuit.unwrap_or_else(|| "unknown".into()), in_flight)
}

fn describe(provider: ProviderId) -> &'static str {
    match provider {
        ProviderId::OpenAi => "OpenAI's Images API: the GPT image models",
        ProviderId::AzureOpenAi => "Azure OpenAI deployments of the GPT image models",
        ProviderId::Flux => "FLUX on an OpenAI-compatible host (Together AI by default)",
        ProviderId::Bfl => "Black Forest Labs' own API: FLUX.2, FLUX1.1 and Kontext",
    }
}

fn provider_view(offer: &Offer, provider: ProviderId, max_images: u8) -> ProviderView {
    let today = today();
    let catalogue = &offer.catalogue;
    let served = offer.provider(provider);
    let models: Vec<ModelId> = match served {
        Some(p) => p
            .models
            .keys()
            .filter(|m| {
                catalogue
                    .get(m.as_str())
                    .is_some_and(|spec| offer.routes_for(spec, today).contains(&provider))
            })
            .cloned()
            .collect(),
        None => catalogue
            .served_by(provider)
            .filter(|m| {
                m.status_on(today) != imagegen_shared::catalogue::ModelStatus::Retired
                    && m.serves
                        .get(&provider)
                        .is_some_and(|s| !s.retired_on(today))
            })
            .map(|m| m.id.clone())
            .collect(),
    };
    let default_model = served
        .and_then(|p| p.default_model.clone())
        .or_else(|| models.first().cloned());
    let spec = default_model
        .as_ref()
        .and_then(|m| catalogue.get(m.as_str()));
    ProviderView {
        id: provider,
        name: provider.name(),
        description: describe(provider).to_owned(),
        configured: served.is_some(),
        sandbox: offer.is_sandbox(provider),
        default_model: default_model.clone(),
        models,
        supported_sizes: spec
            .map(|s| s.sizes.list.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        max_images: spec.map_or(1, |s| s.max_images.min(max_images)),
        supports_quality: spec.is_some_and(|s| !s.qualities.is_empty()),
        supports_style: spec.is_some_and(|s| !s.styles.is_empty()),
        supports_seed: spec.is_some_and(|s| s.seed),
        typical_generation_time: spec
            .map(|s| s.typical_generation_time.clone())
            .unwrap_or_default(),
        circuit: "unknown".into(),
        in_flight: None,
    }
}

/// The providers this service offers.
#[utoipa::path(get, path = "/api/v1/providers", tag = "generation", responses((status = 200, body = ProvidersView)))]
pub async fn list_providers(State(state): State<AppState>) -> axum::Json<ProvidersView> {
    let offer = state.offer();
    let mut providers = Vec::new();
    for id in &offer.enabled {
        let mut view = provider_view(&offer, *id, offer.max_images_per_request);
        if view.configured {
            (view.circuit, view.in_flight) = fleet_state(&state, *id).await;
        }
        providers.push(view);
    }
    let default_provider = offer
        .catalogue
        .get(offer.default_model.as_str())
        .and_then(|m| offer.routes_for(m, today()).first().copied());
    axum::Json(ProvidersView {
        providers,
        default_provider,
        default_model: offer.default_model.clone(),
    })
}
