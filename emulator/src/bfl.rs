//! Black Forest Labs' API: submit `POST /bfl/v1/{model}` (`x-key`) to one of the endpoints of
//! `crate::models::BFL`: FLUX.2 (`flux-2-pro`, `-max`, `-flex`, `-klein-4b`, `-klein-9b`: `width`/`height` multiples
//! of 16, each >= 64, at most 4 MP, default 1024x1024; `input_image` .. `input_image_8` accepted and ignored),
//! FLUX1.1 [pro] / FLUX.1 [pro] / [dev] (`width`/`height` multiples of 32 in 256..=1440, default 1024x768), and
//! FLUX1.1 [pro] Ultra / Kontext [pro] / [max] (`aspect_ratio` "W:H" between 21:9 and 9:21, default 1:1, about one
//! megapixel, e.g. 1024x1024 or 1248x832). Any other endpoint is 404 `{"detail": "Not Found"}`. `output_format` is
//! `jpeg` (BFL's default) or `png`.
//!
//! The submit answer is `{"id", "polling_url", "cost", "input_mp", "output_mp"}` (`cost` in credits from our
//! table in `crate::models`, deterministic per model and megapixels). Poll `GET /bfl/v1/get_result?id=` for
//! `Pending` (with `progress`) until `Ready` (with `result.sample`, a URL that expires after 10 minutes by default,
//! `result.seed`, `result.prompt` and timing), `Request Moderated`, `Content Moderated` or `Error`; unknown ids are
//! `Task not found`. FastAPI-style errors: 403 `{"detail": "Not authenticated"}`, 422 with a `detail` list, 429
//! above 24 active tasks, 402 without credits. A corrupt task (the `corrupt_next` knob, drawn at submission) answers
//! the submit with its `cost` as usual and polls to `Ready`, but its `sample` URL serves `crate::knobs::CORRUPT_BYTES`
//! (as `image/jpeg` or `image/png`).

use crate::Emulator;
use crate::knobs::{CORRUPT_BYTES, Fate};
use crate::models::{BflEndpoint, BflSizing, MEGAPIXEL};
use crate::picture::{Format, Picture};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub const PROTOCOL: &str = "bfl";
/// FLUX.2's pixel limit (4 MP).
const FLUX2_MAX_PIXELS: u64 = 4_194_304;
/// Reference image fields, counted for `input_mp` (their content is not looked at beyond a PNG/JPEG/WebP header).
const INPUT_IMAGES: [&str; 9] = [
    "input_image",
    "input_image_2",
    "input_image_3",
    "input_image_4",
    "input_image_5",
    "input_image_6",
    "input_image_7",
    "input_image_8",
    "image_prompt",
];
/// BFL allows this many unfinished tasks per account.
const MAX_ACTIVE: usize = 24;
/// BFL's result URLs live 10 minutes.
const SAMPLE_TTL_S: u64 = 600;

/// One submitted task; its outcome is drawn at submission and revealed once it is "ready".
pub struct Task {
    prompt: String,
    /// A digest of the reference images (an edit): the picture is drawn from it too, so an edit differs from a
    /// generation of the same prompt and seed, and from an edit of other images.
    inputs_digest: Option<String>,
    seed: u64,
    width: u32,
    height: u32,
    format: Format,
    ready_at: Instant,
    fate: Fate,
    /// Set once the task's outcome has been shown (it stops counting as active).
    result: Option<Value>,
}

fn detail(status: StatusCode, detail: Value) -> Response {
    (status, axum::Json(json!({ "detail": detail }))).into_response()
}

