//! Azure OpenAI's image generation for the GPT image models it deploys (`crate::models::AZURE`: gpt-image-2,
//! gpt-image-1-mini and, until 2026-12-16, gpt-image-1.5), on both paths:
//!
//! - `POST /openai/deployments/{deployment}/images/generations?api-version=V`: V must be `2025-04-01-preview` or
//!   later (dated versions compare on their date), `preview` or `latest`; an older one is a 400 `BadRequest`, a
//!   missing one 404 `Resource not found`. The body's `model` may hold anything and is ignored (the official
//!   `AzureOpenAI` client sends the deployment name there).
//! - `POST /openai/v1/images/generations` (`api-version` optional; `preview`, `latest` and `v1` accepted): the body's
//!   `model` names the deployment.
//!
//! A deployment serves one model: `--azure-deployment name=model` entries (a bare `name` serves the model it is
//! named after, else gpt-image-2); without any entry every name is served, by the model it is named after or
//! gpt-image-2. An unlisted name, or a deployment of a retired (dall-e-3, gpt-image-1) or unknown model, is 404
//! `DeploymentNotFound`. Fields and answer are `crate::gpt_image`'s (no webp; `auto` quality is `high`), plus
//! `prompt_filter_results` / `content_filter_results` on every item. `api-key` or a bearer token; Azure's error
//! bodies (`{"error": {"code": "401", ...}}`, content-filter `inner_error`), `apim-request-id`, and 429s with both
//! `retry-after` and `retry-after-ms`.

use crate::Emulator;
use crate::gpt_image;
use crate::knobs::Fate;
use crate::models::{self, Family, ImageModel, Lookup};
use crate::openai::{SAFETY_MESSAGE, parse_object};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::time::Duration;

pub const PROTOCOL: &str = "azure";
const HANG: Duration = Duration::from_secs(600);
const OUTPUT_FILTERED: &str = "The generated image was filtered as a result of our safety system. Your request may succeed if retried, or by adjusting your prompt.";
/// The first API version with the GPT image models.
pub const MIN_GPT_IMAGE_VERSION: &str = "2025-04-01-preview";
const DEPLOYMENT_NOT_FOUND: &str = "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.";

#[derive(Deserialize)]
pub struct VersionQuery {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

/// Which of the two paths a request came by.
enum Route {
    Deployment(String),
    V1,
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

/// Whether `version` (a deployments-path `api-version`) has the GPT image models.
pub fn supports_gpt_image(version: &str) -> bool {
    if matches!(version, "preview" | "latest") {
        return true;
    }
    let date = version.get(..10).unwrap_or(version);
    let well_formed = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    well_formed && date >= &MIN_GPT_IMAGE_VERSION[..10]
}

/// The model a deployment serves, or the `DeploymentNotFound` answer.
fn deployment_model(emu: &Emulator, deployment: &str) -> Result<ImageModel, Box<Response>> {
    let not_found = || {
        Box::new(azure_error(
            StatusCode::NOT_FOUND,
            "DeploymentNotFound",
            DEPLOYMENT_NOT_FOUND,
        ))
    };
    let id = emu.deployment_model(deployment).ok_or_else(not_found)?;
    match models::lookup(models::AZURE, &id, emu.today()) {
        Lookup::Serves(m) if m.family != Family::DallE => Ok(m),
        _ => Err(not_found()),
    }
}

pub async fn generations(
    State(emu): State<Emulator>,
    Path(deployment): Path<String>,
    Query(query): Query<VersionQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(
        &emu,
        Route::Deployment(deployment),
        query,
        &headers,
        &body,
        None,
    )
    .await
}

/// `POST /openai/deployments/{deployment}/images/edits`.
pub async fn edits(
    State(emu): State<Emulator>,
    Path(deployment): Path<String>,
    Query(query): Query<VersionQuery>,
    headers: HeaderMap,
    multipart: axum::extract::Multipart,
) -> Response {
    edit(
        &emu,
        Route::Deployment(deployment),
        query,
        &headers,
        multipart,
    )
    .await
}

/// `POST /openai/v1/images/edits`.
pub async fn edits_v1(
    State(emu): State<Emulator>,
    Query(query): Query<VersionQuery>,
    headers: HeaderMap,
    multipart: axum::extract::Multipart,
) -> Response {
    edit(&emu, Route::V1, query, &headers, multipart).await
}

/// An edit: the form's files checked (`gpt_image_edit`), then handled as a generation of its fields.
async fn edit(
    emu: &Emulator,
    route: Route,
    query: VersionQuery,
    headers: &HeaderMap,
    multipart: axum::extract::Multipart,
) -> Response {
    if !accepted(emu, headers) {
        // `handle` answers the 401 in Azure's words.
        return handle(emu, route, query, headers, b"{}", None).await;
    }
    let mut form = match crate::gpt_image_edit::read_form(multipart).await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let inputs = match crate::gpt_image_edit::check(&mut form) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    emu.record_edit(inputs.record(
        PROTOCOL,
        crate::openai::correlation_id(headers),
        &form.fields,
    ));
    let body = Value::Object(form.fields).to_string();
    handle(emu, route, query, headers, body.as_bytes(), Some(&inputs)).await
}

/// `POST /openai/v1/images/generations`.
pub async fn generations_v1(
    State(emu): State<Emulator>,
    Query(query): Query<VersionQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&emu, Route::V1, query, &headers, &body, None).await
}

async fn handle(
    emu: &Emulator,
    route: Route,
    query: VersionQuery,
    headers: &HeaderMap,
    body: &[u8],
    edit: Option<&crate::gpt_image_edit::Inputs>,
) -> Response {
    let _flight = emu.begin(PROTOCOL);
    let mut response = answer(emu, route, query, headers, body, edit).await;
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("apim-request-id", v);
    }
    h.insert("x-ms-region", HeaderValue::from_static("Emulator"));
    emu.record_status(PROTOCOL, response.status().as_u16());
    response
}

