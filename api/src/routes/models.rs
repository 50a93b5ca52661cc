//! `GET /api/v1/models`: every model in the catalogue with what it accepts, its lifecycle (status and dates as of
//! today, the model that replaces it) and which configured providers serve it here. A client builds its form from
//! this, so a new catalogue entry needs no client change.

use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::NaiveDate;
use imagegen_shared::catalogue::{
    EditSpec, Family, ModelSpec, ModelStatus, Price, Serving, SizeSpec,
};
use imagegen_shared::domain::{
    Background, ModelId, ModerationLevel, Offer, OutputFormat, ProviderId, Quality, Style, today,
};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/models", get(list_models))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    #[schema(value_type = String)]
    pub id: ModelId,
    pub name: String,
    pub description: String,
    pub family: Family,
    /// Today: `preview`, `ga`, `deprecated` (still served; retires on `retires_on`) or `retired`.
    pub status: ModelStatus,
    /// Whether a configured provider serves it here today (requests for a retired model go to `replaced_by`).
    pub available: bool,
    /// Configured providers that serve it today, in failover order.
    pub served_by: Vec<ProviderId>,
    /// What serves its requests once it is retired here (MODEL_ALIASES, else the catalogue's replacement).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub replaced_by: Option<ModelId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Date)]
    pub released_on: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Date)]
    pub deprecated_on: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Date)]
    pub retires_on: Option<NaiveDate>,
    /// Each provider that can serve it (configured or not), under which name and until when.
    pub providers: BTreeMap<ProviderId, Serving>,
    pub sizes: SizeSpec,
    pub max_images: u8,
    pub max_prompt_chars: u32,
    /// What it takes as an edit (`POST /api/v1/edits`): input images at most, mask, input fidelity. Absent: it does
    /// not edit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edits: Option<EditSpec>,
    pub qualities: Vec<Quality>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_quality: Option<Quality>,
    pub styles: Vec<Style>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_style: Option<Style>,
    pub seed: bool,
    pub backgrounds: Vec<Background>,
    pub output_formats: Vec<OutputFormat>,
    pub output_compression: bool,
    pub moderation: Vec<ModerationLevel>,
    pub typical_generation_time: String,
    /// The price in force today (what a job started now is charged at).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelsView {
    pub models: Vec<ModelView>,
    #[schema(value_type = String)]
    pub default_model: ModelId,
}

pub fn model_view(offer: &Offer, m: &ModelSpec, today: NaiveDate) -> ModelView {
    let served_by = offer.routes_for(m, today);
    let status = m.status_on(today);
    ModelView {
        id: m.id.clone(),
        name: m.name.clone(),
        description: m.description.clone(),
        family: m.family,
        status: if served_by.is_empty()
            && status != ModelStatus::Retired
            && m.serves.iter().all(|(_, s)| s.retired_on(today))
        {
            ModelStatus::Retired
        } else {
            status
        },
        available: !served_by.is_empty(),
        replaced_by: offer
            .replacement(m)
            .filter(|_| m.retires_on.is_some() || served_by.is_empty()),
        served_by,
        released_on: m.released_on,
        deprecated_on: m.deprecated_on,
        retires_on: m.retires_on,
        providers: m.serves.clone(),
        sizes: m.sizes.clone(),
        max_images: m.max_images.min(offer.max_images_per_request),
        max_prompt_chars: m.max_prompt_chars,
        edits: m.edits.clone(),
        qualities: m.qualities.clone(),
        default_quality: m.default_quality,
        styles: m.styles.clone(),
        default_style: m.default_style,
        seed: m.seed,
        backgrounds: m.backgrounds.clone(),
        output_formats: m.output_formats.clone(),
        output_compression: m.output_compression,
        moderation: m.moderation.clone(),
        typical_generation_time: m.typical_generation_time.clone(),
        price: m.price_on(today).cloned(),
    }
}

/// The model catalogue: parameters, lifecycle and availability of every model.
#[utoipa::path(get, path = "/api/v1/models", tag = "generation", responses((status = 200, body = ModelsView)))]
pub async fn list_models(State(state): State<AppState>) -> axum::Json<ModelsView> {
    let offer = state.offer();
    let today = today();
    axum::Json(ModelsView {
        models: offer
            .catalogue
            .models()
            .map(|m| model_view(&offer, m, today))
            .collect(),
        default_model: offer.default_model.clone(),
    })
}