fn authorised(emu: &Emulator, headers: &HeaderMap) -> bool {
    headers
        .get("x-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .is_some_and(|k| !k.is_empty() && emu.accepts_key(k))
}

fn field_error_typed(field: &str, msg: &str, kind: &str) -> Response {
    detail(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!([{"loc": ["body", field], "msg": msg, "type": kind}]),
    )
}

fn field_error(field: &str, msg: &str) -> Response {
    detail(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!([{"loc": ["body", field], "msg": msg, "type": "value_error"}]),
    )
}

pub async fn submit(
    State(emu): State<Emulator>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    emu.count_request(PROTOCOL);
    let response = submit_inner(&emu, &model, &headers, &body);
    emu.record_status(PROTOCOL, response.status().as_u16());
    response
}

fn submit_inner(emu: &Emulator, model: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    if !authorised(emu, headers) {
        return detail(StatusCode::FORBIDDEN, json!("Not authenticated"));
    }
    let Some(endpoint) = crate::models::bfl_endpoint(model) else {
        return detail(StatusCode::NOT_FOUND, json!("Not Found"));
    };
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!([{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]),
        );
    };
    let Some(prompt) = obj
        .get("prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    else {
        return field_error("prompt", "Field required");
    };
    let (width, height) = match dimensions(endpoint, &obj) {
        Ok(dims) => dims,
        Err(r) => return *r,
    };
    let format = match obj.get("output_format") {
        None | Some(Value::Null) => Format::Jpeg,
        Some(Value::String(f)) if f == "jpeg" => Format::Jpeg,
        Some(Value::String(f)) if f == "png" => Format::Png,
        Some(_) => return field_error("output_format", "Input should be 'jpeg' or 'png'"),
    };
    let inputs_digest = match check_inputs(endpoint, &obj) {
        Ok(digest) => digest,
        Err(r) => return *r,
    };
    if inputs_digest.is_some() {
        emu.record_edit(crate::gpt_image_edit::EditRecord {
            protocol: PROTOCOL,
            correlation_id: crate::openai::correlation_id(headers),
            model: Some(model.to_owned()),
            prompt: prompt.to_owned(),
            images: input_digests(&obj),
            mask: None,
            input_fidelity: None,
        });
    }
    let seed = obj
        .get("seed")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| rand::random::<u32>().into());
    let output_mp = megapixels(u64::from(width) * u64::from(height));
    let input_mp: f64 = INPUT_IMAGES
        .iter()
        .filter_map(|name| obj.get(*name).and_then(Value::as_str))
        .filter(|v| !v.is_empty())
        .map(input_megapixels)
        .sum();
    let input_mp = (input_mp * 100.0).round() / 100.0;
    let (fate, knobs) = emu.draw(PROTOCOL);
    let fate = fate.moderated_if_triggered(prompt);
    let mut tasks = emu.bfl_tasks.lock().unwrap_or_else(|e| e.into_inner());
    let active = tasks.values().filter(|t| t.result.is_none()).count();
    match fate {
        Fate::RateLimit => {
            return detail(
                StatusCode::TOO_MANY_REQUESTS,
                json!("You have exceeded the number of active tasks."),
            );
        }
        _ if active >= MAX_ACTIVE => {
            return detail(
                StatusCode::TOO_MANY_REQUESTS,
                json!(format!(
                    "You have {active} active tasks; the limit is {MAX_ACTIVE}."
                )),
            );
        }
        Fate::Error(402) => {
            return detail(StatusCode::PAYMENT_REQUIRED, json!("Insufficient credits"));
        }
        Fate::Error(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return detail(status, json!("Internal Server Error"));
        }
        _ => {}
    }
    let id = uuid::Uuid::new_v4().to_string();
    tasks.insert(
        id.clone(),
        Task {
            prompt: prompt.to_owned(),
            inputs_digest,
            seed,
            width,
            height,
            format,
            ready_at: Instant::now() + Duration::from_millis(knobs.latency_ms),
            fate,
            result: None,
        },
    );
    emu.note_active(
        PROTOCOL,
        tasks.values().filter(|t| t.result.is_none()).count(),
    );
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    axum::Json(json!({
        "id": id,
        "polling_url": format!("http://{host}/bfl/v1/get_result?id={id}"),
        "cost": endpoint.credits(output_mp, input_mp),
        "input_mp": input_mp,
        "output_mp": output_mp,
    }))
    .into_response()
}

#[derive(Deserialize)]
pub struct ResultQuery {
    id: Option<String>,
}

