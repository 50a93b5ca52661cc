//! The OpenAI Images API, `POST /v1/images/generations`, for the GPT image models OpenAI serves today
//! (`crate::models::OPENAI`: gpt-image-2 and its snapshot, the 2.5 and 2.6 sunburst/flare series, and until
//! 2026-12-01 gpt-image-1-mini, gpt-image-1.5 and chatgpt-image-latest). Retired (dall-e-2, dall-e-3, gpt-image-1)
//! and unknown models answer 404 `model_not_found`, as does a request without `model` (OpenAI's default is
//! dall-e-2). Fields, answer, usage and streaming are `crate::gpt_image`'s. Auth (401 `invalid_api_key`), the
//! knobs' 429s, 5xx, hangs and content-policy refusals, and the `x-request-id` / `openai-processing-ms` headers
//! are as the real API's; the `corrupt_next` knob answers a charged 200 whose pictures are not images. Together's
//! FLUX models share the path and are routed to `crate::flux` by their `model`.

use crate::Emulator;
use crate::gpt_image;
use crate::knobs::Fate;
use crate::models::{self, Family, ImageModel, Lookup};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};

pub const PROTOCOL: &str = "openai";
/// A hung request is held this long (clients time out well before).
const HANG: Duration = Duration::from_secs(600);
pub const SAFETY_MESSAGE: &str = "Your request was rejected as a result of our safety system. Your prompt may contain text that is not allowed by our safety system.";
const SAFETY_REVISED_MESSAGE: &str = "Your request was rejected as a result of our safety system. Image descriptions generated from your prompt may contain text that is not allowed by our safety system. If you believe this was done in error, your request may succeed if retried, or by adjusting your prompt.";

pub fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn invalid(message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
        code,
    )
}

/// Rejections travel boxed: a `Response` is large and the happy path should not pay for it.
fn bad(message: &str, param: Option<&str>, code: Option<&str>) -> Box<Response> {
    Box::new(invalid(message, param, code))
}

fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

fn check_auth(emu: &Emulator, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = key else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username. You can obtain an API key from https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
            None,
        )));
    };
    if emu.accepts_key(key) {
        return Ok(());
    }
    Err(Box::new(error(
        StatusCode::UNAUTHORIZED,
        &format!(
            "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
            mask(key)
        ),
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    )))
}

/// The body as a JSON object, or OpenAI's 400 for anything else.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Box<Response>> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        bad("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)", None, None)
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(bad("The request body must be a JSON object.", None, None)),
    }
}

/// OpenAI's 404 for a model it does not serve (unknown, retired, or DALL-E, which the emulator no longer speaks).
pub(crate) fn model_not_found(id: &str) -> Box<Response> {
    Box::new(error(
        StatusCode::NOT_FOUND,
        &format!("The model `{id}` does not exist or you do not have access to it."),
        "invalid_request_error",
        None,
        Some("model_not_found"),
    ))
}

/// The model a request names. Without `model`, OpenAI picks dall-e-2, or gpt-image-1 when a GPT-only field is
/// present: both retired, so both answer 404.
fn resolve_model(emu: &Emulator, obj: &Map<String, Value>) -> Result<ImageModel, Box<Response>> {
    let id = match obj.get("model") {
        None | Some(Value::Null) => {
            let gpt_only = crate::gpt_image::GPT_ONLY_FIELDS
                .iter()
                .any(|f| obj.get(*f).is_some_and(|v| !v.is_null()));
            if gpt_only { "gpt-image-1" } else { "dall-e-2" }
        }
        Some(Value::String(m)) => m.as_str(),
        Some(_) => {
            return Err(bad(
                "Invalid type for 'model': expected a string.",
                Some("model"),
                Some("invalid_type"),
            ));
        }
    };
    match models::lookup(models::OPENAI, id, emu.today()) {
        Lookup::Serves(m) if m.family != Family::DallE => Ok(m),
        _ => Err(model_not_found(id)),
    }
}

/// Checks a request for the OpenAI API: the model first (404), then its fields (400).
fn validate(emu: &Emulator, body: &[u8]) -> Result<gpt_image::Request, Box<Response>> {
    let obj = parse_object(body)?;
    let model = resolve_model(emu, &obj)?;
    gpt_image::validate(&obj, &model, gpt_image::Host::OpenAi)
}

fn request_id() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
}

