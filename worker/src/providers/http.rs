//! What every provider client shares: one reqwest client per provider (timeouts, a `User-Agent`), a send that reads
//! the answer with a cap, the common retry rule for hosts without their own retry header, and transport errors.

use super::ProviderError;
use reqwest::header::HeaderMap;

/// Cap on an error body we read, so a misbehaving server cannot make us buffer megabytes of HTML.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// The HTTP client every provider uses: a timeout on the whole call, a shorter one on connecting, and a
/// `User-Agent` (some CDNs refuse a blank one).
pub fn http_client(timeout: std::time::Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(std::time::Duration::from_secs(10))
        .user_agent(concat!("imagegen/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sends a provider call and reads the whole answer; transport failures are classified retryable.
pub async fn send(
    label: &str,
    request: reqwest::RequestBuilder,
) -> Result<(u16, HeaderMap, bytes::Bytes), ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(label, &e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|e| transport_error(label, &e))?;
    Ok((status, headers, body))
}

/// The start of an error body, at most `MAX_ERROR_BODY` bytes.
pub fn error_body(body: &[u8]) -> &[u8] {
    &body[..body.len().min(MAX_ERROR_BODY)]
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The common rule for hosts without their own retry header: 408, 429 and 5xx are worth another attempt.
pub fn classified(
    status: u16,
    code: Option<String>,
    message: String,
    retry_after: Option<std::time::Duration>,
) -> ProviderError {
    if matches!(status, 408 | 429) || status >= 500 {
        ProviderError::Retryable {
            status: Some(status),
            code,
            message,
            retry_after,
        }
    } else {
        ProviderError::Final {
            status: Some(status),
            code,
            message,
        }
    }
}

pub fn transport_error(label: &str, e: &reqwest::Error) -> ProviderError {
    let message = if e.is_timeout() {
        format!("{label} did not answer in time")
    } else if e.is_connect() {
        format!("could not connect to {label}")
    } else {
        format!("{label} request failed: {e}")
    };
    ProviderError::Retryable {
        status: None,
        code: Some("network_error".into()),
        message,
        retry_after: None,
    }
}

/// `base` with a trailing slash, so joining a relative path keeps its last segment (`/v1`).
pub fn as_directory(base: &url::Url) -> url::Url {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base
}

/// Milliseconds since `started`, for provider metadata.
pub fn elapsed_ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
