//! Provider clients behind one trait, one client per configured provider, each serving every catalogue model its
//! protocol offers. A client turns a `Call` (a model's provider-side name and the request translated for it) into
//! pictures (inline bytes or a short-lived URL) and classifies every failure as retryable, final, or a
//! content-policy decision. `http` holds what the clients share (the HTTP client, bounded reads, error classes);
//! `images_api` the OpenAI Images API body and answer that OpenAI and Azure OpenAI share.

pub mod azure;
pub mod bfl;
pub mod flux;
pub mod http;
pub mod images_api;
pub mod images_api_edit;
pub mod inline_b64;
pub mod openai;
pub mod stream;

use async_trait::async_trait;
use imagegen_shared::catalogue::ModelSpec;
use imagegen_shared::domain::{GenerationRequest, ModerationStage, ProviderId};
use std::time::Duration;

/// Where a generated picture can be fetched from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// Base64 bytes inline in the provider's answer, still encoded (streamed partial answers).
    Base64(String),
    /// Inline bytes already decoded (and hashed) while the answer was read (`inline_b64`).
    Decoded(inline_b64::InlineImage),
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
    /// What the provider told us (request ids, processing time, model, echoed options); kept on the job.
    pub meta: serde_json::Value,
    /// Token usage as the provider reported it (GPT image models), summed over the calls; kept on the job.
    pub usage: Option<serde_json::Value>,
}

/// One provider call's worth of work.
pub struct Call<'a> {
    pub model: &'a ModelSpec,
    /// The model's name at this provider: its id, the Azure deployment, the BFL endpoint.
    pub provider_model: &'a str,
    /// The request as translated for this model and provider.
    pub request: &'a GenerationRequest,
    pub correlation_id: &'a str,
    /// Where partial pictures go when the request asks for them and the provider streams (`stream`).
    pub partials: Option<&'a stream::PartialSink>,
    /// An edit's input bytes (loaded from storage once per attempt); `None` for text-to-image.
    pub edit: Option<&'a EditInputs>,
}

/// One input image of an edit, as stored with its job.
#[derive(Debug, Clone)]
pub struct InputBytes {
    pub bytes: bytes::Bytes,
    /// `image/png`, `image/jpeg` or `image/webp` (from the decoded header at submission or fetch).
    pub content_type: String,
    pub width: u32,
    pub height: u32,
}

/// The inputs an edit sends: images in the order given, the mask, and `input_fidelity` (GPT image models).
#[derive(Debug, Clone)]
pub struct EditInputs {
    pub images: Vec<InputBytes>,
    pub mask: Option<InputBytes>,
    pub input_fidelity: Option<imagegen_shared::domain::InputFidelity>,
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

    /// A 200 answer we cannot use: worth another attempt.
    pub fn invalid_response(label: &str, status: u16, why: impl std::fmt::Display) -> Self {
        ProviderError::Retryable {
            status: Some(status),
            code: Some("invalid_response".into()),
            message: format!("{label} answered {why}"),
            retry_after: None,
        }
    }
}

#[async_trait]
pub trait ImageProvider: Send + Sync {
    fn id(&self) -> ProviderId;
    /// The host names this provider's result URLs may live on (besides the configured allow-list).
    fn download_hosts(&self) -> Vec<String>;
    async fn generate(&self, call: &Call<'_>) -> Result<ProviderOutput, ProviderError>;
}

/// Runs `n` pictures as calls of at most `per_call` each, side by side, merging their pictures, metadata and usage;
/// the attempt fails if any call fails, so a job never ends with part of what it asked for.
pub async fn split_calls<F, Fut>(
    n: u8,
    per_call: u8,
    call: F,
) -> Result<ProviderOutput, ProviderError>
where
    F: Fn(u8) -> Fut,
    Fut: std::future::Future<Output = Result<ProviderOutput, ProviderError>>,
{
    let per_call = per_call.max(1);
    if n <= per_call {
        return call(n).await;
    }
    let sizes: Vec<u8> = (0..n.div_ceil(per_call))
        .map(|i| per_call.min(n - i * per_call))
        .collect();
    let outputs = futures::future::try_join_all(sizes.into_iter().map(&call)).await?;
    let mut meta = outputs.first().map(|o| o.meta.clone()).unwrap_or_default();
    let calls: Vec<serde_json::Value> = outputs.iter().map(|o| o.meta.clone()).collect();
    if let Some(obj) = meta.as_object_mut() {
        obj.insert("calls".into(), serde_json::Value::Array(calls));
    }
    let usage = images_api::sum_usage(outputs.iter().filter_map(|o| o.usage.as_ref()));
    Ok(ProviderOutput {
        images: outputs.into_iter().flat_map(|o| o.images).collect(),
        meta,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn split_calls_cover_n_in_calls_of_the_allowed_size() {
        let seen = std::sync::Mutex::new(Vec::new());
        let out = split_calls(7, 3, |k| {
            seen.lock().expect("lock").push(k);
            async move {
                Ok(ProviderOutput {
                    images: (0..k)
                        .map(|_| GeneratedImage {
                            source: ImageSource::Base64(String::new()),
                            revised_prompt: None,
                            seed: None,
                        })
                        .collect(),
                    meta: serde_json::json!({"n": k}),
                    usage: Some(serde_json::json!({"input_tokens": 1, "output_tokens": u64::from(k) * 10, "total_tokens": 1 + u64::from(k) * 10})),
                })
            }
        })
        .await
        .expect("ok");
        let mut seen = seen.into_inner().expect("lock");
        seen.sort_unstable();
        assert_eq!(seen, [1, 3, 3]);
        assert_eq!(out.images.len(), 7);
        let usage = out.usage.expect("usage");
        assert_eq!(
            (
                usage["input_tokens"].as_u64(),
                usage["output_tokens"].as_u64()
            ),
            (Some(3), Some(70))
        );
    }
}
