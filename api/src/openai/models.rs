//! `GET /v1/models`: the image models this service serves today, in OpenAI's list shape (retired ids that are served
//! by a replacement are listed too, so a client's model check passes for them).

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiModel {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Release date, Unix seconds (0 when unknown).
    pub created: i64,
    /// Who makes the model (`openai`, `black-forest-labs`).
    pub owned_by: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<OpenAiModel>,
}

/// List models (OpenAI-compatible).
///
/// The image models a request may name here: served by a configured provider today, or retired and served by
/// their replacement. `GET /api/v1/models` has the details.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, body = OpenAiModelList),
        (status = 401, description = "No or a bad credential (`invalid_api_key`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 403, description = "Not allowed (`forbidden`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 429, description = "Rate limit (`rate_limit_exceeded`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 503, description = "Database unavailable (`service_unavailable`)", body = crate::openai::error::OpenAiErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _owner: crate::auth::Owner,
) -> Result<axum::Json<OpenAiModelList>, ApiError> {
    let offer = state.offer();
    let today = imagegen_shared::domain::today();
    let data = offer
        .catalogue
        .models()
        .filter(|m| {
            !offer.routes_for(m, today).is_empty()
                || offer
                    .replacement(m)
                    .and_then(|r| offer.catalogue.get(r.as_str()))
                    .is_some_and(|r| !offer.routes_for(r, today).is_empty())
        })
        .map(|m| OpenAiModel {
            id: m.id.to_string(),
            object: "model",
            created: m
                .released_on
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map_or(0, |t| t.and_utc().timestamp()),
            owned_by: match m.family {
                imagegen_shared::catalogue::Family::Flux => "black-forest-labs",
                _ => "openai",
            },
        })
        .collect();
    Ok(axum::Json(OpenAiModelList {
        object: "list",
        data,
    }))
}
