//! FLUX.1 [schnell] on an OpenAI-compatible host (Together AI's API): the same path as OpenAI
//! (`POST /v1/images/generations`), told apart by its `model` (`black-forest-labs/...`). Serves
//! `black-forest-labs/FLUX.1-schnell` only (`crate::models::TOGETHER`); `black-forest-labs/FLUX.1-schnell-Free` is no
//! longer offered and, like any other unknown model, answers 404 in Together's error shape. Takes `width`/`height`
//! (multiples of 8, 64-2048), `steps` (1-12), `n` (1-4), `seed`, `response_format` (`url` | `base64`) and
//! `output_format` (`jpeg` | `png`); answers `{"id", "model", "object": "list", "data": [{"index", "type",
//! "url" | "b64_json"}]}`. A corrupt answer (the `corrupt_next` knob) is the same with `crate::knobs::CORRUPT_BYTES` in
//! place of every picture (base64, or served at the URL as `image/png` / `image/jpeg`).

use crate::Emulator;
use crate::knobs::{CORRUPT_BYTES, Fate};
use crate::picture::{Format, Picture};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::time::Duration;

pub const PROTOCOL: &str = "flux";
pub const MODEL_PREFIX: &str = "black-forest-labs/";
const FIELDS: [&str; 12] = [
    "model",
    "prompt",
    "width",
    "height",
    "steps",
    "n",
    "seed",
    "response_format",
    "output_format",
    "negative_prompt",
    "guidance_scale",
    "disable_safety_checker",
];
const HANG: Duration = Duration::from_secs(600);

fn error(status: StatusCode, message: &str, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

struct Valid {
    prompt: String,
    width: u32,
    height: u32,
    n: u32,
    seed: u64,
    b64: bool,
    jpeg: bool,
    model: String,
}

fn int(obj: &serde_json::Map<String, Value>, name: &str, default: u64) -> Option<u64> {
    match obj.get(name) {
        None | Some(Value::Null) => Some(default),
        Some(v) => v.as_u64(),
    }
}

fn validate(body: &[u8]) -> Result<Valid, Box<Response>> {
    let bad = |m: &str| Box::new(error(StatusCode::BAD_REQUEST, m, Some("invalid_request")));
    let value: Value = serde_json::from_slice(body).map_err(|_| bad("Invalid JSON body"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("The request body must be a JSON object"))?;
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(&format!(
            "Unrecognized request argument supplied: {unknown}"
        )));
    }
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !crate::models::TOGETHER.contains(&model.as_str()) {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            &format!("Unable to access model {model}."),
            Some("model_not_available"),
        )));
    }
    let prompt = obj
        .get("prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("prompt is required"))?;
    let dim = |name: &str| -> Result<u32, Box<Response>> {
        let v = int(obj, name, 1024).ok_or_else(|| bad(&format!("{name} must be an integer")))?;
        if !(64..=2048).contains(&v) || v % 8 != 0 {
            return Err(bad(&format!(
                "{name} must be a multiple of 8 between 64 and 2048"
            )));
        }
        u32::try_from(v).map_err(|_| bad(&format!("{name} is out of range")))
    };
    let (width, height) = (dim("width")?, dim("height")?);
    let steps = int(obj, "steps", 4).ok_or_else(|| bad("steps must be an integer"))?;
    if !(1..=12).contains(&steps) {
        return Err(bad("steps must be between 1 and 12"));
    }
    let n = int(obj, "n", 1).ok_or_else(|| bad("n must be an integer"))?;
    if !(1..=4).contains(&n) {
        return Err(bad("n must be between 1 and 4"));
    }
    let seed = int(obj, "seed", 0).ok_or_else(|| bad("seed must be a non-negative integer"))?;
    let b64 = match obj.get("response_format").and_then(Value::as_str) {
        None | Some("url") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(bad(&format!(
                "response_format must be 'url' or 'base64', got '{other}'"
            )));
        }
    };
    let jpeg = match obj.get("output_format").and_then(Value::as_str) {
        None | Some("jpeg") => true,
        Some("png") => false,
        Some(other) => {
            return Err(bad(&format!(
                "output_format must be 'jpeg' or 'png', got '{other}'"
            )));
        }
    };
    Ok(Valid {
        prompt: prompt.to_owned(),
        width,
        height,
        n: n as u32,
        seed,
        b64,
        jpeg,
        model,
    })
}

