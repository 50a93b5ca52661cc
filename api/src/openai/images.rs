//! `POST /v1/images/generations`: OpenAI's Images API on our pipeline. The body is OpenAI's; it becomes the same
//! request `/api/v1/generate` takes and runs the same way in wait mode (recorded, limited, budgeted, stored, costed),
//! and the answer is OpenAI's shape with our stored pictures (`b64_json`) or our own signed links (`url`). The job's
//! id is in `x-imagegen-job-id`, the correlation id in `x-request-id` as well. A client that goes away does not stop
//! the job: it finishes and stays in `/api/v1/jobs`.
//!
//! `stream: true` answers server-sent events named as OpenAI names them: with `partial_images`, each partial picture
//! a provider that streams (GPT image models on OpenAI and Azure OpenAI) makes, as the worker passes it on; then one
//! `image_generation.completed` per picture (each with its share of `usage`) once the job ends. A provider that does not
//! stream makes no partials: the completed events come all the same.

use crate::auth::Submitter;
use crate::error::ApiError;
use crate::extract::{AppJson, CorrelationId};
use crate::routes::{base_url, finished_job_response};
use crate::state::AppState;
use crate::submit::{Submitted, lifecycle_headers, submit_request};
use crate::wait::wait_for_job;
use crate::waiters::WaitGuard;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use imagegen_shared::catalogue::Family;
use imagegen_shared::db::{ImageRecord, JobParts, JobRecord};
use imagegen_shared::domain::{GenerateBody, JobStatus, ProviderId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;
use utoipa::ToSchema;

/// OpenAI's image generation body (`openai.images.generate`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageGenerationBody {
    /// A catalogue model id (`gpt-image-2`, `dall-e-3` (served by its replacement), `flux-2-pro`, ...), or a
    /// provider id (`openai`, `azure_openai`, `flux`, `bfl`, `dalle3`, `flux_schnell`) for its default model.
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: String,
    /// Pictures, 1 to the model's maximum.
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub quality: Option<String>,
    #[serde(default)]
    pub style: Option<String>,
    #[serde(default)]
    pub background: Option<String>,
    #[serde(default)]
    pub output_format: Option<String>,
    #[serde(default)]
    pub output_compression: Option<i64>,
    #[serde(default)]
    pub moderation: Option<String>,
    /// `b64_json` or `url` (our own signed download link); default `b64_json`, `url` for DALL-E models.
    #[serde(default)]
    pub response_format: Option<String>,
    /// The end user, for abuse tracing; logged, not sent on.
    #[serde(default)]
    pub user: Option<String>,
    /// The end user as newer SDKs name it (`user`'s successor); logged, not sent on.
    #[serde(default)]
    pub safety_identifier: Option<String>,
    /// `low`, `medium` or `high`: accepted for compatibility; not sent on (the catalogue's models take no such
    /// option).
    #[serde(default)]
    pub complexity: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// 0 to 3 partial pictures per picture while streaming (from providers that stream them).
    #[serde(default)]
    pub partial_images: Option<i64>,
}

/// One picture of the answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiImage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
}

/// OpenAI's `ImagesResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImagesResponse {
    pub created: i64,
    pub data: Vec<OpenAiImage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
}

/// One server-sent event of a streamed answer (`stream: true`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageStreamEvent {
    /// `image_generation.partial_image`, `image_generation.completed` or `error`.
    pub event: String,
    /// The event as JSON: its `type` (the event's name), `b64_json`, `partial_image_index` (partials), `size`,
    /// `quality`, `background`, `output_format`, `created_at`, and `usage` on the last completed picture; an
    /// `error` event carries `error` in OpenAI's error shape.
    pub data: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    B64,
    Url,
}

