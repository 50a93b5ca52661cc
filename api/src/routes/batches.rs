//! `GET /api/v1/batches/{id}`: a batch with every item's status and images.

use super::base_url;
use super::generate::batch_response;
use super::jobs::WaitQuery;
use crate::auth::Owner;
use crate::error::{ApiError, ErrorBody};
use crate::extract::AppQuery;
use crate::extract::PathId;
use crate::state::AppState;
use crate::views::{BatchView, batch_view};
use crate::wait::wait_for_batch;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use imagegen_shared::db;
use imagegen_shared::domain::{BatchId, JobId};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/batches/{id}", get(get_batch))
}

/// Get a batch; `?wait=N` holds the request until every item has ended.
#[utoipa::path(get, path = "/api/v1/batches/{id}", tag = "generation",
    params(("id" = String, Path, format = Uuid, description = "Batch id"), WaitQuery),
    responses(
        (status = 200, description = "Every item ended", body = BatchView),
        (status = 202, description = "Some items still running", body = BatchView,
            headers(("Location" = String, description = "The batch's URL"), ("Retry-After" = u64))),
        (status = 400, description = "A malformed or out-of-range `wait`", body = ErrorBody),
        (status = 404, description = "No such batch (for this caller)", body = ErrorBody),
    ))]
pub async fn get_batch(
    State(state): State<AppState>,
    Owner(owner): Owner,
    PathId(id): PathId<BatchId>,
    AppQuery(query): AppQuery<WaitQuery>,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Result<Response, ApiError> {
    let hold = query.hold(state.wait_max)?;
    let batch = db::batches::get_batch(&state.pool, &owner, id)
        .await?
        .ok_or(ApiError::NotFound("Batch"))?;
    let mut jobs = db::jobs::jobs_in_batch(&state.pool, &owner, id).await?;
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    if let Some(wait) = hold {
        jobs = wait_for_batch(&state, &owner, id, &ids, wait).await?;
    }
    let images = db::images::images_for_jobs(&state.pool, &owner, &ids).await?;
    Ok(batch_response(batch_view(
        &base_url(&state, &headers, peer),
        &batch,
        &jobs,
        &images,
        &state.providers.sandbox,
    )))
}
