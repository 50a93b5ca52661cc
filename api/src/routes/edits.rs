//! `POST /api/v1/edits`: an edit of uploaded images (multipart). The inputs are checked against the model that will
//! serve the edit before anything is stored or queued; then the job runs as a generate job does (wait mode or
//! submit/poll, idempotency, limits, budgets, webhooks).

use super::generate::answer_job;
use crate::auth::Submitter;
use crate::edit_upload::{FIELDS_BYTES, read_upload};
use crate::error::{ApiError, ErrorBody};
use crate::extract::CorrelationId;
use crate::state::AppState;
use crate::submit::{Accepted, Idempotency, accept_with, submit_job_with};
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use axum::routing::post;
use imagegen_shared::domain::{EditParams, InputFidelity};
use std::net::SocketAddr;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new().route(
        "/api/v1/edits",
        post(edit).layer(DefaultBodyLimit::max(body_limit(state))),
    )
}

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
/// images to edit uploaded. Every refusal of an input names it (`image[1]`, `mask`) and nothing is stored or queued.
#[utoipa::path(post, path = "/api/v1/edits", tag = "generation",
    request_body(content = EditForm, content_type = "multipart/form-data"),
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
        (status = 415, description = "Body not sent as `multipart/form-data`", body = ErrorBody),
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
    let ((job, notices), ()) = submit_multipart(
        &state,
        &submitter,
        &correlation_id,
        peer,
        request,
        "edits",
        |_| Ok(()),
    )
    .await?;
    answer_job(&state, &submitter.0, headers, peer, job, &notices).await
}

/// A submitted edit: its job and the model's lifecycle notices.
pub type SubmittedEdit = (
    imagegen_shared::db::JobRecord,
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
    let edit = EditParams {
        images: u8::try_from(upload.images.len()).unwrap_or(u8::MAX),
        mask: upload.mask.is_some(),
        input_fidelity,
    };
    let Accepted {
        mut request,
        notices,
    } = accept_with(
        state,
        body,
        crate::extract::cancel_after(&headers)?,
        Some(edit),
    )?;
    let offer = state.offer();
    let model = offer
        .catalogue
        .get(request.model().as_str())
        .cloned()
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("resolved model not in the catalogue"))
        })?;
    let staged = crate::edits::stage(&model, upload.images, upload.mask, &state.edits.limits)?;
    // The key covers the inputs too: the same fields with other pictures are another request.
    let digests: Vec<&str> = staged.iter().map(|s| s.sha256.as_str()).collect();
    let idempotency = Idempotency::from_headers(&headers, endpoint, &(&request, &digests))?;
    request.set_webhook_link_base(super::base_url(state, &headers, peer).base);
    let job = submit_job_with(
        state,
        submitter,
        correlation_id,
        request,
        idempotency.as_ref(),
        &staged,
    )
    .await?;
    Ok(((job, notices), adapted))
}
