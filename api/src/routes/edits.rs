//! `POST /api/v1/edits`: an edit of uploaded images (multipart). The inputs are checked against the model that will
//! serve the edit before anything is stored or queued; then the job runs as a generate job does (wait mode or
//! submit/poll, idempotency, limits, budgets, webhooks).

use super::generate::answer_job;
use crate::auth::Submitter;
use crate::edit_upload::{FIELDS_BYTES, read_upload};
use crate::edits::InputSource;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{AppJson, CorrelationId};
use crate::state::AppState;
use crate::submit::{Accepted, Idempotency, accept_with, submit_job};
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use axum::routing::post;
use imagegen_shared::domain::{EditParams, InputFidelity, ValidationErrors};
use std::net::SocketAddr;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/edits",
            post(edit).layer(DefaultBodyLimit::max(body_limit(state))),
        )
        .route(
            "/api/v1/edits/batch",
            post(edit_batch).layer(DefaultBodyLimit::max(BATCH_BODY_BYTES)),
        )
}

/// A batch of JSON edits: room for ten 32,000-character prompts and their references.
const BATCH_BODY_BYTES: usize = 1024 * 1024;

/// The images' allowance plus the text fields and the multipart framing.
pub fn body_limit(state: &AppState) -> usize {
    usize::try_from(state.edits.limits.max_request_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(FIELDS_BYTES)
        .saturating_add(64 * 1024)
}

/// The multipart form of an edit (`multipart/form-data`): `image` (or `image[]`) one or more files, an optional
/// `mask`, `input_fidelity`, and the fields of `POST /api/v1/generate` as text (`webhook_events` comma separated).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EditForm {
    /// PNG, JPEG or WebP; repeat the part for several images (up to the model's `edits.max_input_images`).
    #[schema(value_type = Vec<String>, format = Binary)]
    image: Vec<Vec<u8>>,
    /// A PNG with an alpha channel, the first image's size: transparent pixels mark what to change.
    #[schema(value_type = Option<String>, format = Binary)]
    mask: Option<Vec<u8>>,
    prompt: String,
    model: Option<String>,
    size: Option<String>,
    quality: Option<String>,
    num_images: Option<i64>,
    background: Option<String>,
    output_format: Option<String>,
    output_compression: Option<i64>,
    /// `high` or `low` (GPT image models): how closely the output keeps the inputs' details.
    input_fidelity: Option<InputFidelity>,
}

/// Edit images and wait for the result.
///
/// As `POST /api/v1/generate` (`Prefer: wait=N` or `respond-async`, `Idempotency-Key`, `Cancel-After`), with the
/// images to edit uploaded (`multipart/form-data`) or named (`application/json`: `images` and `mask` as
/// `{"image_id"}`, one of your images, or `{"image_url"}`, an https URL the worker fetches). Every refusal of an input
/// names it (`image[1]`, `mask`) and nothing is stored or queued.
#[utoipa::path(post, path = "/api/v1/edits", tag = "generation",
    request_body(description = "The images uploaded (multipart), or named by id or https URL (JSON)",
        content((EditForm = "multipart/form-data"), (crate::edit_json::EditJson = "application/json"))),
    params(("Prefer" = Option<String>, Header, nullable = false, description = "`wait=N` (seconds) or `respond-async`"),
           ("Idempotency-Key" = Option<String>, Header, nullable = false,
               description = "1 to 255 visible ASCII characters: the same key and request (inputs included) give the same job"),
           ("Cancel-After" = Option<String>, Header, nullable = false, pattern = r"^[+-]?[0-9]+$",
               description = "Seconds, 1 to 86400: cancel the job if it has not started by then"),
           ("X-Correlation-ID" = Option<String>, Header, nullable = false, description = "Your id for tracing; echoed back")),
    responses(
        (status = 200, description = "The job succeeded; its stored images", body = crate::views::JobView),
        (status = 202, description = "Still running; poll `Location`", body = crate::views::JobView,
            headers(("Location" = String, description = "The job's URL"), ("Retry-After" = u64))),
        (status = 400, description = "Invalid request or input (`validation_failed`, naming the part), or blocked prompt (`content_blocked`)", body = ErrorBody),
        (status = 402, description = "A budget is spent (`budget_exceeded`)", body = ErrorBody),
        (status = 409, description = "The job was canceled (`job_canceled`)", body = ErrorBody),
        (status = 410, description = "The model is retired and MODEL_ALIASES=none (`model_retired`)", body = ErrorBody),
        (status = 413, description = "An image or the request is over EDIT_MAX_IMAGE_BYTES / EDIT_MAX_REQUEST_BYTES", body = ErrorBody),
        (status = 415, description = "Body neither `multipart/form-data` nor `application/json`", body = ErrorBody),
        (status = 422, description = "The provider's safety system refused, or this Idempotency-Key was used with another request", body = ErrorBody),
        (status = 502, description = "The provider failed (`provider_error`)", body = ErrorBody),
        (status = 503, description = "Database, queue or storage unavailable", body = ErrorBody),
    ))]
