//! Webhooks an owner manages: registered endpoints (`/api/v1/webhooks`, secret shown once, rotation), the secret
//! that signs the `webhook_url` of single requests (`/api/v1/webhooks/secret`), and the deliveries with their
//! attempts, which can be replayed (`/api/v1/webhooks/deliveries`).

use super::base_url;
use crate::auth::Owner;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{AppJson, AppQuery};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chrono::{DateTime, Utc};
use imagegen_shared::db::webhooks::{
    self, AttemptRecord, DeliveryFilter, DeliveryRecord, EndpointRecord,
};
use imagegen_shared::domain::{BatchId, JobId, ValidationErrors};
use imagegen_shared::webhooks::WebhookSecret;
use imagegen_shared::webhooks::target::{check_events, check_url};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/webhooks",
            post(create_endpoint).get(list_endpoints),
        )
        .route("/api/v1/webhooks/{id}", delete(delete_endpoint))
        .route("/api/v1/webhooks/{id}/rotate", post(rotate_endpoint))
        .route("/api/v1/webhooks/secret", get(get_secret))
        .route("/api/v1/webhooks/secret/rotate", post(rotate_secret))
        .route("/api/v1/webhooks/deliveries", get(list_deliveries))
        .route(
            "/api/v1/webhooks/deliveries/{id}/replay",
            post(replay_delivery),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Where to POST: https (http only where the service allows it, for loopback).
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event types it receives (default: the ends of jobs and batches).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    #[schema(value_type = String, format = Uuid)]
    pub id: uuid::Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    /// Shown once, when the endpoint is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Set when the receiver answered 410 Gone: nothing more is sent.
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
}

impl EndpointView {
    fn of(record: EndpointRecord, show_secret: bool) -> Self {
        Self {
            id: record.id,
            url: record.url,
            events: record.events.0,
            description: record.description,
            secret: show_secret.then_some(record.secret),
            created_at: record.created_at,
            disabled_at: record.disabled_at,
            disabled_reason: record.disabled_reason,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointListView {
    pub webhooks: Vec<EndpointView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretView {
    /// `whsec_` and base64: verify deliveries with it (any Standard Webhooks library).
    pub secret: String,
    /// After a rotation: the old secret also signs until then (two signatures per delivery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status; absent when there was no answer.
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    /// `webhook-id`: the same on every attempt and replay.
    pub message_id: String,
    pub event_type: String,
    pub job_id: Option<JobId>,
    pub batch_id: Option<BatchId>,
    /// The registered endpoint; absent for a request's own `webhook_url`.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub endpoint_id: Option<uuid::Uuid>,
    pub url: String,
    /// `pending`, `succeeded`, `failed` or `disabled`.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub attempt_log: Vec<AttemptView>,
}

impl DeliveryView {
    fn of(d: DeliveryRecord, attempts: Vec<AttemptRecord>) -> Self {
        Self {
            id: d.id,
            message_id: d.message_id,
            event_type: d.event_type,
            job_id: d.job_id,
            batch_id: d.batch_id,
            endpoint_id: d.endpoint_id,
            url: d.url,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
            attempt_log: attempts
                .into_iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    at: a.at,
                    status_code: a.status_code,
                    error: a.error,
                    duration_ms: a.duration_ms,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryListView {
    pub deliveries: Vec<DeliveryView>,
}

fn parse_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("Webhook"))
}

fn overlap_secs(state: &AppState) -> f64 {
    state.webhooks.secret_overlap.as_secs_f64()
}

/// Register an endpoint for every job of yours; its secret is shown only in this answer.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = CreateEndpoint,
    responses(
        (status = 201, description = "Registered; keep `secret` to verify deliveries", body = EndpointView),
        (status = 400, description = "A bad URL or event type (`validation_failed`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not sent as `application/json` (`unsupported_media_type`)", body = ErrorBody),
    ))]
pub async fn create_endpoint(
    State(state): State<AppState>,
    Owner(owner): Owner,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    AppJson(body): AppJson<CreateEndpoint>,
) -> Result<Response, ApiError> {
    let mut errors = ValidationErrors::default();
    if let Err(e) = check_url(&body.url) {
        errors.push("url", e);
    } else if let Err(ApiError::Validation(e)) =
        crate::webhooks::check_scheme(&body.url, &state.webhooks, "url")
    {
        errors = e;
    }
    let events = check_events(body.events.as_deref())
        .map_err(|e| errors.push("events", e))
        .ok();
    if body
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 500)
    {
        errors.push("description", "must be at most 500 characters");
    }
    let Some(events) = events.filter(|_| errors.0.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let secret = WebhookSecret::generate();
    let link_base = base_url(&state, &headers, peer).base;
    let record = webhooks::create_endpoint(
        &state.pool,
        &owner,
        &body.url,
        &events,
        body.description.as_deref(),
        secret.as_str(),
        Some(&link_base),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(EndpointView::of(record, true)),
    )
        .into_response())
}

/// Your registered endpoints (secrets are never shown again).
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "Your endpoints, oldest first", body = EndpointListView)))]
pub async fn list_endpoints(
    State(state): State<AppState>,
    Owner(owner): Owner,
) -> Result<axum::Json<EndpointListView>, ApiError> {
    let webhooks = webhooks::list_endpoints(&state.pool, &owner)
        .await?
        .into_iter()
        .map(|e| EndpointView::of(e, false))
        .collect();
    Ok(axum::Json(EndpointListView { webhooks }))
}

