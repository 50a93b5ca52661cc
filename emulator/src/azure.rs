//! Azure OpenAI DALL-E 3:
//! `POST /openai/deployments/{deployment}/images/generations?api-version=...` with `api-key` (or a bearer token),
//! Azure's error bodies (`{"error": {"code": "401", ...}}`, `DeploymentNotFound`, content-filter `inner_error`), filter
//! annotations on every answer, `apim-request-id`, and 429s with both `retry-after` and `retry-after-ms`.

use crate::Emulator;
use crate::knobs::Fate;
use crate::openai::{SAFETY_MESSAGE, render_item, validate};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

pub const PROTOCOL: &str = "azure";
const HANG: Duration = Duration::from_secs(600);
const OUTPUT_FILTERED: &str = "The generated image was filtered as a result of our safety system. Your request may succeed if retried, or by adjusting your prompt.";

#[derive(Deserialize)]
pub struct VersionQuery {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

fn azure_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn safe_filters() -> Value {
    let safe = json!({"filtered": false, "severity": "safe"});
    json!({"sexual": safe, "violence": safe, "hate": safe, "self_harm": safe})
}

fn prompt_filters() -> Value {
    let mut f = safe_filters();
    if let Some(m) = f.as_object_mut() {
        m.insert(
            "profanity".into(),
            json!({"detected": false, "filtered": false}),
        );
        m.insert(
            "jailbreak".into(),
            json!({"detected": false, "filtered": false}),
        );
    }
    f
}

fn accepted(emu: &Emulator, headers: &HeaderMap) -> bool {
    let key = headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    key.or(token)
        .is_some_and(|k| !k.is_empty() && emu.accepts_key(k))
}

pub async fn generations(
    State(emu): State<Emulator>,
    Path(deployment): Path<String>,
    Query(query): Query<VersionQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _flight = emu.begin(PROTOCOL);
    let mut response = answer(&emu, &deployment, query, &headers, &body).await;
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("apim-request-id", v);
    }
    h.insert("x-ms-region", HeaderValue::from_static("Emulator"));
    emu.record_status(PROTOCOL, response.status().as_u16());
    response
}

async fn answer(
    emu: &Emulator,
    deployment: &str,
    query: VersionQuery,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(version) = query.api_version.filter(|v| !v.is_empty()) else {
        return azure_error(StatusCode::NOT_FOUND, "404", "Resource not found");
    };
    if !accepted(emu, headers) {
        return azure_error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        );
    }
    if !emu.accepts_deployment(deployment) {
        return azure_error(
            StatusCode::NOT_FOUND,
            "DeploymentNotFound",
            "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
        );
    }
    let valid = match validate(body, false) {
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
            azure_error(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                "The emulator hung this request on purpose.",
            )
        }
        Fate::RateLimit => {
            let message = format!(
                "Requests to the Images_Generations_Create Operation under Azure OpenAI API version {version} have exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after {} seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.",
                knobs.retry_after_s
            );
            let mut r = azure_error(StatusCode::TOO_MANY_REQUESTS, "429", &message);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(knobs.retry_after_s));
            r.headers_mut().insert(
                "retry-after-ms",
                HeaderValue::from(knobs.retry_after_s * 1000),
            );
            r
        }
        Fate::Error(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = if status == StatusCode::SERVICE_UNAVAILABLE {
                "The service is temporarily unable to process your request. Please try again later."
            } else {
                "The server had an error while processing your request. Sorry about that!"
            };
            azure_error(status, &status.as_u16().to_string(), message)
        }
        Fate::Moderate => {
            let output = lower.contains("emulator-moderate-output");
            let mut filters = safe_filters();
            filters["violence"] = json!({"filtered": true, "severity": "high"});
            let body = json!({"error": {
                "code": "content_policy_violation",
                "message": if output { OUTPUT_FILTERED } else { SAFETY_MESSAGE },
                "param": null,
                "type": "invalid_request_error",
                "inner_error": {
                    "code": "ResponsibleAIPolicyViolation",
                    "revised_prompt": valid.prompt,
                    "content_filter_results": filters,
                },
            }});
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
        Fate::Succeed => match render_item(emu, &valid, &knobs, headers).await {
            Ok(mut item) => {
                if let Some(m) = item.as_object_mut() {
                    m.insert("prompt_filter_results".into(), prompt_filters());
                    m.insert("content_filter_results".into(), safe_filters());
                }
                axum::Json(json!({"created": crate::files::now_secs(), "data": [item]}))
                    .into_response()
            }
            Err(r) => *r,
        },
    }
}
