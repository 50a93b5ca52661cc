//! Extractors: JSON bodies and query strings whose rejections speak our error shape, the correlation id, and the
//! `Prefer` header of wait mode. The caller's identity is in `auth`.

use crate::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// `axum::Json`, but a bad body is a `validation_failed` (400), an oversized one a 413, in our shape.
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Boxed: an extractor's future is part of the handler's, which a waiting request holds for its whole wait.
        match Box::pin(axum::Json::<T>::from_request(req, state)).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
                JsonRejection::JsonDataError(e) => {
                    ApiError::InvalidBody(format!("Invalid request body: {}", cause(&e)))
                }
                JsonRejection::JsonSyntaxError(e) => {
                    ApiError::InvalidBody(format!("Malformed JSON: {}", cause(&e)))
                }
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge(crate::config::MAX_BODY_BYTES)
                }
                other => ApiError::InvalidBody(other.body_text()),
            }),
        }
    }
}

/// What went wrong with a body, without axum's own preamble ("Failed to parse the request body as JSON: ..."), which
/// would say again what our prefix says.
fn cause(rejection: &dyn std::error::Error) -> String {
    rejection
        .source()
        .map_or_else(|| rejection.to_string(), ToString::to_string)
}

/// An id type a path names, and what it is called when no such thing exists (`Job not found`).
pub trait PathResource: std::str::FromStr {
    const WHAT: &'static str;
}

impl PathResource for imagegen_shared::domain::JobId {
    const WHAT: &'static str = "Job";
}

impl PathResource for imagegen_shared::domain::BatchId {
    const WHAT: &'static str = "Batch";
}

impl PathResource for imagegen_shared::domain::ImageId {
    const WHAT: &'static str = "Image";
}

/// API keys are named by a bare uuid.
impl PathResource for uuid::Uuid {
    const WHAT: &'static str = "API key";
}

/// The `{id}` of a path, parsed: an id that is not even well formed names nothing, so it is a 404 in our shape.
pub struct PathId<T>(pub T);

impl<S, T> FromRequestParts<S> for PathId<T>
where
    T: PathResource + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::NotFound(T::WHAT))?;
        raw.parse()
            .map(Self)
            .map_err(|_| ApiError::NotFound(T::WHAT))
    }
}

/// `axum::extract::Query`, but a query string that does not parse is a `validation_failed` (400) in our shape,
/// naming the parameter, rather than axum's plain-text rejection.
pub struct AppQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AppQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| ApiError::InvalidBody(rejection.body_text()))
    }
}

/// The request's correlation id, set by the middleware before any handler runs.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CorrelationId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CorrelationId>()
            .cloned()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("correlation id middleware missing")))
    }
}

/// `Cancel-After: <seconds>`: the job is canceled if it has not started by then.
pub fn cancel_after(headers: &HeaderMap) -> Result<Option<u32>, ApiError> {
    let Some(value) = headers.get("cancel-after") else {
        return Ok(None);
    };
    let max = imagegen_shared::domain::request::MAX_DEADLINE_SECS;
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|n| (1..=max).contains(n))
        .and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::InvalidBody(format!(
                "Cancel-After must be a whole number of seconds from 1 to {max}"
            ))
        })
}

/// What a client asked for in `Prefer` (RFC 7240): `respond-async`, or `wait=N` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitPreference {
    RespondAsync,
    Wait(Option<u64>),
}

impl WaitPreference {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut wait = None;
        for value in headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for token in value.split(',').map(str::trim) {
                let lower = token.to_ascii_lowercase();
                if lower == "respond-async" {
                    return WaitPreference::RespondAsync;
                }
                if let Some(n) = lower
                    .strip_prefix("wait=")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                {
                    wait = Some(n);
                }
            }
        }
        WaitPreference::Wait(wait)
    }

    /// How long to hold the request: the client's wish, else the default, never above the cap.
    pub fn duration(self, default: Duration, cap: Duration) -> Option<Duration> {
        match self {
            WaitPreference::RespondAsync => None,
            WaitPreference::Wait(secs) => {
                Some(secs.map(Duration::from_secs).unwrap_or(default).min(cap))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AppJson;
    use crate::error::ApiError;
    use axum::extract::FromRequest;

    async fn body_error(body: &'static str) -> String {
        let req = axum::http::Request::post("/")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .expect("request");
        match AppJson::<std::collections::BTreeMap<String, u32>>::from_request(req, &()).await {
            Err(ApiError::InvalidBody(message)) => message,
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("{body} was accepted"),
        }
    }

    #[tokio::test]
    async fn body_errors_say_what_is_wrong_once() {
        let malformed = body_error("{nope").await;
        assert!(malformed.starts_with("Malformed JSON: "), "{malformed}");
        assert!(malformed.contains("line 1 column 2"), "{malformed}");
        let invalid = body_error(r#"{"n": "x"}"#).await;
        assert!(invalid.starts_with("Invalid request body: "), "{invalid}");
        assert!(invalid.contains("invalid type"), "{invalid}");
        for message in [malformed, invalid] {
            assert!(!message.contains("Failed to"), "{message}");
            assert!(!message.contains("request body as JSON"), "{message}");
        }
    }
    use super::*;
    use axum::http::HeaderValue;

    fn prefer(v: &str) -> WaitPreference {
        let mut h = HeaderMap::new();
        h.insert("prefer", HeaderValue::from_str(v).expect("header"));
        WaitPreference::from_headers(&h)
    }

    #[test]
    fn parses_prefer() {
        let d = Duration::from_secs(60);
        let cap = Duration::from_secs(300);
        assert_eq!(
            WaitPreference::from_headers(&HeaderMap::new()).duration(d, cap),
            Some(d)
        );
        assert_eq!(
            prefer("wait=5").duration(d, cap),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            prefer("handling=lenient, wait=1000").duration(d, cap),
            Some(cap)
        );
        assert_eq!(
            prefer("respond-async, wait=10"),
            WaitPreference::RespondAsync
        );
        assert_eq!(prefer("wait=abc").duration(d, cap), Some(d));
    }
}
