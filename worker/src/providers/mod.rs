//! Provider clients behind one trait. A client turns a `GenerationRequest` into pictures (inline bytes or a
//! short-lived URL) and classifies every failure as retryable, final, or a content-policy decision.

pub mod azure;
pub mod bfl;
pub mod flux;
pub mod openai;

use async_trait::async_trait;
use imagegen_shared::domain::{GenerationRequest, ModerationStage, ProviderId};
use std::time::Duration;

/// Where a generated picture can be fetched from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// Base64 bytes inline in the provider's answer.
    Base64(String),
    /// An expiring URL on the provider's hosts; it must be downloaded at once.
    Url(String),
}

#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub source: ImageSource,
    pub revised_prompt: Option<String>,
    pub seed: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ProviderOutput {
    pub images: Vec<GeneratedImage>,
    /// What the provider told us (request id, processing time, model); kept on the job.
    pub meta: serde_json::Value,
}

/// A provider failure, classified once where the wire protocol is known.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth another attempt: timeouts, connection errors, 408/409/429/5xx. `retry_after` is the provider's hint.
    #[error("{message}")]
    Retryable {
        status: Option<u16>,
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Will fail the same way again: bad request, bad credentials, no quota.
    #[error("{message}")]
    Final {
        status: Option<u16>,
        code: Option<String>,
        message: String,
    },
    /// The provider's safety system refused; final, never retried and never failed over.
    #[error("{message}")]
    ContentPolicy {
        stage: ModerationStage,
        message: String,
        categories: Option<serde_json::Value>,
    },
}

impl ProviderError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ProviderError::Retryable { status, .. } | ProviderError::Final { status, .. } => {
                *status
            }
            ProviderError::ContentPolicy { .. } => Some(400),
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            ProviderError::Retryable { code, .. } | ProviderError::Final { code, .. } => {
                code.as_deref()
            }
            ProviderError::ContentPolicy { .. } => Some("content_policy_violation"),
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Retryable { .. } => "retryable",
            ProviderError::Final { .. } => "final",
            ProviderError::ContentPolicy { .. } => "content_policy",
        }
    }
}

#[async_trait]
pub trait ImageProvider: Send + Sync {
    fn id(&self) -> ProviderId;
    /// The route's name in limits, attempts and `served_by`: `dalle3:openai`, `dalle3:azure`, `flux_schnell`.
    fn route(&self) -> &'static str;
    /// The host names this provider's result URLs may live on (besides the configured allow-list).
    fn download_hosts(&self) -> Vec<String>;
    async fn generate(
        &self,
        request: &GenerationRequest,
        correlation_id: &str,
    ) -> Result<ProviderOutput, ProviderError>;
}

/// Runs `n` one-image calls side by side for hosts that take `n=1` only (DALL-E 3), merging their pictures;
/// the attempt fails if any call fails, so a job never ends with part of what it asked for.
pub async fn split_calls<F, Fut>(n: u8, call: F) -> Result<ProviderOutput, ProviderError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<ProviderOutput, ProviderError>>,
{
    if n <= 1 {
        return call().await;
    }
    let outputs = futures::future::try_join_all((0..n).map(|_| call())).await?;
    let mut meta = outputs.first().map(|o| o.meta.clone()).unwrap_or_default();
    let calls: Vec<serde_json::Value> = outputs.iter().map(|o| o.meta.clone()).collect();
    if let Some(obj) = meta.as_object_mut() {
        obj.insert("calls".into(), serde_json::Value::Array(calls));
    }
    Ok(ProviderOutput {
        images: outputs.into_iter().flat_map(|o| o.images).collect(),
        meta,
    })
}

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
) -> Result<(u16, reqwest::header::HeaderMap, bytes::Bytes), ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| openai::transport_error(label, &e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|e| openai::transport_error(label, &e))?;
    Ok((status, headers, body))
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
