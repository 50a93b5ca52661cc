//! DALL-E 3 over the OpenAI Images API (`POST {OPENAI_BASE_URL}/images/generations`). Error classification follows
//! the openai-python client's rules, except that `insufficient_quota` is final.

use super::{GeneratedImage, ImageProvider, ImageSource, ProviderError, ProviderOutput};
use crate::retry::parse_retry_after;
use async_trait::async_trait;
use imagegen_shared::config::OpenAiSettings;
use imagegen_shared::domain::{GenerationRequest, ModerationStage, ProviderId};
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use url::Url;

const MODEL: &str = "dall-e-3";
const LABEL: &str = "DALL-E 3";
/// The prefix older (code-less) safety rejections start with.
pub(crate) const SAFETY_PREFIX: &str = "Your request was rejected as a result of our safety system";
/// Cap on an error body we read, so a misbehaving server cannot make us buffer megabytes of HTML.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResponseFormat {
    /// Inline base64: one round trip, nothing to download.
    #[value(name = "b64_json")]
    B64Json,
    /// A URL on OpenAI's blob storage that lives 60 minutes; downloaded at once.
    Url,
}

pub struct OpenAiClient {
    http: reqwest::Client,
    endpoint: Url,
    settings: OpenAiSettings,
    response_format: ResponseFormat,
}

/// The Images API body (Azure's deployments take the same fields without `model`).
#[derive(Serialize)]
pub(crate) struct CreateImageRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'static str>,
    prompt: &'a str,
    n: u8,
    size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    style: Option<&'static str>,
    response_format: &'static str,
}

#[derive(Deserialize)]
pub(crate) struct ImagesResponse {
    pub data: Vec<ImageItem>,
}

#[derive(Deserialize)]
pub(crate) struct ImageItem {
    pub url: Option<String>,
    pub b64_json: Option<String>,
    pub revised_prompt: Option<String>,
    /// Azure's per-item filter annotations.
    #[serde(default)]
    pub prompt_filter_results: Option<serde_json::Value>,
    #[serde(default)]
    pub content_filter_results: Option<serde_json::Value>,
}

/// Per-item annotations some hosts add (Azure's content filters).
pub(crate) struct ImageItemMeta {
    pub prompt_filter_results: Option<serde_json::Value>,
    pub content_filter_results: Option<serde_json::Value>,
}

pub(crate) fn request_body<'a>(
    req: &'a GenerationRequest,
    model: Option<&'static str>,
    format: ResponseFormat,
) -> CreateImageRequest<'a> {
    CreateImageRequest {
        model,
        prompt: req.prompt.as_str(),
        n: 1,
        size: req.size.to_string(),
        quality: req.quality.map(|q| q.as_str()),
        style: req.style.map(|s| s.as_str()),
        response_format: match format {
            ResponseFormat::B64Json => "b64_json",
            ResponseFormat::Url => "url",
        },
    }
}

/// The pictures of a 200 answer; an answer without any is worth another attempt.
pub(crate) fn parse_images(
    label: &str,
    status: u16,
    body: &[u8],
) -> Result<Vec<(GeneratedImage, ImageItemMeta)>, ProviderError> {
    let parsed: ImagesResponse =
        serde_json::from_slice(body).map_err(|e| ProviderError::Retryable {
            status: Some(status),
            code: Some("invalid_response".into()),
            message: format!("{label} answered with an unreadable body: {e}"),
            retry_after: None,
        })?;
    let images: Vec<_> = parsed
        .data
        .into_iter()
        .filter_map(|item| {
            let source = match (item.b64_json, item.url) {
                (Some(b64), _) => ImageSource::Base64(b64),
                (None, Some(url)) => ImageSource::Url(url),
                (None, None) => return None,
            };
            let meta = ImageItemMeta {
                prompt_filter_results: item.prompt_filter_results,
                content_filter_results: item.content_filter_results,
            };
            Some((
                GeneratedImage {
                    source,
                    revised_prompt: item.revised_prompt,
                    seed: None,
                },
                meta,
            ))
        })
        .collect();
    if images.is_empty() {
        return Err(ProviderError::Retryable {
            status: Some(status),
            code: Some("invalid_response".into()),
            message: format!("{label} answered without an image"),
            retry_after: None,
        });
    }
    Ok(images)
}

#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    error: Option<ErrorBody>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

impl OpenAiClient {
    pub fn new(
        settings: OpenAiSettings,
        timeout: Duration,
        response_format: ResponseFormat,
    ) -> Result<Self, reqwest::Error> {
        let http = super::http_client(timeout)?;
        // Joining onto "v1" would replace it; make sure the base ends with a slash first.
        let mut base = settings.base_url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let endpoint = base.join("images/generations").unwrap_or(base);
        Ok(Self {
            http,
            endpoint,
            settings,
            response_format,
        })
    }
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Turns an error response into our classes (providers.md, "Classification").
pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let envelope: ErrorEnvelope = serde_json::from_slice(body).unwrap_or_default();
    let error = envelope.error.unwrap_or_default();
    let code = error
        .code
        .as_ref()
        .and_then(|c| c.as_str().map(str::to_owned));
    let provider_message = error.message.unwrap_or_default();

