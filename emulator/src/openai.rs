//! The OpenAI Images API for dall-e-3 (`POST /v1/images/generations`), as providers.md describes it: auth, the
//! validation errors and error body of the real API, `url` or `b64_json` answers, `revised_prompt`, request ids.

use crate::Emulator;
use crate::knobs::Fate;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub const PROTOCOL: &str = "openai";
const SIZES: [&str; 3] = ["1024x1024", "1792x1024", "1024x1792"];
const FIELDS: [&str; 8] = [
    "model",
    "prompt",
    "n",
    "size",
    "quality",
    "style",
    "response_format",
    "user",
];
const MAX_PROMPT: usize = 4000;
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

/// The parts of a valid request the answer depends on.
pub(crate) struct Valid {
    pub prompt: String,
    pub size: (u32, u32),
    pub b64: bool,
}

/// Checks a dall-e-3 body. Azure's deployments choose the model themselves, so there `model` is optional.
pub(crate) fn validate(body: &[u8], model_required: bool) -> Result<Valid, Box<Response>> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        bad("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.", None, None)
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("The request body must be a JSON object.", None, None))?;
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(
            &format!("Unrecognized request argument supplied: {unknown}"),
            None,
            None,
        ));
    }
    let str_field = |name: &str| obj.get(name).and_then(Value::as_str);
    match obj.get("model") {
        Some(Value::String(m)) if m == "dall-e-3" => {}
        None if !model_required => {}
        _ => {
            return Err(bad(
                "The emulator serves dall-e-3 only: set \"model\": \"dall-e-3\" (the API's default is dall-e-2).",
                Some("model"),
                None,
            ));
        }
    }
    let prompt = match obj.get("prompt") {
        Some(Value::String(p)) if !p.is_empty() => p.clone(),
        _ => return Err(bad("You must provide a prompt.", Some("prompt"), None)),
    };
    if prompt.chars().count() > MAX_PROMPT {
        return Err(bad(
            &format!(
                "'{}...' is too long - 'prompt'. Maximum length is {MAX_PROMPT} characters.",
                prompt.chars().take(20).collect::<String>()
            ),
            Some("prompt"),
            Some("string_above_max_length"),
        ));
    }
    match obj.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => {
            return Err(bad("You must provide n=1 for this model.", Some("n"), None));
        }
    }
    let size = match obj.get("size") {
        None | Some(Value::Null) => "1024x1024",
        Some(Value::String(s)) if SIZES.contains(&s.as_str()) => s.as_str(),
        Some(_) => {
            return Err(bad(
                "The size is not supported by this model.",
                Some("size"),
                Some("invalid_size"),
            ));
        }
    };
    let size = match size {
        "1792x1024" => (1792, 1024),
        "1024x1792" => (1024, 1792),
        _ => (1024, 1024),
    };
    if obj
        .get("quality")
        .is_some_and(|q| !matches!(q.as_str(), Some("standard" | "hd")))
    {
        return Err(bad(
            "Invalid value for 'quality': must be 'standard' or 'hd'.",
            Some("quality"),
            Some("invalid_value"),
        ));
    }
    if obj
        .get("style")
        .is_some_and(|s| !matches!(s.as_str(), Some("vivid" | "natural")))
    {
        return Err(bad(
            "Invalid value for 'style': must be 'vivid' or 'natural'.",
            Some("style"),
            Some("invalid_value"),
        ));
    }
    let b64 = match obj.get("response_format") {
        None | Some(Value::Null) => false,
        Some(_) if str_field("response_format") == Some("url") => false,
        Some(_) if str_field("response_format") == Some("b64_json") => true,
        Some(_) => {
            return Err(bad(
                "Invalid value for 'response_format': must be 'url' or 'b64_json'.",
                Some("response_format"),
                Some("invalid_value"),
            ));
        }
    };
    if obj.get("user").is_some_and(|u| !u.is_string()) {
        return Err(bad(
            "Invalid type for 'user': expected a string.",
            Some("user"),
            None,
        ));
    }
    Ok(Valid { prompt, size, b64 })
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
    let response = answer(&emu, &headers, &body).await;
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

async fn answer(emu: &Emulator, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Err(r) = check_auth(emu, headers) {
        return *r;
    }
    let valid = match validate(body, true) {
        Ok(v) => v,
        Err(r) => return *r,
    };
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
        Fate::Succeed => succeed(emu, valid, &knobs, headers).await,
    }
}

async fn succeed(
    emu: &Emulator,
    valid: Valid,
    knobs: &crate::knobs::Knobs,
    headers: &HeaderMap,
) -> Response {
    match render_item(emu, &valid, knobs, headers).await {
        Ok(item) => {
            axum::Json(json!({"created": crate::files::now_secs(), "data": [item]})).into_response()
        }
        Err(r) => *r,
    }
}

/// One `data` item: the picture as base64 or as a URL this emulator serves, with a revised prompt.
pub(crate) async fn render_item(
    emu: &Emulator,
    valid: &Valid,
    knobs: &crate::knobs::Knobs,
    headers: &HeaderMap,
) -> Result<Value, Box<Response>> {
    let url_ttl_s = knobs.url_ttl_s;
    let (w, h) = valid.size;
    let prompt = valid.prompt.clone();
    let pad = knobs.image_bytes;
    let png = match tokio::task::spawn_blocking(move || {
        crate::picture::pad_png(crate::picture::render_png(&prompt, 0, w, h), pad)
    })
    .await
    {
        Ok(png) => Bytes::from(png),
        Err(_) => {
            return Err(Box::new(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering failed",
                "server_error",
                None,
                None,
            )));
        }
    };
    let revised = format!(
        "{}, rendered as a detailed digital illustration with balanced composition",
        valid.prompt
    );
    let item = if valid.b64 {
        json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(&png), "revised_prompt": revised})
    } else {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1");
        let path = emu.files.put(png, url_ttl_s);
        json!({"url": format!("http://{host}{path}"), "revised_prompt": revised})
    };
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keys_like_openai() {
        assert_eq!(mask("sk-test-emulator-key"), "sk-...-key");
        assert_eq!(mask("short"), "*****");
    }

    #[test]
    fn validation_names_the_param() {
        let param = |body: &str| -> (u16, Option<String>) {
            match validate(body.as_bytes(), true) {
                Ok(_) => (200, None),
                Err(r) => (r.status().as_u16(), Some(format!("{:?}", r.status()))),
            }
        };
        assert_eq!(param(r#"{"model":"dall-e-3","prompt":"x"}"#).0, 200);
        assert_eq!(
            param(r#"{"model":"dall-e-3","prompt":"x","size":"512x512"}"#).0,
            400
        );
        assert_eq!(param(r#"{"model":"dall-e-3","prompt":"x","n":2}"#).0, 400);
        assert_eq!(param(r#"{"prompt":"x"}"#).0, 400);
        assert_eq!(
            param(r#"{"model":"dall-e-3","prompt":"x","colour":"red"}"#).0,
            400
        );
        assert_eq!(param("not json").0, 400);
    }
}