pub async fn generations(emu: &Emulator, headers: &HeaderMap, body: &[u8]) -> Response {
    let _flight = emu.begin(PROTOCOL);
    let response = answer(emu, headers, body).await;
    emu.record_status(PROTOCOL, response.status().as_u16());
    response
}

async fn answer(emu: &Emulator, headers: &HeaderMap, body: &[u8]) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    if !key.is_some_and(|k| emu.accepts_key(k)) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Invalid API key provided. You can find your API key at https://api.together.xyz/settings/api-keys.",
            Some("invalid_api_key"),
        );
    }
    let valid = match validate(body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let (fate, knobs) = emu.draw(PROTOCOL);
    if knobs.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    }
    let fate = fate.moderated_if_triggered(&valid.prompt);
    match fate {
        Fate::Hang => {
            tokio::time::sleep(HANG).await;
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "The emulator hung this request on purpose.",
                None,
            )
        }
        Fate::RateLimit => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "You have been rate limited. Please retry later.",
                Some("rate_limit_exceeded"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(knobs.retry_after_s));
            r
        }
        Fate::Error(402) => error(
            StatusCode::PAYMENT_REQUIRED,
            "Credit limit exceeded. Please add credits to continue.",
            Some("insufficient_credits"),
        ),
        Fate::Error(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(
                status,
                "The server had an error processing your request.",
                None,
            )
        }
        Fate::Moderate => error(
            StatusCode::BAD_REQUEST,
            "Image generation failed: NSFW content detected in the generated image. Try a different prompt.",
            None,
        ),
        Fate::Succeed | Fate::Corrupt => {
            let corrupt = fate == Fate::Corrupt;
            succeed(
                emu,
                valid,
                knobs.url_ttl_s,
                knobs.image_bytes,
                corrupt,
                headers,
            )
            .await
        }
    }
}

/// The answer's pictures; `corrupt`: each is `CORRUPT_BYTES` instead.
async fn succeed(
    emu: &Emulator,
    valid: Valid,
    url_ttl_s: u64,
    pad: u64,
    corrupt: bool,
    headers: &HeaderMap,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let mut data = Vec::new();
    for index in 0..valid.n {
        let (prompt, seed, w, h, jpeg) = (
            valid.prompt.clone(),
            valid.seed + u64::from(index),
            valid.width,
            valid.height,
            valid.jpeg,
        );
        let format = if jpeg { Format::Jpeg } else { Format::Png };
        let rendered = tokio::task::spawn_blocking(move || {
            if corrupt {
                return Some(CORRUPT_BYTES.to_vec());
            }
            let picture = Picture {
                quality: 85,
                ..Picture::new(&prompt, seed, w, h, format)
            };
            let bytes = crate::picture::render(&picture);
            (!bytes.is_empty()).then(|| crate::picture::pad(bytes, format, pad))
        })
        .await;
        let Ok(Some(bytes)) = rendered else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed", None);
        };
        let item = if valid.b64 {
            json!({"index": index, "type": "b64_json", "b64_json": base64::engine::general_purpose::STANDARD.encode(&bytes)})
        } else {
            let path = emu
                .files
                .put_with_ext(Bytes::from(bytes), url_ttl_s, format.ext());
            json!({"index": index, "type": "url", "url": format!("http://{host}{path}")})
        };
        data.push(item);
    }
    let id = format!("{:x}", rand::random::<u64>());
    axum::Json(json!({"id": id, "model": valid.model, "object": "list", "data": data}))
        .into_response()
}