pub async fn get_result(
    State(emu): State<Emulator>,
    Query(q): Query<ResultQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&emu, &headers) {
        return detail(StatusCode::FORBIDDEN, json!("Not authenticated"));
    }
    let id = q.id.unwrap_or_default();
    let now = Instant::now();
    let (ready, seed, prompt, size, format, fate, ready_at, inputs_digest) = {
        let tasks = emu.bfl_tasks.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = tasks.get(&id) else {
            return axum::Json(json!({"id": id, "status": "Task not found", "result": null}))
                .into_response();
        };
        if let Some(result) = &t.result {
            return axum::Json(result.clone()).into_response();
        }
        (
            now >= t.ready_at,
            t.seed,
            t.prompt.clone(),
            (t.width, t.height),
            t.format,
            t.fate,
            t.ready_at,
            t.inputs_digest.clone(),
        )
    };
    if !ready || fate == Fate::Hang {
        let left = ready_at.saturating_duration_since(now).as_secs_f64();
        let progress: f64 = if fate == Fate::Hang {
            0.5
        } else {
            (1.0 - left).clamp(0.0, 0.99)
        };
        return axum::Json(
            json!({"id": id, "status": "Pending", "result": null, "progress": progress}),
        )
        .into_response();
    }
    let result = match fate {
        Fate::Moderate => {
            let status = if prompt.to_lowercase().contains("emulator-moderate-output") {
                "Content Moderated"
            } else {
                "Request Moderated"
            };
            json!({"id": id, "status": status, "result": null, "details": {"moderation_reasons": ["emulated"]}})
        }
        _ => {
            let (w, h) = size;
            // An edit's picture is drawn from its inputs as well as the prompt (the reported prompt stays as sent).
            let p = match &inputs_digest {
                Some(d) => format!("{prompt}\u{0}edit:{d}"),
                None => prompt.clone(),
            };
            let pad = emu.knobs_of(PROTOCOL).image_bytes;
            let corrupt = fate == Fate::Corrupt;
            let Ok(Some(bytes)) = tokio::task::spawn_blocking(move || {
                if corrupt {
                    return Some(CORRUPT_BYTES.to_vec());
                }
                let bytes = crate::picture::render(&Picture {
                    quality: 90,
                    ..Picture::new(&p, seed, w, h, format)
                });
                (!bytes.is_empty()).then(|| crate::picture::pad(bytes, format, pad))
            })
            .await
            else {
                return detail(StatusCode::INTERNAL_SERVER_ERROR, json!("rendering failed"));
            };
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("127.0.0.1");
            let (_, knobs) = (Fate::Succeed, emu.knobs_of(PROTOCOL));
            let ttl = if knobs.url_ttl_s == crate::knobs::Knobs::default().url_ttl_s {
                SAMPLE_TTL_S
            } else {
                knobs.url_ttl_s
            };
            let path = emu
                .files
                .put_with_ext(Bytes::from(bytes), ttl, format.ext());
            let end = crate::files::now_secs();
            json!({"id": id, "status": "Ready", "progress": null, "details": null,
                "result": {"sample": format!("http://{host}{path}"), "prompt": prompt, "seed": seed,
                    "start_time": end, "end_time": end, "duration": 0.0}})
        }
    };
    let mut tasks = emu.bfl_tasks.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = tasks.get_mut(&id) {
        t.result = Some(result.clone());
    }
    emu.note_active(
        PROTOCOL,
        tasks.values().filter(|t| t.result.is_none()).count(),
    );
    axum::Json(result).into_response()
}

/// The reference images of an edit: only the fields the endpoint takes (Kontext `input_image`..`input_image_4`,
/// FLUX.2 up to `input_image_8`; others none), each an https/http URL or base64 (optionally a data URL) of a PNG,
/// JPEG or WebP. Answers 422 as FastAPI would for a field it does not take or an image it cannot read; else a
/// digest of the inputs (none when there are none).
fn check_inputs(
    endpoint: &crate::models::BflEndpoint,
    obj: &serde_json::Map<String, Value>,
) -> Result<Option<String>, Box<Response>> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut any = false;
    for (i, name) in INPUT_IMAGES[..8].iter().enumerate() {
        let Some(value) = obj.get(*name).filter(|v| !v.is_null()) else {
            continue;
        };
        if i >= endpoint.input_images {
            return Err(Box::new(field_error_typed(
                name,
                "Extra inputs are not permitted",
                "extra_forbidden",
            )));
        }
        let Some(text) = value.as_str().filter(|t| !t.is_empty()) else {
            return Err(Box::new(field_error(
                name,
                "Input should be a valid string",
            )));
        };
        if !(text.starts_with("https://") || text.starts_with("http://")) {
            let data = text.split_once(";base64,").map_or(text, |(_, d)| d);
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| {
                    Box::new(field_error(name, "Invalid base64 image: could not decode"))
                })?;
            let known = bytes.starts_with(b"\x89PNG\r\n\x1a\n")
                || bytes.starts_with(&[0xFF, 0xD8, 0xFF])
                || (bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP");
            if !known {
                return Err(Box::new(field_error(
                    name,
                    "Unsupported image format: expected PNG, JPEG or WebP",
                )));
            }
        }
        hasher.update(name.as_bytes());
        hasher.update(text.as_bytes());
        any = true;
    }
    Ok(any.then(|| hex_prefix(&hasher.finalize())))
}

