//! Result URLs (Together's `url` answers, BFL's `result.sample`; the GPT image models answer base64 only): the
//! emulator keeps each generated picture in memory and serves it, like a provider's blob store,
//! until its signed URL expires (then 403, as Azure Blob Storage answers an expired SAS). Memory is bounded: expired
//! pictures are dropped, and past `MAX_BYTES` the oldest go first.

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

pub struct Files {
    /// Signs URLs, so a client cannot stretch a URL's life by editing `se`.
    secret: [u8; 16],
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Stored>,
    /// Names, oldest first.
    order: VecDeque<String>,
    total: usize,
    /// The earliest expiry among the stored pictures: nothing needs sweeping before it.
    next_expiry: u64,
}

impl Default for Files {
    fn default() -> Self {
        Self::with_capacity(MAX_BYTES)
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Inner {
    fn remove(&mut self, name: &str) {
        if let Some(s) = self.by_name.remove(name) {
            self.total -= s.bytes.len();
        }
    }

    /// Drops every expired picture (at most one pass per expiry), then the oldest while over `max_bytes`.
    fn trim(&mut self, now: u64, max_bytes: usize) {
        if !self.by_name.is_empty() && now >= self.next_expiry {
            let expired: Vec<String> = self
                .by_name
                .iter()
                .filter(|(_, s)| s.expires_at <= now)
                .map(|(n, _)| n.clone())
                .collect();
            for name in &expired {
                self.remove(name);
            }
            let by_name = &self.by_name;
            self.order.retain(|n| by_name.contains_key(n));
            self.next_expiry = self
                .by_name
                .values()
                .map(|s| s.expires_at)
                .min()
                .unwrap_or(u64::MAX);
        }
        while self.total > max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.remove(&old);
        }
    }
}

impl Files {
    /// A store holding at most `max_bytes` of pictures.
    pub fn with_capacity(max_bytes: usize) -> Self {
        Self {
            secret: rand::random(),
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn signature(&self, name: &str, expires_at: u64) -> String {
        hex::encode(
            &Sha256::new()
                .chain_update(self.secret)
                .chain_update(name)
                .chain_update(expires_at.to_le_bytes())
                .finalize()[..16],
        )
    }

    /// Keeps a PNG and returns the path and query of its URL.
    pub fn put(&self, bytes: Bytes, ttl_secs: u64) -> String {
        self.put_with_ext(bytes, ttl_secs, "png")
    }

    /// Keeps a picture named `<uuid>.<ext>` (`png`, `jpg` or `webp`) and returns the path and query of its URL.
    pub fn put_with_ext(&self, bytes: Bytes, ttl_secs: u64, ext: &str) -> String {
        let name = format!("{}.{ext}", uuid::Uuid::new_v4());
        let now = now_secs();
        let expires_at = now.saturating_add(ttl_secs);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.trim(now, self.max_bytes.saturating_sub(bytes.len()));
        inner.total += bytes.len();
        inner.next_expiry = if inner.by_name.is_empty() {
            expires_at
        } else {
            inner.next_expiry.min(expires_at)
        };
        inner
            .by_name
            .insert(name.clone(), Stored { bytes, expires_at });
        inner.order.push_back(name.clone());
        format!(
            "/files/{name}?se={expires_at}&sp=r&sig={}",
            self.signature(&name, expires_at)
        )
    }

    /// How many pictures and bytes are kept.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.by_name.len(), inner.total)
    }
}

#[derive(Deserialize)]
pub struct SasQuery {
    se: Option<u64>,
    sig: Option<String>,
}

/// Azure Blob Storage's error answer: an XML body and the `x-ms-error-code` header.
fn blob_error(
    status: StatusCode,
    code: &'static str,
    message: &str,
    detail: Option<&str>,
) -> Response {
    let detail = detail
        .map(|d| format!("<AuthenticationErrorDetail>{d}</AuthenticationErrorDetail>"))
        .unwrap_or_default();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:{}\nTime:{}</Message>{detail}</Error>",
        uuid::Uuid::new_v4(),
        azure_time(chrono::Utc::now())
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "application/xml"),
            (header::HeaderName::from_static("x-ms-error-code"), code),
        ],
        body,
    )
        .into_response()
}

/// Azure's timestamps carry seven fractional digits.
fn azure_time(t: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

fn http_date(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default()
}

const AUTH_FAILED: &str = "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.";

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".jpg") || name.ends_with(".jpeg") {
        "image/jpeg"
    } else if name.ends_with(".webp") {
        "image/webp"
    } else {
        "image/png"
    }
}

/// `GET /files/{name}?se=&sig=`: the picture while its signature holds and it has not expired; 403
/// `AuthenticationFailed` for an expired or tampered URL (also once the picture itself is gone), 404 `BlobNotFound`
/// for a name never handed out.
pub async fn serve(
    State(files): State<std::sync::Arc<Files>>,
    Path(name): Path<String>,
    Query(q): Query<SasQuery>,
) -> Response {
    let now = now_secs();
    let signed_until = match (q.se, q.sig.as_deref()) {
        (Some(se), Some(sig)) if sig == files.signature(&name, se) => Some(se),
        _ => None,
    };
    if let Some(se) = signed_until.filter(|se| now >= *se) {
        let detail = format!(
            "Signature not valid in the specified time frame: Expiry [{}] - Current [{}]",
            http_date(se),
            http_date(now)
        );
        return blob_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            AUTH_FAILED,
            Some(&detail),
        );
    }
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
            None,
        );
    };
    if signed_until != Some(expires_at) {
        return blob_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            AUTH_FAILED,
            Some("Signature did not match."),
        );
    }
    let len = bytes.len();
    (
        [
            (header::CONTENT_TYPE, content_type(&name).to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from(bytes),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(path: &str) -> String {
        path.trim_start_matches("/files/")
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn expired_pictures_are_dropped_and_memory_is_capped() {
        let files = Files::with_capacity(100);
        let gone = files.put(Bytes::from(vec![0; 10]), 0);
        let kept = files.put(Bytes::from(vec![1; 40]), 3600);
        assert_eq!(files.usage(), (1, 40), "the expired picture was swept");
        let newer = files.put(Bytes::from(vec![2; 40]), 3600);
        assert_eq!(files.usage(), (2, 80));
        files.put(Bytes::from(vec![3; 40]), 3600);
        assert_eq!(files.usage(), (2, 80), "the oldest made room");
        let inner = files.inner.lock().expect("lock");
        assert!(!inner.by_name.contains_key(&name_of(&gone)));
        assert!(!inner.by_name.contains_key(&name_of(&kept)));
        assert!(inner.by_name.contains_key(&name_of(&newer)));
        assert_eq!(inner.order.len(), 2);
    }
}
