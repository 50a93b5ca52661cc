//! Black Forest Labs' API: submit `POST /bfl/v1/{model}` (`x-key`), answered with `{id, polling_url}`; poll
//! `GET /bfl/v1/get_result?id=` for `Pending` (with `progress`) until `Ready` (with `result.sample`, a URL that
//! expires after 10 minutes by default, and `result.seed`), `Request Moderated`, `Content Moderated` or `Error`;
//! unknown ids are `Task not found`. FastAPI-style errors: 403 `{"detail": "Not authenticated"}`, 422 with a
//! `detail` list, 429 above 24 active tasks, 402 without credits.

use crate::Emulator;
use crate::knobs::Fate;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub const PROTOCOL: &str = "bfl";
const MODELS: [&str; 5] = [
    "flux-dev",
    "flux-pro",
    "flux-pro-1.1",
    "flux-schnell",
    "flux-kontext-pro",
];
/// BFL allows this many unfinished tasks per account.
const MAX_ACTIVE: usize = 24;
/// BFL's result URLs live 10 minutes.
const SAMPLE_TTL_S: u64 = 600;

/// One submitted task; its outcome is drawn at submission and revealed once it is "ready".
pub struct Task {
    prompt: String,
    seed: u64,
    width: u32,
    height: u32,
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
    if !MODELS.contains(&model) {
        return detail(StatusCode::NOT_FOUND, json!("Not Found"));
    }
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
    let mut dims = [1024u32, 768];
    for (i, name) in ["width", "height"].iter().enumerate() {
        match obj.get(*name) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if (256..=1440).contains(&n) && n % 32 == 0 => dims[i] = n,
                _ => {
                    return field_error(
                        name,
                        "Input should be a multiple of 32 between 256 and 1440",
                    );
                }
            },
        }
    }
    let seed = obj
        .get("seed")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| rand::random::<u32>().into());
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
            seed,
            width: dims[0],
            height: dims[1],
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
    axum::Json(json!({"id": id, "polling_url": format!("http://{host}/bfl/v1/get_result?id={id}")}))
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
    let (ready, seed, prompt, size, fate, ready_at) = {
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
            t.fate,
            t.ready_at,
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
            let p = prompt.clone();
            let pad = emu.knobs_of(PROTOCOL).image_bytes;
            let Ok(png) = tokio::task::spawn_blocking(move || {
                crate::picture::pad_png(crate::picture::render_png(&p, seed, w, h), pad)
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
            let path = emu.files.put(Bytes::from(png), ttl);
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
