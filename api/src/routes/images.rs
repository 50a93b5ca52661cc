//! `GET /api/v1/images/{id}` (metadata), `GET /api/v1/images/{id}/download` (streamed bytes) and
//! `DELETE /api/v1/images/{id}` (object, metadata and row).

use super::base_url;
use crate::auth::Owner;
use crate::error::{ApiError, ErrorBody};
use crate::extract::AppQuery;
use crate::extract::PathId;
use crate::state::AppState;
use crate::views::{ImageView, image_view};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
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
#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "images",
    params(("id" = String, Path, format = Uuid, description = "Image id")),
    responses((status = 200, description = "The image's metadata", body = ImageView),
        (status = 404, description = "No such image (for this caller)", body = ErrorBody)))]
pub async fn get_image(
    State(state): State<AppState>,
    Owner(owner): Owner,
    PathId(id): PathId<ImageId>,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Result<axum::Json<ImageView>, ApiError> {
    let image = db::images::get_image(&state.pool, &owner, id)
        .await?
        .ok_or(ApiError::NotFound("Image"))?;
    // With its share of the job's cost (the job's pictures split it evenly).
    let job = db::jobs::get_job(&state.pool, &owner, image.job_id).await?;
    let pictures = match &job {
        Some(j) => db::images::images_for_jobs(&state.pool, &owner, &[j.id])
            .await?
            .len(),
        None => 1,
    };
    Ok(axum::Json(image_view(
        &base_url(&state, &headers, peer),
        &image,
        job.as_ref().map(|j| (j, pictures)),
    )))
}

/// Download a stored image.
///
/// Streams the bytes with Content-Type, Content-Length and an ETag (the sha256); `If-None-Match` answers 304 and a
/// single `Range` 206 (416 beyond the end). With STORAGE_PUBLIC_URLS=signed it answers 307 to a short-lived
/// pre-signed storage URL instead.
#[utoipa::path(get, path = "/api/v1/images/{id}/download", tag = "images",
    params(("id" = String, Path, format = Uuid, description = "Image id"),
        // Text, not an integer: the server takes any value, and a malformed one fails the link check (404).
        ("expires" = Option<String>, Query, nullable = false, description = "Signed link: expiry (Unix seconds)"),
        ("signature" = Option<String>, Query, nullable = false, description = "Signed link: HMAC-SHA256, hex"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "ETag of a previous download"),
        ("Range" = Option<String>, Header, nullable = false,
            description = "One `bytes=` range; anything else is ignored (the whole image)")),
    responses(
        (status = 200, description = "The image (PNG, JPEG or WebP, as the provider made it)",
            content((Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/webp")),
            headers(("ETag" = String), ("Content-Length" = u64))),
        (status = 206, description = "The requested byte range",
            content((Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/webp")),
            headers(("Content-Range" = String))),
        (status = 304, description = "Unchanged", headers(("ETag" = String))),
        (status = 307, description = "Fetch it from this pre-signed storage URL (STORAGE_PUBLIC_URLS=signed)",
            headers(("Location" = String))),
        (status = 400, description = "A malformed query string", body = ErrorBody),
        (status = 404, description = "No such image (for this caller), or a bad or expired signed link", body = ErrorBody),
        (status = 416, description = "The range starts beyond the end (`error`)", body = ErrorBody,
            headers(("Content-Range" = String))),
    ))]
pub async fn download_image(
    State(state): State<AppState>,
    PathId(id): PathId<ImageId>,
    AppQuery(link): AppQuery<SignedLink>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let expires = link
        .expires
        .as_deref()
        .map(|e| e.parse::<u64>().unwrap_or(0));
    let image = match (&state.link_signer, expires, link.signature.as_deref()) {
        // A signed link proves itself (it works in `<img src>`); a bad or expired one is a 404 like a missing image.
        (Some(signer), Some(expires), Some(signature)) => {
            let image = db::images::get_image_unscoped(&state.pool, id)
                .await?
                .ok_or(ApiError::NotFound("Image"))?;
            if !signer.verify(id, &image.owner, expires, signature) {
                tracing::info!(image_id = %id, "download refused: link signature invalid or expired");
                return Err(ApiError::NotFound("Image"));
            }
            image
        }
        _ => {
            let owner = match principal {
                Some(axum::Extension(p)) => p.owner,
                None => crate::auth::authenticate(&headers, &state).await?.owner,
            };
            db::images::get_image(&state.pool, &owner, id)
                .await?
                .ok_or(ApiError::NotFound("Image"))?
        }
    };
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
    // Direct downloads (STORAGE_PUBLIC_URLS=signed): the client fetches from S3 or Azure with a short-lived URL.
    match state.storage.signed_url(&image.storage_key).await {
        Ok(Some(url)) => {
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            let h = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(url.as_str()) {
                h.insert(header::LOCATION, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(response);
        }
        Ok(None) => {}
        Err(e) => {
            return Err(ApiError::Unavailable(format!(
                "Image storage cannot sign a download URL: {e}"
            )));
        }
    }
    let size = u64::try_from(image.size_bytes).unwrap_or(0);
    let range = match headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, size))
    {
        Some(RangeRequest::Unsatisfiable) => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
        Some(RangeRequest::Range(r)) => Some(r),
        Some(RangeRequest::Ignore) | None => None,
    };
    let object = match state
        .storage
        .get_range(&image.storage_key, range.clone())
        .await
    {
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
    let length = object.range.end - object.range.start;
    let mut response = Response::new(Body::from_stream(object.into_stream()));
    if let Some(r) = &range {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1)) {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&image.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, cache);
    Ok(response)
}

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// One satisfiable range (end exclusive).
    Range(std::ops::Range<u64>),
    /// A well-formed range starting beyond the end: 416.
    Unsatisfiable,
    /// Anything else (several ranges, other units, malformed): the whole object, as RFC 9110 allows.
    Ignore,
}

fn parse_range(header: &str, size: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignore;
    };
    if spec.contains(',') {
        return RangeRequest::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // The last N bytes.
        return match last.parse::<u64>() {
            Ok(0) => RangeRequest::Unsatisfiable,
            Ok(n) if size > 0 => RangeRequest::Range(size.saturating_sub(n)..size),
            Ok(_) => RangeRequest::Unsatisfiable,
            Err(_) => RangeRequest::Ignore,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeRequest::Ignore;
    };
    let end = if last.is_empty() {
        size
    } else {
        match last.parse::<u64>() {
            Ok(l) if l >= start => (l + 1).min(size),
            _ => return RangeRequest::Ignore,
        }
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Range(start..end)
}

#[cfg(test)]
mod tests {
    use super::{RangeRequest, parse_range};

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeRequest::Range(0..10));
        assert_eq!(parse_range("bytes=90-", 100), RangeRequest::Range(90..100));
        assert_eq!(parse_range("bytes=-10", 100), RangeRequest::Range(90..100));
        assert_eq!(parse_range("bytes=-500", 100), RangeRequest::Range(0..100));
        assert_eq!(
            parse_range("bytes=50-500", 100),
            RangeRequest::Range(50..100)
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeRequest::Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeRequest::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeRequest::Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), RangeRequest::Ignore);
    }
}

/// `?expires=UNIX&signature=HEX` of a signed download link (see `links`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct SignedLink {
    /// Text, so a malformed value is a failed check (404) rather than a query error.
    expires: Option<String>,
    signature: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedView {
    pub success: bool,
    pub image_id: ImageId,
    pub message: String,
}

/// Delete a stored image: the object, its metadata and its row. Afterwards the id answers 404.
#[utoipa::path(delete, path = "/api/v1/images/{id}", tag = "images",
    params(("id" = String, Path, format = Uuid, description = "Image id")),
    responses((status = 200, description = "Deleted", body = DeletedView),
        (status = 404, description = "No such image (for this caller)", body = ErrorBody)))]
pub async fn delete_image(
    State(state): State<AppState>,
    Owner(owner): Owner,
    PathId(id): PathId<ImageId>,
) -> Result<axum::Json<DeletedView>, ApiError> {
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
