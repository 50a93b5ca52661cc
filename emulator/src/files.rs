//! Result URLs: the emulator keeps each generated picture in memory and serves it, like a provider's blob store,
//! until its signed URL expires (then 403, as Azure Blob Storage answers an expired SAS). Memory is bounded.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Total bytes kept; the oldest pictures are dropped past it.
const MAX_BYTES: usize = 512 * 1024 * 1024;

struct Stored {
    bytes: Bytes,
    expires_at: u64,
}

#[derive(Default)]
pub struct Files {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Stored>,
    order: VecDeque<String>,
    total: usize,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn signature(name: &str, expires_at: u64) -> String {
    hex::encode(
        &Sha256::new()
            .chain_update(name)
            .chain_update(expires_at.to_le_bytes())
            .finalize()[..16],
    )
}

impl Files {
    /// Keeps a picture and returns the path and query of its URL.
    pub fn put(&self, bytes: Bytes, ttl_secs: u64) -> String {
        self.put_with_ext(bytes, ttl_secs, "png")
    }

    pub fn put_with_ext(&self, bytes: Bytes, ttl_secs: u64, ext: &str) -> String {
        let name = format!("{}.{ext}", uuid::Uuid::new_v4());
        let expires_at = now_secs() + ttl_secs;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.total += bytes.len();
        inner
            .by_name
            .insert(name.clone(), Stored { bytes, expires_at });
        inner.order.push_back(name.clone());
        let now = now_secs();
        while inner.total > MAX_BYTES
            || inner
                .order
                .front()
                .is_some_and(|n| inner.by_name.get(n).is_some_and(|s| s.expires_at < now))
        {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(s) = inner.by_name.remove(&old) {
                inner.total -= s.bytes.len();
            }
        }
        format!(
            "/files/{name}?se={expires_at}&sp=r&sig={}",
            signature(&name, expires_at)
        )
    }
}

#[derive(Deserialize)]
pub struct SasQuery {
    se: Option<u64>,
    sig: Option<String>,
}

fn blob_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

pub async fn serve(
    State(files): State<std::sync::Arc<Files>>,
    Path(name): Path<String>,
    Query(q): Query<SasQuery>,
) -> Response {
    let stored = {
        let inner = files.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_name
            .get(&name)
            .map(|s| (s.bytes.clone(), s.expires_at))
    };
    let Some((bytes, expires_at)) = stored else {
        return blob_error(
            StatusCode::NOT_FOUND,
            "BlobNotFound",
            "The specified blob does not exist.",
        );
    };
    let signed =
        q.se == Some(expires_at) && q.sig.as_deref() == Some(signature(&name, expires_at).as_str());
    if !signed || now_secs() >= expires_at {
        return blob_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            "Server failed to authenticate the request. Signed expiry time has passed or the signature is invalid.",
        );
    }
    let len = bytes.len();
    (
        [
            (header::CONTENT_TYPE, "image/png".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from(bytes),
    )
        .into_response()
}
