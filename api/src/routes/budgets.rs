//! Admin endpoints for budgets (AUTH_ADMIN_ROLE): per-owner limits over the defaults (BUDGET_USD_PER_DAY,
//! BUDGET_USD_PER_MONTH) and per-key limits. Every submission reads them, so a change holds at once on every API
//! process.

use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{AppJson, PathId};
use crate::routes::admin::KeyView;
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, put};
use chrono::{DateTime, Utc};
use imagegen_shared::cost::usd;
use imagegen_shared::db::{api_keys, budgets};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/budgets", get(list_budgets))
        .route(
            "/api/v1/admin/budgets/{owner}",
            put(set_budget).delete(delete_budget),
        )
        .route("/api/v1/admin/keys/{id}/budget", put(set_key_budget))
}

/// Limits in USD; a missing or `null` field means the default (for an owner) or none (for a key). 0 stops all
/// spending.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000, example = 5.0)]
    pub usd_per_day: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000, example = 100.0)]
    pub usd_per_month: Option<f64>,
}

impl BudgetBody {
    fn micros(&self) -> Result<(Option<i64>, Option<i64>), ApiError> {
        let bad = |e: anyhow::Error| ApiError::InvalidBody(e.to_string());
        Ok((
            crate::config::budget("usd_per_day", self.usd_per_day).map_err(bad)?,
            crate::config::budget("usd_per_month", self.usd_per_month).map_err(bad)?,
        ))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OwnerBudgetView {
    pub owner: String,
    /// The owner's own limits (`null`: the default applies).
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
    pub updated_at: DateTime<Utc>,
}

impl From<budgets::OwnerBudget> for OwnerBudgetView {
    fn from(b: budgets::OwnerBudget) -> Self {
        Self {
            owner: b.owner,
            usd_per_day: b.usd_micros_per_day.map(usd),
            usd_per_month: b.usd_micros_per_month.map(usd),
            updated_at: b.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetListView {
    /// BUDGET_USD_PER_DAY and BUDGET_USD_PER_MONTH (`null`: no limit).
    pub default_usd_per_day: Option<f64>,
    pub default_usd_per_month: Option<f64>,
    pub owners: Vec<OwnerBudgetView>,
}

/// The default budgets and every owner's own.
#[utoipa::path(get, path = "/api/v1/admin/budgets", tag = "admin",
    responses((status = 200, body = BudgetListView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_budgets(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<axum::Json<BudgetListView>, ApiError> {
    let owners = budgets::list(&state.pool).await?;
    Ok(axum::Json(BudgetListView {
        default_usd_per_day: state.default_budget_per_day.map(usd),
        default_usd_per_month: state.default_budget_per_month.map(usd),
        owners: owners.into_iter().map(OwnerBudgetView::from).collect(),
    }))
}

/// Set an owner's budget (both limits; a `null` one falls back to the default).
#[utoipa::path(put, path = "/api/v1/admin/budgets/{owner}", tag = "admin", request_body = BudgetBody,
    params(("owner" = String, Path, description = "The owner")),
    responses((status = 200, body = OwnerBudgetView),
        (status = 400, description = "A limit that is not an amount from 0 (`validation_failed`)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn set_budget(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(owner): Path<String>,
    AppJson(body): AppJson<BudgetBody>,
) -> Result<axum::Json<OwnerBudgetView>, ApiError> {
    let owner = owner.trim();
    if owner.is_empty() || owner.chars().count() > 256 {
        return Err(ApiError::InvalidBody("owner: 1 to 256 characters".into()));
    }
    let (per_day, per_month) = body.micros()?;
    let row = budgets::set(&state.pool, owner, per_day, per_month).await?;
    tracing::info!(by = %admin, %owner, per_day, per_month, "budget set");
    Ok(axum::Json(row.into()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedBudgetView {
    pub success: bool,
    pub owner: String,
    pub message: String,
}

/// Remove an owner's budget: the defaults apply again.
#[utoipa::path(delete, path = "/api/v1/admin/budgets/{owner}", tag = "admin",
    params(("owner" = String, Path, description = "The owner")),
    responses((status = 200, body = DeletedBudgetView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "The owner has no budget of its own", body = ErrorBody)))]
pub async fn delete_budget(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(owner): Path<String>,
) -> Result<axum::Json<DeletedBudgetView>, ApiError> {
    if !budgets::delete(&state.pool, owner.trim()).await? {
        return Err(ApiError::NotFound("Budget"));
    }
    tracing::info!(by = %admin, %owner, "budget removed");
    Ok(axum::Json(DeletedBudgetView {
        success: true,
        owner,
        message: "Budget removed; the defaults apply".into(),
    }))
}

/// Set an API key's own budget (both limits; `null`: none of its own).
#[utoipa::path(put, path = "/api/v1/admin/keys/{id}/budget", tag = "admin", request_body = BudgetBody,
    params(("id" = String, Path, format = Uuid, description = "The key's id")),
    responses((status = 200, body = KeyView),
        (status = 400, description = "A limit that is not an amount from 0 (`validation_failed`)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody)))]
pub async fn set_key_budget(
    State(state): State<AppState>,
    Admin(admin): Admin,
    PathId(id): PathId<uuid::Uuid>,
    AppJson(body): AppJson<BudgetBody>,
) -> Result<axum::Json<KeyView>, ApiError> {
    let (per_day, per_month) = body.micros()?;
    let record = api_keys::set_budget(&state.pool, id, per_day, per_month)
        .await?
        .ok_or(ApiError::NotFound("API key"))?;
    // Cached identities carry the key's budget: every API process forgets this one.
    state.key_cache.changed(id).await;
    tracing::info!(by = %admin, key_id = %id, per_day, per_month, "key budget set");
    Ok(axum::Json(record.into()))
}