pub async fn edit(
    State(state): State<AppState>,
    submitter: Submitter,
    CorrelationId(correlation_id): CorrelationId,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let (job, notices) = if is_json(&headers) {
        let body = axum::body::to_bytes(request.into_body(), crate::edit_json::MAX_JSON_BYTES)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(crate::edit_json::MAX_JSON_BYTES))?;
        let edit = crate::edit_json::parse(&body)?;
        let sources =
            crate::edit_json::resolve(&state, &submitter.0, edit.images, edit.mask).await?;
        submit_edit(
            &state,
            &submitter,
            &correlation_id,
            peer,
            &headers,
            "edits",
            EditRequest {
                body: edit.body,
                input_fidelity: edit.input_fidelity,
                sources,
            },
        )
        .await?
    } else {
        submit_multipart(
            &state,
            &submitter,
            &correlation_id,
            peer,
            request,
            "edits",
            |_| Ok(()),
        )
        .await?
        .0
    };
    answer_job(&state, &submitter.0, headers, peer, job, &notices).await
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim().to_ascii_lowercase();
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        })
}

/// A submitted edit: its job (with the watch a waiting client uses) and the model's lifecycle notices.
pub type SubmittedEdit = (
    crate::submit::Submitted,
    Vec<imagegen_shared::domain::LifecycleNotice>,
);

/// A multipart edit from its body to a queued job; `endpoint` binds the Idempotency-Key. `adapt` sees the text fields
/// first (the OpenAI-compatible form renames and takes out its own) and what it returns is handed back.
pub async fn submit_multipart<T>(
    state: &AppState,
    submitter: &Submitter,
    correlation_id: &str,
    peer: SocketAddr,
    request: Request,
    endpoint: &'static str,
    adapt: impl FnOnce(&mut std::collections::BTreeMap<String, String>) -> Result<T, ApiError>,
) -> Result<(SubmittedEdit, T), ApiError> {
    let headers: HeaderMap = request.headers().clone();
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_multipart {
        return Err(ApiError::UnsupportedMediaType);
    }
    let multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::InvalidBody(e.body_text()))?;
    let mut upload = read_upload(multipart, &state.edits.limits).await?;
    let adapted = adapt(&mut upload.fields)?;
    let input_fidelity = upload
        .fields
        .remove("input_fidelity")
        .map(|v| v.parse::<InputFidelity>())
        .transpose()
        .map_err(|e| {
            ApiError::Validation(imagegen_shared::domain::ValidationErrors::one(
                "input_fidelity",
                e,
            ))
        })?;
    let body = crate::edits::body_from_fields(upload.fields)?;
    let uploaded = |bytes| InputSource::Bytes {
        bytes,
        source_image: None,
    };
    let edit = EditRequest {
        body,
        input_fidelity,
        sources: Sources {
            images: upload.images.into_iter().map(uploaded).collect(),
            mask: upload.mask.map(uploaded),
        },
    };
    let submitted = submit_edit(
        state,
        submitter,
        correlation_id,
        peer,
        &headers,
        endpoint,
        edit,
    )
    .await?;
    Ok((submitted, adapted))
}

/// An edit's images and mask, wherever each comes from.
#[derive(Debug, Default)]
pub struct Sources {
    pub images: Vec<InputSource>,
    pub mask: Option<InputSource>,
}

/// An edit as either form gives it: generate's fields, `input_fidelity` and the inputs.
pub struct EditRequest {
    pub body: imagegen_shared::domain::GenerateBody,
    pub input_fidelity: Option<InputFidelity>,
    pub sources: Sources,
}

/// An edit accepted and its inputs checked against the model that will serve it, nothing stored yet.
pub struct PreparedEdit {
    pub accepted: Accepted,
    pub staged: crate::edits::StagedEdit,
}

/// Validates an edit's fields (as generate's, with the edit's shape so the model chosen can take the inputs), then
/// checks the inputs against that model.
pub fn prepare(
    state: &AppState,
    edit: EditRequest,
    header_deadline: Option<u32>,
) -> Result<PreparedEdit, ApiError> {
    let EditRequest {
        body,
        input_fidelity,
        sources,
    } = edit;
    let params = EditParams {
        images: u8::try_from(sources.images.len()).unwrap_or(u8::MAX),
        mask: sources.mask.is_some(),
        input_fidelity,
    };
    let accepted = accept_with(state, body, header_deadline, Some(params))?;
    let offer = state.offer();
    let model = offer
        .catalogue
        .get(accepted.request.model().as_str())
        .cloned()
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("resolved model not in the catalogue"))
        })?;
    let staged =
        crate::edits::stage_sources(&model, sources.images, sources.mask, &state.edits.limits)?;
    Ok(PreparedEdit { accepted, staged })
}

