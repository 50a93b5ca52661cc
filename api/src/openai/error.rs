//! Errors on the OpenAI-compatible surface (`/v1/...`) in OpenAI's shape, `{"error": {"message", "type", "param",
//! "code"}}`, with the status codes OpenAI uses, so each OpenAI SDK raises its own exception class
//! (`BadRequestError` 400, `AuthenticationError` 401, `PermissionDeniedError` 403, `NotFoundError` 404,
//! `RateLimitError` 429, `InternalServerError` 5xx). The same `ApiError`s as the rest of the API produce them: the
//! request middleware renders a `/v1` path's errors here instead of in the seed's shape.

use crate::error::PendingError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Paths answered in OpenAI's shapes.
pub fn is_openai_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiError,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiError {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `rate_limit_error`,
    /// `insufficient_quota` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    pub code: Option<String>,
}

/// Our code and status as OpenAI would answer them: a safety refusal is 400 `content_policy_violation`, a spent
/// budget 429 `insufficient_quota` (OpenAI's own answer when an account's quota is spent), a retired model with no
/// replacement 404 `model_not_found`.
fn translate(status: StatusCode, code: &str) -> (StatusCode, String) {
    match (status.as_u16(), code) {
        (_, "content_policy_violation" | "content_blocked") => {
            (StatusCode::BAD_REQUEST, "content_policy_violation".into())
        }
        (_, "budget_exceeded") => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota".into()),
        (_, "model_retired") => (StatusCode::NOT_FOUND, "model_not_found".into()),
        (401, _) => (status, "invalid_api_key".into()),
        (429, _) => (status, "rate_limit_exceeded".into()),
        _ => (status, code.to_owned()),
    }
}

fn kind(status: StatusCode, code: &str) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 if code == "insufficient_quota" => "insufficient_quota",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

/// Renders a pending error of a `/v1` request; the caller keeps the original headers (Retry-After, ...).
pub fn render(status: StatusCode, pending: &PendingError) -> Response {
    let (status, _) = translate(status, &pending.code);
    (status, Json(body(status, pending))).into_response()
}

/// The error body (also sent as a streamed request's `error` event).
pub fn body(status: StatusCode, pending: &PendingError) -> OpenAiErrorBody {
    let (status, code) = translate(status, &pending.code);
    let mut message = pending.message.clone();
    if let Some(job) = pending.job_id {
        message.push_str(&format!(" (job {job})"));
    }
    OpenAiErrorBody {
        error: OpenAiError {
            kind: kind(status, &code).to_owned(),
            message,
            param: pending.details.first().map(|d| d.field.clone()),
            code: Some(code),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_openai() {
        let cases = [
            (400, "validation_failed", 400, "invalid_request_error"),
            (
                422,
                "content_policy_violation",
                400,
                "invalid_request_error",
            ),
            (402, "budget_exceeded", 429, "insufficient_quota"),
            (429, "rate_limited", 429, "rate_limit_error"),
            (401, "authentication_required", 401, "authentication_error"),
            (403, "forbidden", 403, "permission_error"),
            (410, "model_retired", 404, "invalid_request_error"),
            (502, "provider_error", 502, "server_error"),
        ];
        for (status, code, want_status, want_kind) in cases {
            let (s, c) = translate(StatusCode::from_u16(status).expect("status"), code);
            assert_eq!(
                (s.as_u16(), kind(s, &c)),
                (want_status, want_kind),
                "{code}"
            );
        }
    }
}