    if code.as_deref() == Some("content_policy_violation")
        || provider_message.starts_with(SAFETY_PREFIX)
    {
        return ProviderError::ContentPolicy {
            stage: ModerationStage::Input,
            message: if provider_message.is_empty() {
                SAFETY_PREFIX.to_owned()
            } else {
                provider_message
            },
            categories: None,
        };
    }
    let retry_after = parse_retry_after(headers);
    let code = code.or(error.kind);
    // Our own words for what we pass on to clients; the provider's text can carry (masked) key fragments.
    let message = match status {
        401 | 403 => format!("DALL-E 3 rejected the service's credentials (HTTP {status})"),
        429 if code.as_deref() == Some("insufficient_quota") => {
            "DALL-E 3 quota exhausted for this service".to_owned()
        }
        429 => "DALL-E 3 rate limit reached".to_owned(),
        s if s >= 500 => format!("DALL-E 3 is unavailable (HTTP {s})"),
        _ if !provider_message.is_empty() => {
            format!("DALL-E 3 rejected the request: {provider_message}")
        }
        s => format!("DALL-E 3 rejected the request (HTTP {s})"),
    };
    let should_retry = header_str(headers, "x-should-retry");
    let retryable = match should_retry {
        Some("true") => true,
        Some("false") => false,
        _ => matches!(status, 408 | 409 | 429) || status >= 500,
    } && code.as_deref() != Some("insufficient_quota");
    if retryable {
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

pub(crate) fn transport_error(label: &str, e: &reqwest::Error) -> ProviderError {
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

#[async_trait]
impl ImageProvider for OpenAiClient {
    fn id(&self) -> ProviderId {
        ProviderId::Dalle3
    }

    fn route(&self) -> &'static str {
        "dalle3:openai"
    }

    fn download_hosts(&self) -> Vec<String> {
        self.settings
            .base_url
            .host_str()
            .map(str::to_owned)
            .into_iter()
            .collect()
    }

    async fn generate(
        &self,
        req: &GenerationRequest,
        correlation_id: &str,
    ) -> Result<ProviderOutput, ProviderError> {
        // DALL-E 3 takes n=1 only; more pictures (after a failover) are several calls.
        super::split_calls(req.num_images, || self.call_once(req, correlation_id)).await
    }
}

impl OpenAiClient {
    async fn call_once(
        &self,
        req: &GenerationRequest,
        correlation_id: &str,
    ) -> Result<ProviderOutput, ProviderError> {
        let started = Instant::now();
        let mut call = self
            .http
            .post(self.endpoint.clone())
            .bearer_auth(self.settings.api_key.expose_secret())
            .header("X-Correlation-ID", correlation_id)
            .json(&request_body(req, Some(MODEL), self.response_format));
        if let Some(org) = &self.settings.organization {
            call = call.header("OpenAI-Organization", org);
        }
        if let Some(project) = &self.settings.project {
            call = call.header("OpenAI-Project", project);
        }
        let (status, headers, body) = super::send(LABEL, call).await?;
        let request_id = header_str(&headers, "x-request-id").map(str::to_owned);
        if status != 200 {
            let error = classify(status, &headers, &body[..body.len().min(MAX_ERROR_BODY)]);
            tracing::warn!(
                status,
                request_id,
                kind = error.kind(),
                code = error.code(),
                "dall-e 3 call failed"
            );
            return Err(error);
        }
        let images = parse_images(LABEL, status, &body)?
            .into_iter()
            .map(|(image, _)| image)
            .collect();
        let meta = serde_json::json!({
            "provider": "dalle3",
            "protocol": "openai",
            "model": MODEL,
            "request_id": request_id,
            "processing_ms": header_str(&headers, "openai-processing-ms").and_then(|v| v.parse::<u64>().ok()),
            "elapsed_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        Ok(ProviderOutput { images, meta })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn body(code: Option<&str>, message: &str) -> Vec<u8> {
        serde_json::to_vec(
            &serde_json::json!({"error": {"message": message, "type": "invalid_request_error",
            "param": null, "code": code}}),
        )
        .expect("json")
    }

    #[test]
    fn content_policy_is_its_own_class_with_or_without_code() {
        let h = HeaderMap::new();
        let e = classify(
            400,
            &h,
            &body(
                Some("content_policy_violation"),
                "Your request was rejected as a result of our safety system. x",
            ),
        );
        assert!(matches!(
            e,
            ProviderError::ContentPolicy {
                stage: ModerationStage::Input,
                ..
            }
        ));
        let e = classify(
            400,
            &h,
            &body(
                None,
                "Your request was rejected as a result of our safety system. Old style",
            ),
        );
        assert!(matches!(e, ProviderError::ContentPolicy { .. }));
    }

    #[test]
    fn retry_classes_follow_the_sdk() {
        let h = HeaderMap::new();
        for status in [408, 409, 429, 500, 503] {
            assert!(
                matches!(classify(status, &h, b"{}"), ProviderError::Retryable { .. }),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404] {
            assert!(
                matches!(
                    classify(status, &h, b"not json"),
                    ProviderError::Final { .. }
                ),
                "{status}"
            );
        }
        let quota = classify(
            429,
            &h,
            &body(
                Some("insufficient_quota"),
                "You exceeded your current quota",
            ),
        );
        assert!(matches!(quota, ProviderError::Final { .. }));
        let mut h = HeaderMap::new();
        h.insert("x-should-retry", HeaderValue::from_static("false"));
        assert!(matches!(
            classify(500, &h, b"{}"),
            ProviderError::Final { .. }
        ));
        h.insert("x-should-retry", HeaderValue::from_static("true"));
        assert!(matches!(
            classify(400, &h, b"{}"),
            ProviderError::Retryable { .. }
        ));
    }

    #[test]
    fn auth_errors_do_not_echo_key_fragments() {
        let e = classify(
            401,
            &HeaderMap::new(),
            &body(
                Some("invalid_api_key"),
                "Incorrect API key provided: sk-...abcd.",
            ),
        );
        assert!(!e.to_string().contains("abcd"), "{e}");
    }

    #[test]
    fn retry_after_header_is_kept() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        match classify(429, &h, &body(Some("rate_limit_exceeded"), "Rate limit")) {
            ProviderError::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("expected retryable, got {other:?}"),
        }
    }
}