/// An edit from its fields and inputs to a queued job: prepared, the Idempotency-Key bound to the fields and the
/// inputs (`endpoint` names the route), then submitted as a generation.
pub async fn submit_edit(
    state: &AppState,
    submitter: &Submitter,
    correlation_id: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    endpoint: &'static str,
    edit: EditRequest,
) -> Result<SubmittedEdit, ApiError> {
    let PreparedEdit {
        accepted: Accepted {
            mut request,
            notices,
        },
        staged,
    } = prepare(state, edit, crate::extract::cancel_after(headers)?)?;
    // The key covers the inputs too: the same fields with other pictures are another request.
    let identity = staged.identity();
    let idempotency = Idempotency::from_headers(headers, endpoint, &(&request, &identity))?;
    request.set_webhook_link_base(super::base_url(state, headers, peer).base);
    let job = submit_job(
        state,
        submitter,
        correlation_id,
        request,
        idempotency.as_ref(),
        &staged,
    )
    .await?;
    Ok((job, notices))
}

/// Edit several sets of images.
///
/// A JSON array of 1 to BATCH_MAX_REQUESTS edits in the JSON form of `POST /api/v1/edits` (inputs by `image_id` or
/// `image_url`). Any invalid item rejects the whole batch (400, each problem named by its index, e.g.
/// `[1].image[0]`) with nothing stored or queued. Otherwise every item becomes a job with its own inputs, answered as
/// `POST /api/v1/generate/batch` answers (wait mode, or 202 and `GET /api/v1/batches/{id}`).
#[utoipa::path(post, path = "/api/v1/edits/batch", tag = "generation",
    request_body = Vec<crate::edit_json::EditJson>,
    params(("Prefer" = Option<String>, Header, nullable = false, description = "`wait=N` (seconds) or `respond-async`"),
           ("Idempotency-Key" = Option<String>, Header, nullable = false,
               description = "1 to 255 visible ASCII characters: the same key and edits (inputs included) give the same batch"),
           ("Cancel-After" = Option<String>, Header, nullable = false, pattern = r"^[+-]?[0-9]+$",
               description = "Seconds, 1 to 86400: cancel each job that has not started by then"),
           ("X-Correlation-ID" = Option<String>, Header, nullable = false, description = "Your id for tracing; echoed back")),
    responses(
        (status = 200, description = "Every item ended", body = crate::views::BatchView),
        (status = 202, description = "Some items still running; poll `Location`", body = crate::views::BatchView,
            headers(("Location" = String, description = "The batch's URL"), ("Retry-After" = u64))),
        (status = 400, description = "An item or input is invalid (named by index), or the batch is empty or too large", body = ErrorBody),
        (status = 402, description = "A budget is spent (`budget_exceeded`)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB, or an image over EDIT_MAX_IMAGE_BYTES (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not sent as `application/json`", body = ErrorBody),
        (status = 422, description = "This Idempotency-Key was used with another request (`idempotency_key_reused`)", body = ErrorBody),
        (status = 503, description = "Database, queue or storage unavailable", body = ErrorBody),
    ))]
pub async fn edit_batch(
    State(state): State<AppState>,
    submitter: Submitter,
    CorrelationId(correlation_id): CorrelationId,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AppJson(items): AppJson<Vec<serde_json::Value>>,
) -> Result<Response, ApiError> {
    if items.is_empty() || items.len() > state.batch_max_requests {
        return Err(ApiError::InvalidBody(format!(
            "A batch holds 1 to {} edits, got {}",
            state.batch_max_requests,
            items.len()
        )));
    }
    let header_deadline = crate::extract::cancel_after(&headers)?;
    let mut prepared = Vec::with_capacity(items.len());
    let mut errors = ValidationErrors::default();
    for (index, item) in items.into_iter().enumerate() {
        let result = async {
            let edit = crate::edit_json::parse_value(item)?;
            let sources =
                crate::edit_json::resolve(&state, &submitter.0, edit.images, edit.mask).await?;
            let request = EditRequest {
                body: edit.body,
                input_fidelity: edit.input_fidelity,
                sources,
            };
            prepare(&state, request, header_deadline)
        }
        .await;
        match result {
            Ok(p) => prepared.push(p),
            Err(e) => crate::submit::collect_item_error(&mut errors, index, e)?,
        }
    }
    if !errors.0.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let notices: Vec<_> = prepared
        .iter()
        .flat_map(|p| p.accepted.notices.clone())
        .collect();
    let identities: Vec<Vec<String>> = prepared.iter().map(|p| p.staged.identity()).collect();
    let (mut requests, inputs): (Vec<_>, Vec<_>) = prepared
        .into_iter()
        .map(|p| (p.accepted.request, p.staged))
        .unzip();
    let idempotency =
        Idempotency::from_headers(&headers, "edits/batch", &(&requests, &identities))?;
    let links_base = super::base_url(&state, &headers, peer).base;
    for request in &mut requests {
        request.set_webhook_link_base(links_base.clone());
    }
    // Boxed, as in `generate_batch`: a waiting batch holds only the wait's state.
    let (batch, jobs) = Box::pin(crate::submit::submit_batch(
        &state,
        &submitter,
        &correlation_id,
        requests,
        inputs,
        idempotency.as_ref(),
    ))
    .await?;
    super::generate::answer_batch(&state, &submitter.0, &headers, peer, batch, jobs, &notices).await
}