/// The body as `/api/v1/generate` takes it, and how pictures are to be answered.
fn translate(
    state: &AppState,
    body: ImageGenerationBody,
) -> Result<(GenerateBody, Format), ApiError> {
    let offer = state.offer();
    let (model, provider) = match body.model.as_deref().map(str::trim) {
        None | Some("") => (None, None),
        Some(m) if m.parse::<ProviderId>().is_ok() || offer.catalogue.legacy_model(m).is_some() => {
            (None, Some(m.to_owned()))
        }
        Some(m) => (Some(m.to_owned()), None),
    };
    if let Some(p) = body.partial_images
        && !(0..=3).contains(&p)
    {
        return Err(invalid("partial_images", "partial_images must be 0 to 3"));
    }
    let format = match body.response_format.as_deref() {
        Some("b64_json") => Format::B64,
        Some("url") => Format::Url,
        Some(other) => {
            return Err(invalid(
                "response_format",
                &format!("response_format must be 'b64_json' or 'url', not '{other}'"),
            ));
        }
        None => {
            let family = model
                .as_deref()
                .and_then(|m| offer.catalogue.get(m))
                .map(|m| m.family);
            if family == Some(Family::DallE) {
                Format::Url
            } else {
                Format::B64
            }
        }
    };
    if let Some(c) = body.complexity.as_deref()
        && !["low", "medium", "high"].contains(&c)
    {
        return Err(invalid(
            "complexity",
            &format!("complexity must be 'low', 'medium' or 'high', not '{c}'"),
        ));
    }
    if let Some(user) = body.safety_identifier.as_ref().or(body.user.as_ref()) {
        tracing::info!(end_user = %user.chars().take(64).collect::<String>(), "OpenAI-compatible request");
    }
    Ok((
        GenerateBody {
            prompt: body.prompt,
            model,
            provider,
            size: body.size,
            quality: body.quality,
            style: body.style,
            num_images: body.n,
            background: body.background,
            output_format: body.output_format,
            output_compression: body.output_compression,
            moderation: body.moderation,
            // Streamed requests pass partial pictures on from providers that stream them.
            partial_images: if body.stream.unwrap_or(false) {
                u8::try_from(body.partial_images.unwrap_or(0)).unwrap_or(0)
            } else {
                0
            },
            ..GenerateBody::default()
        },
        format,
    ))
}

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::Validation(imagegen_shared::domain::ValidationErrors(vec![
        imagegen_shared::domain::FieldError {
            field: field.to_owned(),
            message: message.to_owned(),
        },
    ]))
}

