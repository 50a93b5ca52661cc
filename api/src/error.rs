//! `ApiError` is the only error that becomes a response. It renders the seed's shape
//! `{"success": false, "error", "message", "correlation_id"}`; the correlation id is filled in by the request
//! middleware (see `middleware::finish_errors`), which also puts every other error response (a 405 from the router,
//! a rejection from an extractor) into the same shape.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imagegen_shared::db::DbError;
use imagegen_shared::domain::{FieldError, JobId, ValidationErrors};
use imagegen_shared::queue::QueueError;
use serde::Serialize;
use utoipa::ToSchema;

/// Seconds a client should wait before retrying when a dependency is down.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Validation(ValidationErrors),
    #[error("{0}")]
    InvalidBody(String),
    #[error("Request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// An edit input over a byte limit (413); `part` names it (`image[1]`, `mask`) when one part is.
    #[error("{message}")]
    InputTooLarge {
        message: String,
        part: Option<String>,
    },
    #[error("Request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("The prompt was blocked by content moderation")]
    ContentBlocked { job_id: JobId },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    /// A webhook delivery a dispatcher is sending right now (409 `delivery_in_flight`).
    #[error("This delivery is being sent right now; replay it once that attempt ends")]
    DeliveryInFlight,
    #[error("This Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    #[error("{0}")]
    Unavailable(String),
    /// A job ended without images; carries its id so the client can look it up.
    #[error("{message}")]
    JobUnsuccessful {
        status: StatusCode,
        code: String,
        message: String,
        job_id: JobId,
    },
    /// Over a per-owner limit: 429 with Retry-After and the RateLimit-* headers.
    #[error("{message}")]
    RateLimited {
        message: String,
        limit: u64,
        remaining: u64,
        reset_secs: u64,
    },
    /// No usable credentials: 401 with `WWW-Authenticate`. The message says what was wrong, never the credential.
    #[error("{message}")]
    Unauthorized {
        message: String,
        invalid_token: bool,
    },
    /// Authenticated, but without the role or scope the endpoint needs: 403 with `insufficient_scope`.
    #[error("{0}")]
    Forbidden(String),
    /// The request's header section is larger than the limit (431).
    #[error("Request headers are larger than the limit of {0} bytes")]
    HeadersTooLarge(usize),
    /// The model asked for is retired and no replacement serves it here (MODEL_ALIASES=none, or none named): 410.
    #[error("{0}")]
    ModelRetired(imagegen_shared::domain::ResolveError),
    /// A budget is spent: 402 `budget_exceeded` with the limit, what is spent and when it resets.
    #[error("{message}")]
    BudgetExceeded {
        message: String,
        detail: BudgetDetail,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<imagegen_shared::domain::ResolveError> for ApiError {
    fn from(e: imagegen_shared::domain::ResolveError) -> Self {
        match e {
            imagegen_shared::domain::ResolveError::Invalid(errors) => ApiError::Validation(errors),
            retired => ApiError::ModelRetired(retired),
        }
    }
}

/// The error body (and its OpenAPI schema).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"success": false, "error": "validation_failed", "message": "Prompt cannot be empty",
    "correlation_id": "abc123-def456-ghi789", "details": [{"field": "prompt", "message": "Prompt cannot be empty"}]}))]
pub struct ErrorBody {
    pub success: bool,
    pub error: String,
    pub message: String,
    pub correlation_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub job_id: Option<JobId>,
    /// With `budget_exceeded`: which budget, its limit, what is spent and when it resets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetDetail>,
}

/// The budget a submission ran into.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BudgetDetail {
    /// `owner` (the caller's budget) or `api_key` (the presented key's own).
    pub scope: &'static str,
    pub period: imagegen_shared::budget::Period,
    pub limit_usd: f64,
    /// Spent and reserved by jobs still running, in this window.
    pub spent_usd: f64,
    /// When the window ends (midnight UTC, or the first of next month).
    pub resets_at: chrono::DateTime<chrono::Utc>,
}

/// An error on its way out; the middleware turns it into an `ErrorBody` once it knows the correlation id.
#[derive(Debug, Clone)]
pub struct PendingError {
    pub code: String,
    pub message: String,
    pub details: Vec<FieldError>,
    pub job_id: Option<JobId>,
    pub budget: Option<BudgetDetail>,
}