fn with_openai_headers(mut response: Response, request_id: &str, started: Instant) -> Response {
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    h.insert("openai-version", HeaderValue::from_static("2020-10-01"));
    h.insert("openai-organization", HeaderValue::from_static("emulator"));
    h.insert(
        "openai-processing-ms",
        HeaderValue::from(started.elapsed().as_millis() as u64),
    );
    response
}

pub async fn generations(State(emu): State<Emulator>, headers: HeaderMap, body: Bytes) -> Response {
    // Flux hosts share this path; their model names tell them apart.
    if serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("model")
                .and_then(Value::as_str)
                .map(|m| m.starts_with(crate::flux::MODEL_PREFIX))
        })
        .unwrap_or(false)
    {
        return crate::flux::generations(&emu, &headers, &body).await;
    }
    let started = Instant::now();
    let arrived_us = crate::unix_micros();
    let _flight = emu.begin(PROTOCOL);
    let id = request_id();
    let response = answer(&emu, &headers, &body, None).await;
    let response = with_openai_headers(response, &id, started);
    emu.record_status(PROTOCOL, response.status().as_u16());
    emu.record_timeline(crate::TimelineEntry {
        protocol: PROTOCOL,
        correlation_id: headers
            .get("x-correlation-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        arrived_us,
        answered_us: crate::unix_micros(),
    });
    response
}

/// `POST /v1/images/edits`: the form's files checked (`gpt_image_edit`), then answered as a generation of its
/// fields whose pictures derive from the inputs.
pub async fn edits(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    multipart: axum::extract::Multipart,
) -> Response {
    let started = Instant::now();
    let _flight = emu.begin(PROTOCOL);
    let id = request_id();
    let response = match check_auth(&emu, &headers) {
        Err(r) => *r,
        Ok(()) => match crate::gpt_image_edit::read_form(multipart).await {
            Err(r) => *r,
            Ok(mut form) => match crate::gpt_image_edit::check(&mut form) {
                Err(r) => *r,
                Ok(inputs) => {
                    emu.record_edit(inputs.record(
                        PROTOCOL,
                        correlation_id(&headers),
                        &form.fields,
                    ));
                    let body = Value::Object(form.fields).to_string();
                    answer(&emu, &headers, body.as_bytes(), Some(&inputs)).await
                }
            },
        },
    };
    let response = with_openai_headers(response, &id, started);
    emu.record_status(PROTOCOL, response.status().as_u16());
    response
}

pub(crate) fn correlation_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn answer(
    emu: &Emulator,
    headers: &HeaderMap,
    body: &[u8],
    edit: Option<&crate::gpt_image_edit::Inputs>,
) -> Response {
    if let Err(r) = check_auth(emu, headers) {
        return *r;
    }
    let mut valid = match validate(emu, body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Some(edit) = edit {
        edit.apply(&mut valid);
    }
    let (fate, knobs) = emu.draw(PROTOCOL);
    if knobs.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    }
    let lower = valid.prompt.to_lowercase();
    let fate = fate.moderated_if_triggered(&lower);
    match fate {
        Fate::Hang => {
            tokio::time::sleep(HANG).await;
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "The emulator hung this request on purpose.",
                "server_error",
                None,
                None,
            )
        }
        Fate::RateLimit => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit exceeded for images per minute in organization org-emulator. Limit: 5/1min. Current: 6/1min. Please visit https://platform.openai.com/docs/guides/rate-limits to learn how to increase your rate limit.",
                "requests",
                None,
                Some("rate_limit_exceeded"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(knobs.retry_after_s));
            r
        }
        Fate::Error(503) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
            None,
        ),
        Fate::Error(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = if status.is_server_error() {
                "The server had an error while processing your request. Sorry about that!"
                    .to_owned()
            } else {
                format!("The emulator was told to answer HTTP {}.", status.as_u16())
            };
            let kind = if status.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            };
            error(status, &message, kind, None, None)
        }
        Fate::Moderate => {
            let message = if lower.contains("emulator-moderate-revised") {
                SAFETY_REVISED_MESSAGE
            } else {
                SAFETY_MESSAGE
            };
            invalid(message, None, Some("content_policy_violation"))
        }
        Fate::Succeed | Fate::Corrupt => {
            let corrupt = fate == Fate::Corrupt;
            if valid.stream {
                gpt_image::stream(valid, &knobs, corrupt)
            } else {
                gpt_image::answer(&valid, &knobs, None, corrupt).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keys_like_openai() {
        assert_eq!(mask("sk-test-emulator-key"), "sk-...-key");
        assert_eq!(mask("short"), "*****");
    }
}