/// Everything before the knobs: the path's api-version, auth, the deployment's model and the body.
fn admit(
    emu: &Emulator,
    route: &Route,
    query: VersionQuery,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, gpt_image::Request), Box<Response>> {
    let version = query.api_version.filter(|v| !v.is_empty());
    match (route, version.as_deref()) {
        (Route::Deployment(_), None) => {
            return Err(Box::new(azure_error(
                StatusCode::NOT_FOUND,
                "404",
                "Resource not found",
            )));
        }
        (Route::V1, Some(v)) if !matches!(v, "preview" | "latest" | "v1") => {
            return Err(Box::new(azure_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "API version not supported: the v1 API takes no dated api-version (got '{v}'); omit it or use 'preview'."
                ),
            )));
        }
        _ => {}
    }
    if !accepted(emu, headers) {
        return Err(Box::new(azure_error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        )));
    }
    let (obj, model, version) = match route {
        Route::Deployment(deployment) => {
            let model = deployment_model(emu, deployment)?;
            let version = version.unwrap_or_default();
            if !supports_gpt_image(&version) {
                return Err(Box::new(azure_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!(
                        "The API version '{version}' does not support this operation for deployment '{deployment}' (model {}). Use api-version {MIN_GPT_IMAGE_VERSION} or later.",
                        model.id
                    ),
                )));
            }
            (parse_object(body)?, model, version)
        }
        Route::V1 => {
            let obj = parse_object(body)?;
            let deployment = match obj.get("model") {
                Some(Value::String(d)) if !d.is_empty() => d.clone(),
                _ => {
                    return Err(gpt_image::bad(
                        "Missing required parameter: 'model'.",
                        "model",
                        "missing_required_parameter",
                    ));
                }
            };
            let model = deployment_model(emu, &deployment)?;
            (obj, model, version.unwrap_or_else(|| "v1".to_owned()))
        }
    };
    let request = gpt_image::validate(&obj, &model, gpt_image::Host::Azure)?;
    Ok((version, request))
}

async fn answer(
    emu: &Emulator,
    route: Route,
    query: VersionQuery,
    headers: &HeaderMap,
    body: &[u8],
    edit: Option<&crate::gpt_image_edit::Inputs>,
) -> Response {
    let (version, mut valid) = match admit(emu, &route, query, headers, body) {
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
        Fate::Succeed | Fate::Corrupt if valid.stream => {
            gpt_image::stream(valid, &knobs, fate == Fate::Corrupt)
        }
        Fate::Succeed | Fate::Corrupt => {
            let mut extra = Map::new();
            extra.insert("prompt_filter_results".into(), prompt_filters());
            extra.insert("content_filter_results".into(), safe_filters());
            gpt_image::answer(&valid, &knobs, Some(&extra), fate == Fate::Corrupt).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_compare_on_their_date() {
        for ok in [
            "2025-04-01-preview",
            "2025-04-01",
            "2025-12-01-preview",
            "2026-06-01",
            "preview",
            "latest",
        ] {
            assert!(supports_gpt_image(ok), "{ok}");
        }
        for old in [
            "2024-10-21",
            "2025-03-01-preview",
            "2024-02-01",
            "v1",
            "junk",
            "",
        ] {
            assert!(!supports_gpt_image(old), "{old}");
        }
    }
}