/// Create image (OpenAI-compatible).
///
/// OpenAI's `POST /v1/images/generations`: point an OpenAI SDK's `base_url` at this service (`.../v1`) and use an
/// API key of ours. Runs as `POST /api/v1/generate` in wait mode; errors are in OpenAI's shape.
#[utoipa::path(post, path = "/v1/images/generations", tag = "openai", request_body = ImageGenerationBody,
    responses(
        (status = 200, description = "The pictures; with `stream: true`, server-sent events (`image_generation.completed`)",
            content((ImagesResponse = "application/json"), (ImageStreamEvent = "text/event-stream")),
            headers(("x-imagegen-job-id" = String, description = "The job behind the answer"))),
        (status = 400, description = "Invalid request or content policy (`invalid_request_error`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 401, description = "No or a bad credential (`invalid_api_key`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 403, description = "Not allowed to generate (`forbidden`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 405, description = "Not POST (`method_not_allowed`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 409, description = "The job was canceled (`job_canceled`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 415, description = "Body not sent as `application/json` (`unsupported_media_type`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 422, description = "An Idempotency-Key used with another request (`idempotency_key_reused`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 500, description = "The images could not be stored (`storage_error`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 503, description = "Database, queue or provider unavailable (`service_unavailable`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 404, description = "A retired model with no replacement here (`model_not_found`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 429, description = "Rate limit, or budget spent (`insufficient_quota`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 502, description = "The provider failed (`server_error`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 504, description = "Still running after WAIT_MAX_SECS; the job goes on (`x-imagegen-job-id`)", body = crate::openai::error::OpenAiErrorBody),
    ))]
pub async fn generations(
    State(state): State<AppState>,
    submitter: Submitter,
    CorrelationId(correlation_id): CorrelationId,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    AppJson(body): AppJson<ImageGenerationBody>,
) -> Result<Response, ApiError> {
    let stream = body.stream.unwrap_or(false);
    let (body, format) = translate(&state, body)?;
    let (Submitted { job, watch }, notices) = submit_request(
        &state,
        &submitter,
        &correlation_id,
        &headers,
        peer,
        crate::submit::Via {
            endpoint: "v1/images/generations",
            // A stream's headers name the job at once; otherwise the client hears of it with its images.
            heard: if stream {
                crate::submit::Heard::AtOnce
            } else {
                crate::submit::Heard::WithOutcome
            },
        },
        body,
    )
    .await?;
    let owner = submitter.0;
    let job_id = job.id;
    let links = base_url(&state, &headers, peer);
    let mut response = if stream {
        Sse::new(stream_events(
            state.clone(),
            owner,
            job,
            watch,
            format,
            links,
        ))
        .into_response()
    } else {
        let job = wait_for_job(&state, &owner, job.id, state.wait_max, watch)
            .await?
            .ok_or(ApiError::NotFound("Job"))?;
        match answer(&state, &owner, &job, format, &links).await {
            Ok(r) => axum::Json(r).into_response(),
            Err(e) => e.into_response(),
        }
    };
    answer_headers(&mut response, &notices, job_id, correlation_id);
    Ok(response)
}

/// What every OpenAI-compatible answer carries: the model's lifecycle headers, the job behind it and the request id.
fn answer_headers(
    response: &mut Response,
    notices: &[imagegen_shared::domain::LifecycleNotice],
    job_id: imagegen_shared::domain::JobId,
    correlation_id: String,
) {
    lifecycle_headers(notices, response.headers_mut());
    for (name, value) in [
        ("x-imagegen-job-id", job_id.to_string()),
        ("x-request-id", correlation_id),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
}

/// The OpenAI edit form's own fields, taken out of the text fields (`n` renamed `num_images`): how pictures are
/// answered. Streaming is not offered for edits here.
fn adapt_edit_fields(
    state: &AppState,
    fields: &mut std::collections::BTreeMap<String, String>,
) -> Result<Format, ApiError> {
    if let Some(n) = fields.remove("n") {
        fields.insert("num_images".into(), n);
    }
    for ignored in ["user", "safety_identifier", "partial_images"] {
        fields.remove(ignored);
    }
    if fields
        .remove("stream")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return Err(invalid(
            "stream",
            "stream is not offered for edits here; send it without stream",
        ));
    }
    let offer = state.offer();
    if let Some(m) = fields.get("model").map(|m| m.trim().to_owned())
        && (m.parse::<ProviderId>().is_ok() || offer.catalogue.legacy_model(&m).is_some())
    {
        fields.remove("model");
        fields.insert("provider".into(), m);
    }
    match fields.remove("response_format").as_deref() {
        None | Some("b64_json") => Ok(Format::B64),
        Some("url") => Ok(Format::Url),
        Some(other) => Err(invalid(
            "response_format",
            &format!("response_format must be 'b64_json' or 'url', not '{other}'"),
        )),
    }
}

/// Create image edit (OpenAI-compatible).
///
/// OpenAI's `POST /v1/images/edits` (multipart: `image` or `image[]`, `mask`, `prompt`, `model`, `n`, `size`,
/// `quality`, `background`, `output_format`, `output_compression`, `input_fidelity`, `response_format`): runs as
/// `POST /api/v1/edits` in wait mode and answers in OpenAI's shape; errors are in OpenAI's shape.
#[utoipa::path(post, path = "/v1/images/edits", tag = "openai",
    request_body(content = crate::routes::edits::EditForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The pictures", body = ImagesResponse,
            headers(("x-imagegen-job-id" = String, description = "The job behind the answer"))),
        (status = 400, description = "Invalid request or input, naming the part (`invalid_request_error`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 401, description = "No or a bad credential (`invalid_api_key`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 403, description = "Not allowed to generate (`forbidden`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 404, description = "A retired model with no replacement here (`model_not_found`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 405, description = "Not POST (`method_not_allowed`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 409, description = "The job was canceled (`job_canceled`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 413, description = "An image or the request is over EDIT_MAX_IMAGE_BYTES / EDIT_MAX_REQUEST_BYTES", body = crate::openai::error::OpenAiErrorBody),
        (status = 415, description = "Body not sent as `multipart/form-data`", body = crate::openai::error::OpenAiErrorBody),
        (status = 422, description = "An Idempotency-Key used with another request (`idempotency_key_reused`), or an input the worker could not use (`invalid_input`, naming the part)", body = crate::openai::error::OpenAiErrorBody),
        (status = 429, description = "Rate limit, or budget spent (`insufficient_quota`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 500, description = "The images could not be stored (`storage_error`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 502, description = "The provider failed (`server_error`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 503, description = "Database, queue or provider unavailable (`service_unavailable`)", body = crate::openai::error::OpenAiErrorBody),
        (status = 504, description = "Still running after WAIT_MAX_SECS; the job goes on (`x-imagegen-job-id`)", body = crate::openai::error::OpenAiErrorBody),
    ))]
pub async fn edits(
    State(state): State<AppState>,
    submitter: Submitter,
    CorrelationId(correlation_id): CorrelationId,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let ((Submitted { job, watch }, notices), format) = crate::routes::edits::submit_multipart(
        &state,
        &submitter,
        &correlation_id,
        peer,
        request,
        "v1/images/edits",
        |fields| adapt_edit_fields(&state, fields),
    )
    .await?;
    let owner = submitter.0;
    let job_id = job.id;
    let links = base_url(&state, &headers, peer);
    drop(headers);
    let job = Box::pin(wait_for_job(&state, &owner, job.id, state.wait_max, watch))
        .await?
        .ok_or(ApiError::NotFound("Job"))?;
    let mut response = match Box::pin(answer(&state, &owner, &job, format, &links)).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => e.into_response(),
    };
    answer_headers(&mut response, &notices, job_id, correlation_id);
    Ok(response)
}

/// An option the provider echoed (`provider_meta.answered`), else the one asked for unless `auto`.
fn echoed(job: &JobRecord, key: &str, asked: Option<String>) -> Option<String> {
    job.provider_meta
        .as_ref()
        .and_then(|m| m.0.get("answered").and_then(|a| a.get(key)))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or(asked)
        .filter(|v| v != "auto")
}

/// A job that ended: its pictures in OpenAI's shape, or its failure as an error. Still running after the wait: 504
/// naming the job, which goes on.
async fn answer(
    state: &AppState,
    owner: &str,
    parts: &JobParts,
    format: Format,
    links: &crate::links::Links,
) -> Result<ImagesResponse, ApiError> {
    let job = &parts.job;
    match job.status {
        JobStatus::Succeeded => {}
        JobStatus::Queued | JobStatus::Running => {
            return Err(ApiError::JobUnsuccessful {
                status: StatusCode::GATEWAY_TIMEOUT,
                code: "timeout".into(),
                message: format!(
                    "Still running after {} s; it goes on: GET /api/v1/jobs/{}",
                    state.wait_max.as_secs(),
                    job.id
                ),
                job_id: job.id,
            });
        }
        // Failed, moderated or canceled: the same error as wait mode's.
        _ => {
            finished_job_response(state, links, parts)?;
            return Err(ApiError::Internal(anyhow::anyhow!(
                "job {} ended {} without an error",
                job.id,
                job.status
            )));
        }
    }
    // In position order (`db::job_parts`).
    let mut data = Vec::with_capacity(parts.images.len());
    for image in &parts.images {
        data.push(picture(state, owner, image, format, links).await?);
    }
    Ok(images_response(job, data))
}

fn images_response(job: &JobRecord, data: Vec<OpenAiImage>) -> ImagesResponse {
    let req = &job.request.0;
    ImagesResponse {
        created: job.finished_at.unwrap_or(job.created_at).timestamp(),
        data,
        background: echoed(
            job,
            "background",
            req.background().map(|b| b.as_str().to_owned()),
        ),
        output_format: echoed(
            job,
            "output_format",
            req.output_format().map(|f| f.as_str().to_owned()),
        ),
        quality: echoed(job, "quality", req.quality().map(|q| q.as_str().to_owned())),
        size: echoed(job, "size", Some(req.size().to_string())),
        usage: job
            .provider_meta
            .as_ref()
            .and_then(|m| m.0.get("usage"))
            .filter(|u| !u.is_null())
            .cloned(),
    }
}

/// One stored picture: its bytes in base64, or our own download link.
async fn picture(
    state: &AppState,
    owner: &str,
    image: &ImageRecord,
    format: Format,
    links: &crate::links::Links,
) -> Result<OpenAiImage, ApiError> {
    let (b64_json, url) = match format {
        Format::Url => (None, Some(links.download(image.id, owner))),
        Format::B64 => {
            let bytes = state
                .storage
                .get(&image.storage_key)
                .await
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading a stored picture: {e}")))?
                .bytes()
                .await
                .map_err(|e| {
                    ApiError::Internal(anyhow::anyhow!("reading a stored picture: {e}"))
                })?;
            (
                Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                None,
            )
        }
    };
    Ok(OpenAiImage {
        b64_json,
        url,
        revised_prompt: image.revised_prompt.clone(),
    })
}

/// The events of a streamed request: each partial picture the provider streams, as it arrives
/// (`image_generation.partial_image`), then once the job ends one `image_generation.completed` per picture (each
/// with its share of `usage`), or one `error` event in OpenAI's error shape. A client that goes away stops the
/// events, not the job.
fn stream_events(
    state: AppState,
    owner: String,
    job: JobRecord,
    watch: Option<WaitGuard>,
    format: Format,
    links: crate::links::Links,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(8);
    tokio::spawn(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let _stop_guard = stop.clone().drop_guard();
        let mut partials = if job.request.0.partial_images() > 0 {
            match state.queue.partials(job.id, stop.clone()).await {
                Ok(rx) => Some(rx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for partial pictures; completed ones only");
                    None
                }
            }
        } else {
            None
        };
        let finished = completed_events(&state, &owner, &job, watch, format, &links);
        tokio::pin!(finished);
        let events = loop {
            let frame = async {
                match partials.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = &mut finished => break match done {
                    Ok(events) => events,
                    Err(e) => vec![error_event(e)],
                },
                frame = frame => match frame {
                    Some(frame) => {
                        if tx.send(partial_event(&job, &frame)).await.is_err() {
                            return;
                        }
                    }
                    None => partials = None,
                },
            }
        };
        for event in events {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    })
}

/// A partial picture as OpenAI streams it.
fn partial_event(job: &JobRecord, frame: &imagegen_shared::queue::partials::PartialFrame) -> Event {
    let req = &job.request.0;
    let data = serde_json::json!({
        "type": "image_generation.partial_image",
        "b64_json": frame.b64_json,
        "partial_image_index": frame.partial_image_index,
        "created_at": chrono::Utc::now().timestamp(),
        "size": req.size().to_string(),
        "quality": req.quality().map_or("auto", |q| q.as_str()),
        "background": req.background().map_or("auto", |b| b.as_str()),
        "output_format": req.output_format().map_or("png", |f| f.as_str()),
    });
    Event::default()
        .event("image_generation.partial_image")
        .data(data.to_string())
}

async fn completed_events(
    state: &AppState,
    owner: &str,
    job: &JobRecord,
    watch: Option<WaitGuard>,
    format: Format,
    links: &crate::links::Links,
) -> Result<Vec<Event>, ApiError> {
    let job = wait_for_job(state, owner, job.id, state.wait_max, watch)
        .await?
        .ok_or(ApiError::NotFound("Job"))?;
    let answer = answer(state, owner, &job, format, links).await?;
    let count = answer.data.len();
    let mut events = Vec::with_capacity(count);
    for (i, picture) in answer.data.iter().enumerate() {
        let mut data = serde_json::json!({
            "type": "image_generation.completed",
            "created_at": answer.created,
            "b64_json": picture.b64_json,
            "size": answer.size,
            "quality": answer.quality,
            "background": answer.background,
            "output_format": answer.output_format,
        });
        // Each picture's share of the job's usage (the SDKs require it on every completed event).
        if let Some(usage) = &answer.usage {
            data["usage"] = usage_share(usage, count, i);
        }
        if let Some(url) = &picture.url {
            data["url"] = Value::from(url.as_str());
        }
        events.push(
            Event::default()
                .event("image_generation.completed")
                .data(data.to_string()),
        );
    }
    Ok(events)
}

/// Picture `i` of `n`'s share of `usage`: every count divided evenly, the remainder on the last picture.
fn usage_share(usage: &Value, n: usize, i: usize) -> Value {
    match usage {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), usage_share(v, n, i)))
                .collect(),
        ),
        Value::Number(v) => match v.as_u64() {
            Some(total) => {
                let n = n.max(1) as u64;
                let base = total / n;
                let share = if i as u64 + 1 == n {
                    total - base * (n - 1)
                } else {
                    base
                };
                Value::from(share)
            }
            None => usage.clone(),
        },
        other => other.clone(),
    }
}

/// A failure after the stream started, as the OpenAI SDKs read it (they raise `APIError` on an `error` event).
fn error_event(e: ApiError) -> Event {
    let response = e.into_response();
    let status = response.status();
    let pending = response
        .extensions()
        .get::<crate::error::PendingError>()
        .cloned();
    let error = match pending {
        Some(p) => crate::openai::error::body(status, &p).error,
        None => crate::openai::error::OpenAiError {
            message: "An internal error occurred".into(),
            kind: "server_error".into(),
            param: None,
            code: None,
        },
    };
    let body = serde_json::json!({"type": "error", "error": error});
    Event::default().event("error").data(body.to_string())
}