impl PendingError {
    pub fn render(self, status: StatusCode, correlation_id: &str) -> Response {
        let body = ErrorBody {
            success: false,
            error: self.code,
            message: self.message,
            correlation_id: correlation_id.to_owned(),
            details: self.details,
            job_id: self.job_id,
            budget: self.budget,
        };
        (status, Json(body)).into_response()
    }
}

/// The code a bare status gets when something other than `ApiError` produced it.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "validation_failed",
        429 => "rate_limited",
        431 => "headers_too_large",
        402 => "budget_exceeded",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        s if s >= 500 => "internal_error",
        _ => "error",
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &str) {
        match self {
            ApiError::Validation(_) | ApiError::InvalidBody(_) => {
                (StatusCode::BAD_REQUEST, "validation_failed")
            }
            ApiError::PayloadTooLarge(_) | ApiError::InputTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::ContentBlocked { .. } => (StatusCode::BAD_REQUEST, "content_blocked"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "job_not_cancelable"),
            ApiError::DeliveryInFlight => (StatusCode::CONFLICT, "delivery_in_flight"),
            ApiError::IdempotencyMismatch => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            ApiError::JobUnsuccessful { status, code, .. } => (*status, code.as_str()),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unauthorized { invalid_token, .. } => (
                StatusCode::UNAUTHORIZED,
                if *invalid_token {
                    "invalid_token"
                } else {
                    "authentication_required"
                },
            ),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            ApiError::ModelRetired(_) => (StatusCode::GONE, "model_retired"),
            ApiError::BudgetExceeded { .. } => (StatusCode::PAYMENT_REQUIRED, "budget_exceeded"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

/// The HTTP status of a job that failed with `code`, in wait mode.
pub fn failure_status(code: &imagegen_shared::domain::FailureCode) -> StatusCode {
    use imagegen_shared::domain::FailureCode;
    match code {
        FailureCode::ContentBlocked => StatusCode::BAD_REQUEST,
        FailureCode::ContentPolicyViolation => StatusCode::UNPROCESSABLE_ENTITY,
        FailureCode::StorageError => StatusCode::INTERNAL_SERVER_ERROR,
        // A URL input the worker found unusable: the request was well formed, its image was not.
        FailureCode::InvalidInput => StatusCode::UNPROCESSABLE_ENTITY,
        FailureCode::ProviderNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
        FailureCode::DeadlineExceeded | FailureCode::Canceled => StatusCode::CONFLICT,
        FailureCode::ProviderError | FailureCode::Unknown(_) => StatusCode::BAD_GATEWAY,
    }
}

/// An edit's inputs refused: 413 over a byte limit, else 400 with the part named in `details`.
impl From<imagegen_shared::edit_inputs::EditInputError> for ApiError {
    fn from(e: imagegen_shared::edit_inputs::EditInputError) -> Self {
        let part = e.part();
        if e.too_large() {
            ApiError::InputTooLarge {
                message: e.to_string(),
                part,
            }
        } else {
            ApiError::Validation(ValidationErrors::one(
                part.as_deref().unwrap_or("image"),
                e.to_string(),
            ))
        }
    }
}

impl From<crate::edit_upload::UploadError> for ApiError {
    fn from(e: crate::edit_upload::UploadError) -> Self {
        use crate::edit_upload::UploadError;
        let part = match &e {
            UploadError::PartTooLarge { part, .. } => Some(part.clone()),
            UploadError::TooManyImages => Some("image".to_owned()),
            UploadError::TwoMasks => Some("mask".to_owned()),
            UploadError::FieldNotText(field) => Some(field.clone()),
            _ => None,
        };
        if e.too_large() {
            ApiError::InputTooLarge {
                message: e.to_string(),
                part,
            }
        } else {
            match part {
                Some(p) => ApiError::Validation(ValidationErrors::one(&p, e.to_string())),
                None => ApiError::InvalidBody(e.to_string()),
            }
        }
    }
}

impl From<imagegen_shared::config::edits::ImageUrlError> for ApiError {
    fn from(e: imagegen_shared::config::edits::ImageUrlError) -> Self {
        use imagegen_shared::config::edits::ImageUrlError;
        let part = match &e {
            ImageUrlError::Invalid { part, .. } | ImageUrlError::Refused { part, .. } => *part,
        };
        ApiError::Validation(ValidationErrors::one(&part.to_string(), e.to_string()))
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::Unavailable("The database is unavailable; try again shortly".into())
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        tracing::warn!(error = %e, "queue unavailable");
        ApiError::Unavailable("The job queue is unavailable; try again shortly".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let code = code.to_owned();
        let message = match &self {
            // Never show internals to clients; the cause chain goes to the log with the correlation id.
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "An internal error occurred".to_owned()
            }
            other => other.to_string(),
        };
        let details = match &self {
            ApiError::Validation(errors) => errors.0.clone(),
            ApiError::ModelRetired(e) => vec![FieldError {
                field: "model".into(),
                message: e.to_string(),
            }],
            ApiError::InputTooLarge {
                message,
                part: Some(part),
            } => vec![FieldError {
                field: part.clone(),
                message: message.clone(),
            }],
            _ => Vec::new(),
        };
        let job_id = match &self {
            ApiError::ContentBlocked { job_id } | ApiError::JobUnsuccessful { job_id, .. } => {
                Some(*job_id)
            }
            _ => None,
        };
        let mut response = status.into_response();
        if let ApiError::RateLimited {
            limit,
            remaining,
            reset_secs,
            ..
        } = &self
        {
            let h = response.headers_mut();
            h.insert(header::RETRY_AFTER, HeaderValue::from(*reset_secs));
            h.insert("ratelimit-limit", HeaderValue::from(*limit));
            h.insert("ratelimit-remaining", HeaderValue::from(*remaining));
            h.insert("ratelimit-reset", HeaderValue::from(*reset_secs));
        }
        if let ApiError::Unauthorized { invalid_token, .. } = &self {
            // RFC 6750: no error attribute when no credentials were sent.
            let challenge = if *invalid_token {
                r#"Bearer realm="imagegen", error="invalid_token""#
            } else {
                r#"Bearer realm="imagegen""#
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if matches!(self, ApiError::Forbidden(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="imagegen", error="insufficient_scope""#),
            );
        }
        if matches!(self, ApiError::Unavailable(_)) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
            );
        }
        let budget = match &self {
            ApiError::BudgetExceeded { detail, .. } => Some(detail.clone()),
            _ => None,
        };
        response.extensions_mut().insert(PendingError {
            code,
            message,
            details,
            job_id,
            budget,
        });
        response
    }
}

#[cfg(test)]
mod edit_error_tests {
    use super::*;
    use imagegen_shared::edit_inputs::{EditInputError, Part};

    fn answer(e: ApiError) -> (u16, String, Vec<String>) {
        let r = e.into_response();
        let pending = r.extensions().get::<PendingError>().expect("pending");
        (
            r.status().as_u16(),
            pending.code.clone(),
            pending.details.iter().map(|d| d.field.clone()).collect(),
        )
    }

    #[test]
    fn edit_input_refusals_are_4xx_naming_the_part() {
        let (status, code, fields) = answer(
            EditInputError::MaskSizeMismatch {
                mask_width: 1,
                mask_height: 2,
                width: 3,
                height: 4,
            }
            .into(),
        );
        assert_eq!((status, code.as_str()), (400, "validation_failed"));
        assert_eq!(fields, ["mask"]);
        let (status, _, fields) = answer(
            EditInputError::UnsupportedFormat {
                part: Part::Image(2),
            }
            .into(),
        );
        assert_eq!((status, fields), (400, vec!["image[2]".to_owned()]));
        let (status, code, fields) = answer(
            EditInputError::ImageTooLarge {
                part: Part::Image(0),
                bytes: 10,
                limit: 5,
            }
            .into(),
        );
        assert_eq!((status, code.as_str()), (413, "payload_too_large"));
        assert_eq!(fields, ["image[0]"]);
        let (status, _, _) =
            answer(crate::edit_upload::UploadError::RequestTooLarge { limit: 5 }.into());
        assert_eq!(status, 413);
        let (status, _, fields) = answer(
            imagegen_shared::config::edits::ImageUrlError::Invalid {
                part: Part::Image(1),
                message: "x".into(),
            }
            .into(),
        );
        assert_eq!((status, fields), (400, vec!["image[1]".to_owned()]));
    }
}
