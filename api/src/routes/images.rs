//! `GET /api/v1/images/{id}` (metadata), `GET /api/v1/images/{id}/download` (streamed bytes) and
//! `DELETE /api/v1/images/{id}` (object, metadata and row).

use super::base_url;
use super::jobs::parse_id;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Owner;
use crate::state::AppState;
use crate::views::{ImageView, image_view};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use imagegen_shared::db;
use imagegen_shared::domain::ImageId;
use imagegen_shared::storage::StorageError;
use serde::Serialize;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/images/{id}", get(get_image).delete(delete_image))
        .route("/api/v1/images/{id}/download", get(download_image))
}

/// Get an image's metadata.
#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "images", params(("id" = String, Path, description = "Image id")),
    responses((status = 200, body = ImageView), (status = 404, body = ErrorBody)))]
pub async fn get_image(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::Json<ImageView>, ApiError> {
    let id: ImageId = parse_id(&id, "Image")?;
    let image = db::images::get_image(&state.pool, &owner, id)
        .await?
        .ok_or(ApiError::NotFound("Image"))?;
    Ok(axum::Json(image_view(&base_url(&state, &headers), &image)))
}

/// Download a stored image.
///
/// Streams the bytes with Content-Type, Content-Length and an ETag (the sha256); `If-None-Match` answers 304.
#[utoipa::path(get, path = "/api/v1/images/{id}/download", tag = "images",
    params(("id" = String, Path, description = "Image id")),
    responses(
        (status = 200, description = "The image", content_type = "image/png", body = Vec<u8>),
        (status = 304, description = "Unchanged"),
        (status = 404, body = ErrorBody),
    ))]
pub async fn download_image(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: ImageId = parse_id(&id, "Image")?;
    let image = db::images::get_image(&state.pool, &owner, id)
        .await?
        .ok_or(ApiError::NotFound("Image"))?;
    let etag = format!("\"{}\"", image.sha256);
    let cache = HeaderValue::from_static("private, max-age=31536000, immutable");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*")
        })
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, v);
        }
        response.headers_mut().insert(header::CACHE_CONTROL, cache);
        return Ok(response);
    }
    let object = match state.storage.get(&image.storage_key).await {
        Ok(o) => o,
        Err(StorageError::NotFound) => {
            tracing::error!(image_id = %id, key = %image.storage_key, "image row without a stored object");
            return Err(ApiError::NotFound("Image"));
        }
        Err(e) => {
            return Err(ApiError::Unavailable(format!(
                "Image storage is unavailable: {e}"
            )));
        }
    };
    let length = object.meta.size;
    let mut response = Response::new(Body::from_stream(object.into_stream()));
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&image.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, cache);
    Ok(response)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedView {
    pub success: bool,
    pub image_id: ImageId,
    pub message: String,
}

/// Delete a stored image: the object, its metadata and its row. Afterwards the id answers 404.
#[utoipa::path(delete, path = "/api/v1/images/{id}", tag = "images", params(("id" = String, Path, description = "Image id")),
    responses((status = 200, body = DeletedView), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn delete_image(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<axum::Json<DeletedView>, ApiError> {
    let id: ImageId = parse_id(&id, "Image")?;
    let image = db::images::get_image(&state.pool, &owner, id)
        .await?
        .ok_or(ApiError::NotFound("Image"))?;
    // Object first: if it fails, the row stays and the client can retry; never a row-less (unreachable) object.
    state
        .storage
        .delete_image(&image.storage_key)
        .await
        .map_err(|e| ApiError::Unavailable(format!("Image storage is unavailable: {e}")))?;
    if !db::images::delete_image(&state.pool, &owner, id).await? {
        return Err(ApiError::NotFound("Image"));
    }
    tracing::info!(image_id = %id, "image deleted");
    Ok(axum::Json(DeletedView {
        success: true,
        image_id: id,
        message: "Image deleted".into(),
    }))
}
