//! Admin endpoints (AUTH_ADMIN_ROLE): API keys for machines, managed over HTTP as `imagegen keys` does on the CLI.
//! `POST /api/v1/admin/keys` (the key is shown once), `GET /api/v1/admin/keys`, `DELETE /api/v1/admin/keys/{id}`.

use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::AppJson;
use crate::extract::PathId;
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, post};
use chrono::{DateTime, Utc};
use imagegen_shared::db::api_keys::{self, ApiKeyRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/keys", post(create_key).get(list_keys))
        .route("/api/v1/admin/keys/{id}", delete(revoke_key))
}

const MAX_OWNER_LEN: usize = 256;
const MAX_NAME_LEN: usize = 100;
const MAX_EXPIRES_DAYS: u32 = 3650;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    /// The owner the key acts as (1 to 256 characters).
    #[schema(min_length = 1, max_length = 256, example = "billing-service")]
    pub owner: String,
    /// A label to recognise the key by.
    #[schema(max_length = 100)]
    #[serde(default)]
    pub name: Option<String>,
    /// Days until the key stops working (1 to 3650); none: until revoked.
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(default)]
    pub expires_days: Option<u32>,
    /// USD the key may spend per UTC day (its owner's budget applies as well); none: no limit of its own.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(default)]
    pub budget_usd_per_day: Option<f64>,
    /// USD the key may spend per UTC month.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(default)]
    pub budget_usd_per_month: Option<f64>,
}

/// A key as listed: never the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: uuid::Uuid,
    pub owner: String,
    pub name: String,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key's own budget in USD (`null`: none).
    pub budget_usd_per_day: Option<f64>,
    pub budget_usd_per_month: Option<f64>,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(r: ApiKeyRecord) -> Self {
        Self {
            budget_usd_per_day: r.budget_usd_micros_per_day.map(imagegen_shared::cost::usd),
            budget_usd_per_month: r
                .budget_usd_micros_per_month
                .map(imagegen_shared::cost::usd),
            id: r.id,
            owner: r.owner,
            name: r.name,
            prefix: r.prefix,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyView {
    /// The key: shown only in this answer; only its hash is stored.
    pub key: String,
    #[serde(flatten)]
    pub record: KeyView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyListView {
    pub keys: Vec<KeyView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedKeyView {
    pub success: bool,
    pub id: uuid::Uuid,
    pub message: String,
}

/// Create an API key for an owner; the key is in this answer only.
#[utoipa::path(post, path = "/api/v1/admin/keys", tag = "admin", request_body = CreateKeyBody,
    responses(
        (status = 201, description = "Created; keep the key, it is not shown again", body = CreatedKeyView),
        (status = 400, description = "A field out of range (`validation_failed`)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not sent as `application/json` (`unsupported_media_type`)", body = ErrorBody),
    ))]
pub async fn create_key(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AppJson(body): AppJson<CreateKeyBody>,
) -> Result<(StatusCode, axum::Json<CreatedKeyView>), ApiError> {
    let owner = body.owner.trim();
    if owner.is_empty() || owner.chars().count() > MAX_OWNER_LEN {
        return Err(ApiError::InvalidBody(format!(
            "owner: 1 to {MAX_OWNER_LEN} characters"
        )));
    }
    let name = body.name.as_deref().unwrap_or("").trim();
    if name.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::InvalidBody(format!(
            "name: at most {MAX_NAME_LEN} characters"
        )));
    }
    if body
        .expires_days
        .is_some_and(|d| !(1..=MAX_EXPIRES_DAYS).contains(&d))
    {
        return Err(ApiError::InvalidBody(format!(
            "expires_days: 1 to {MAX_EXPIRES_DAYS}"
        )));
    }
    let per_day = crate::config::budget("budget_usd_per_day", body.budget_usd_per_day)
        .map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let per_month = crate::config::budget("budget_usd_per_month", body.budget_usd_per_month)
        .map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let (key, _) = api_keys::generate();
    let mut record = api_keys::create(&state.pool, owner, name, &key, body.expires_days).await?;
    if per_day.is_some() || per_month.is_some() {
        record = api_keys::set_budget(&state.pool, record.id, per_day, per_month)
            .await?
            .ok_or(ApiError::NotFound("API key"))?;
    }
    tracing::info!(by = %admin, key_id = %record.id, owner = %record.owner, "API key created");
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKeyView {
            key,
            record: record.into(),
        }),
    ))
}

/// List API keys (prefixes and dates, never the keys).
#[utoipa::path(get, path = "/api/v1/admin/keys", tag = "admin",
    responses((status = 200, body = KeyListView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_keys(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<axum::Json<KeyListView>, ApiError> {
    let keys = api_keys::list(&state.pool).await?;
    Ok(axum::Json(KeyListView {
        keys: keys.into_iter().map(KeyView::from).collect(),
    }))
}

/// Revoke an API key: it stops working at once, on every API replica.
#[utoipa::path(delete, path = "/api/v1/admin/keys/{id}", tag = "admin",
    params(("id" = String, Path, format = Uuid, description = "The key's id")),
    responses((status = 200, body = RevokedKeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such active key", body = ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Admin(admin): Admin,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<axum::Json<RevokedKeyView>, ApiError> {
    if api_keys::revoke(&state.pool, &id.to_string()).await? != 1 {
        return Err(ApiError::NotFound("API key"));
    }
    // Forgotten by every API process's key cache (through Redis), not only this one's.
    state.key_cache.changed(id).await;
    tracing::info!(by = %admin, key_id = %id, "API key revoked");
    Ok(axum::Json(RevokedKeyView {
        success: true,
        id,
        message: "API key revoked".into(),
    }))
}