/// Remove an endpoint (its pending deliveries go with it).
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, format = Uuid, description = "Endpoint id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such endpoint (for this caller)", body = ErrorBody),
    ))]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    if webhooks::delete_endpoint(&state.pool, &owner, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("Webhook"))
    }
}

/// Give an endpoint a new secret; the old one still signs for WEBHOOK_SECRET_OVERLAP_SECS.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate", tag = "webhooks",
    params(("id" = String, Path, format = Uuid, description = "Endpoint id")),
    responses(
        (status = 200, description = "The new secret (shown once)", body = SecretView),
        (status = 404, description = "No such endpoint (for this caller)", body = ErrorBody),
    ))]
pub async fn rotate_endpoint(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<axum::Json<SecretView>, ApiError> {
    let id = parse_id(&id)?;
    let secret = WebhookSecret::generate();
    let record = webhooks::rotate_endpoint(
        &state.pool,
        &owner,
        id,
        secret.as_str(),
        overlap_secs(&state),
    )
    .await?
    .ok_or(ApiError::NotFound("Webhook"))?;
    Ok(axum::Json(SecretView {
        secret: record.secret,
        previous_valid_until: record.previous_secret_until,
    }))
}

/// The secret that signs the `webhook_url` of your requests (made on first use).
#[utoipa::path(get, path = "/api/v1/webhooks/secret", tag = "webhooks",
    responses((status = 200, description = "Your signing secret", body = SecretView)))]
pub async fn get_secret(
    State(state): State<AppState>,
    Owner(owner): Owner,
) -> Result<axum::Json<SecretView>, ApiError> {
    let fresh = WebhookSecret::generate();
    let record = webhooks::owner_secret(&state.pool, &owner, fresh.as_str()).await?;
    Ok(axum::Json(SecretView {
        secret: record.secret,
        previous_valid_until: record.previous_secret_until.filter(|u| *u > Utc::now()),
    }))
}

/// A new secret for your requests' webhooks; the old one still signs for WEBHOOK_SECRET_OVERLAP_SECS.
#[utoipa::path(post, path = "/api/v1/webhooks/secret/rotate", tag = "webhooks",
    responses((status = 200, description = "The new secret", body = SecretView)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Owner(owner): Owner,
) -> Result<axum::Json<SecretView>, ApiError> {
    let fresh = WebhookSecret::generate();
    let record =
        webhooks::rotate_owner_secret(&state.pool, &owner, fresh.as_str(), overlap_secs(&state))
            .await?;
    Ok(axum::Json(SecretView {
        secret: record.secret,
        previous_valid_until: record.previous_secret_until,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only this job's deliveries.
    #[param(format = Uuid)]
    pub job_id: Option<String>,
    /// `pending`, `succeeded`, `failed` or `disabled`.
    pub status: Option<String>,
    /// 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// Your webhook deliveries, newest first, each with its attempts.
#[utoipa::path(get, path = "/api/v1/webhooks/deliveries", tag = "webhooks", params(DeliveriesQuery),
    responses(
        (status = 200, description = "Deliveries", body = DeliveryListView),
        (status = 400, description = "A bad filter (`validation_failed`)", body = ErrorBody),
    ))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Owner(owner): Owner,
    AppQuery(query): AppQuery<DeliveriesQuery>,
) -> Result<axum::Json<DeliveryListView>, ApiError> {
    let mut errors = ValidationErrors::default();
    let job_id = match query.job_id.as_deref().map(str::parse::<uuid::Uuid>) {
        None => None,
        Some(Ok(id)) => Some(JobId(id)),
        Some(Err(_)) => {
            errors.push("job_id", "must be a job id");
            None
        }
    };
    if let Some(status) = &query.status
        && !["pending", "succeeded", "failed", "disabled"].contains(&status.as_str())
    {
        errors.push("status", "must be pending, succeeded, failed or disabled");
    }
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        errors.push("limit", "must be 1 to 100");
    }
    if !errors.0.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = DeliveryFilter {
        job_id,
        status: query.status,
        limit,
    };
    let deliveries = webhooks::list_deliveries(&state.pool, &owner, &filter)
        .await?
        .into_iter()
        .map(|(d, a)| DeliveryView::of(d, a))
        .collect();
    Ok(axum::Json(DeliveryListView { deliveries }))
}

/// Send a delivery again, from the start of the retry schedule, with the same `webhook-id`.
#[utoipa::path(post, path = "/api/v1/webhooks/deliveries/{id}/replay", tag = "webhooks",
    params(("id" = String, Path, description = "Delivery id")),
    responses(
        (status = 202, description = "Queued to be sent again", body = DeliveryView),
        (status = 404, description = "No such delivery (for this caller)", body = ErrorBody),
        (status = 409, description = "It is being sent right now (`delivery_in_flight`); replay it once that attempt ends", body = ErrorBody),
    ))]
pub async fn replay_delivery(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let delivery = match webhooks::replay(&state.pool, &owner, &id).await? {
        webhooks::Replay::Queued(delivery) => *delivery,
        webhooks::Replay::InFlight => return Err(ApiError::DeliveryInFlight),
        webhooks::Replay::NotFound => return Err(ApiError::NotFound("Delivery")),
    };
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(DeliveryView::of(delivery, Vec::new())),
    )
        .into_response())
}