/// SHA-256 (hex) of each reference image in field order: of its bytes when inline, of the URL otherwise.
fn input_digests(obj: &serde_json::Map<String, Value>) -> Vec<String> {
    use sha2::{Digest, Sha256};
    INPUT_IMAGES
        .iter()
        .filter_map(|name| obj.get(*name).and_then(Value::as_str))
        .filter(|t| !t.is_empty())
        .map(|text| {
            let data = text.split_once(";base64,").map_or(text, |(_, d)| d);
            let bytes = if text.starts_with("https://") || text.starts_with("http://") {
                text.as_bytes().to_vec()
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .unwrap_or_default()
            };
            hex::encode(Sha256::digest(&bytes))
        })
        .collect()
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Megapixels as our cost table counts them (1024x1024 = 1), to two decimals.
fn megapixels(pixels: u64) -> f64 {
    (pixels as f64 / MEGAPIXEL * 100.0).round() / 100.0
}

/// The megapixels of one reference image: read from its header when it is a base64 PNG, JPEG or WebP, else
/// (a URL, or anything else) assumed to be one megapixel.
fn input_megapixels(value: &str) -> f64 {
    let data = value.split_once(";base64,").map_or(value, |(_, data)| data);
    // The header is all that is needed: decode a little more than its first bytes (JPEG headers run longer).
    let head: String = data.chars().take(65_536).collect();
    let head = &head[..head.len() - head.len() % 4];
    base64::engine::general_purpose::STANDARD
        .decode(head)
        .ok()
        .and_then(|bytes| crate::picture::dimensions(&bytes))
        .map_or(1.0, |(w, h)| megapixels(u64::from(w) * u64::from(h)))
}

/// A `width`/`height` field: absent gives `default`; otherwise an integer meeting `rule`.
fn side(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    default: u32,
    rule: impl Fn(u32) -> bool,
    msg: &str,
) -> Result<u32, Box<Response>> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if rule(n) => Ok(n),
            _ => Err(Box::new(field_error(name, msg))),
        },
    }
}

/// The output size an endpoint makes from the request.
fn dimensions(
    endpoint: &BflEndpoint,
    obj: &serde_json::Map<String, Value>,
) -> Result<(u32, u32), Box<Response>> {
    match endpoint.sizing {
        BflSizing::Flux1 => {
            let rule = |n: u32| (256..=1440).contains(&n) && n.is_multiple_of(32);
            let msg = "Input should be a multiple of 32 between 256 and 1440";
            Ok((
                side(obj, "width", 1024, rule, msg)?,
                side(obj, "height", 768, rule, msg)?,
            ))
        }
        BflSizing::Flux2 => {
            let rule = |n: u32| n >= 64 && n.is_multiple_of(16);
            let msg = "Input should be a multiple of 16 and at least 64";
            let (w, h) = (
                side(obj, "width", 1024, rule, msg)?,
                side(obj, "height", 1024, rule, msg)?,
            );
            if u64::from(w) * u64::from(h) > FLUX2_MAX_PIXELS {
                return Err(Box::new(detail(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!([{"loc": ["body"], "msg": format!(
                        "width x height must be at most {FLUX2_MAX_PIXELS} pixels (4 MP), got {w}x{h}"
                    ), "type": "value_error"}]),
                )));
            }
            Ok((w, h))
        }
        BflSizing::AspectRatio => {
            let ratio = match obj.get("aspect_ratio") {
                None | Some(Value::Null) => "1:1",
                Some(Value::String(r)) => r.as_str(),
                Some(_) => {
                    return Err(Box::new(field_error(
                        "aspect_ratio",
                        "Input should be a valid string",
                    )));
                }
            };
            aspect_dimensions(ratio).ok_or_else(|| {
                Box::new(field_error(
                    "aspect_ratio",
                    "Aspect ratio must be 'W:H' between 21:9 and 9:21",
                ))
            })
        }
    }
}

/// About one megapixel in the ratio "W:H" (each side a multiple of 32), if the ratio is between 21:9 and 9:21.
pub fn aspect_dimensions(ratio: &str) -> Option<(u32, u32)> {
    let (w, h) = ratio.split_once(':')?;
    let (w, h): (u32, u32) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    if w == 0 || h == 0 {
        return None;
    }
    let r = f64::from(w) / f64::from(h);
    if !(9.0 / 21.0 - 1e-9..=21.0 / 9.0 + 1e-9).contains(&r) {
        return None;
    }
    let snap = |x: f64| ((x / 32.0).round().max(1.0) as u32) * 32;
    Some((snap((MEGAPIXEL * r).sqrt()), snap((MEGAPIXEL / r).sqrt())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aspect_ratios_make_about_a_megapixel() {
        assert_eq!(aspect_dimensions("1:1"), Some((1024, 1024)));
        assert_eq!(aspect_dimensions("3:2"), Some((1248, 832)));
        assert_eq!(aspect_dimensions("2:3"), Some((832, 1248)));
        assert_eq!(aspect_dimensions("21:9"), Some((1568, 672)));
        assert_eq!(aspect_dimensions("9:21"), Some((672, 1568)));
        for bad in ["22:9", "9:22", "0:1", "1", "a:b", "16/9"] {
            assert_eq!(aspect_dimensions(bad), None, "{bad}");
        }
    }

    #[test]
    fn input_images_count_their_megapixels() {
        let png = crate::picture::render_png("ref", 0, 2048, 1024);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        assert_eq!(input_megapixels(&b64), 2.0);
        assert_eq!(
            input_megapixels(&format!("data:image/png;base64,{b64}")),
            2.0
        );
        assert_eq!(input_megapixels("https://example.com/cat.png"), 1.0);
    }
}
