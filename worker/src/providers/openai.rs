//! The OpenAI Images API (`POST {OPENAI_BASE_URL}/images/generations`) for every OpenAI model in the catalogue:
//! GPT image models (base64 answers with token `usage`) and, while OpenAI still answered for them, DALL-E. Error
//! classification follows the openai-python client's rules, except that `insufficient_quota` is final and a
//! retired or unknown model (404 `model_not_found`) says so.

use super::http::{self, header_str};
use super::images_api::{
    ResponseFormat, SAFETY_PREFIX, parse_images, request_body, send_images, stream_partials,
};
use super::images_api_edit::{edit_form, edits_url};
use super::{Call, ImageProvider, ProviderError, ProviderOutput};
use crate::picture_memory::PictureMemory;
use crate::retry::parse_retry_after;
use async_trait::async_trait;
use imagegen_shared::config::OpenAiSettings;
use imagegen_shared::domain::{ModerationStage, ProviderId};
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde::Deserialize;
use std::time::{Duration, Instant};
use url::Url;

const LABEL: &str = "OpenAI";

pub struct OpenAiClient {
    http: reqwest::Client,
    endpoint: Url,
    settings: OpenAiSettings,
    response_format: ResponseFormat,
    /// MAX_IMAGE_BYTES: bounds how much of an answer is read.
    max_image_bytes: u64,
    /// WORKER_PICTURE_MEMORY_MB: reserved before an answer's pictures are read.
    memory: PictureMemory,
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
        max_image_bytes: u64,
        memory: PictureMemory,
    ) -> Result<Self, reqwest::Error> {
        let http = http::http_client(timeout)?;
        let base = http::as_directory(&settings.base_url);
        let endpoint = base.join("images/generations").unwrap_or(base);
        Ok(Self {
            http,
            endpoint,
            settings,
            response_format,
            max_image_bytes,
            memory,
        })
    }
}

/// Turns an error response into our classes (providers.md, "Classification").
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
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
        404 if code.as_deref() == Some("model_not_found") => {
            format!("{LABEL} does not serve this model (retired or not available to this account)")
        }
        401 | 403 => format!("{LABEL} rejected the service's credentials (HTTP {status})"),
        429 if code.as_deref() == Some("insufficient_quota") => {
            format!("{LABEL} quota exhausted for this service")
        }
        429 => format!("{LABEL} rate limit reached"),
        s if s >= 500 => format!("{LABEL} is unavailable (HTTP {s})"),
        _ if !provider_message.is_empty() => {
            format!("{LABEL} rejected the request: {provider_message}")
        }
        s => format!("{LABEL} rejected the request (HTTP {s})"),
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

#[async_trait]
impl ImageProvider for OpenAiClient {
    fn id(&self) -> ProviderId {
        ProviderId::OpenAi
    }

    fn download_hosts(&self) -> Vec<String> {
        self.settings
            .base_url
            .host_str()
            .map(str::to_owned)
            .into_iter()
            .collect()
    }

    async fn generate(&self, call: &Call<'_>) -> Result<ProviderOutput, ProviderError> {
        super::split_calls(call.request.num_images(), call.model.images_per_call, |n| {
            self.call_once(call, n)
        })
        .await
    }
}

impl OpenAiClient {
    async fn call_once(&self, call: &Call<'_>, n: u8) -> Result<ProviderOutput, ProviderError> {
        let started = Instant::now();
        let mut body = request_body(
            call.request,
            call.model,
            Some(call.provider_model),
            n,
            self.response_format,
        );
        // Partial pictures asked for and someone to hand them to: a streamed answer (never for an edit).
        let sink = match call.edit {
            None => stream_partials(call, &mut body),
            Some(_) => None,
        };
        let url = match call.edit {
            None => self.endpoint.clone(),
            Some(_) => edits_url(&self.endpoint.clone()),
        };
        let request = self
            .http
            .post(url)
            .bearer_auth(self.settings.api_key.expose_secret())
            .header("X-Correlation-ID", call.correlation_id);
        let mut request = match call.edit {
            None => request.json(&body),
            Some(edit) => request.multipart(edit_form(&body, edit)?),
        };
        if let Some(org) = &self.settings.organization {
            request = request.header("OpenAI-Organization", org);
        }
        if let Some(project) = &self.settings.project {
            request = request.header("OpenAI-Project", project);
        }
        let (status, headers, answer) = send_images(
            LABEL,
            request,
            sink,
            call.request.partial_images(),
            n,
            self.max_image_bytes,
            &self.memory,
        )
        .await?;
        let request_id = header_str(&headers, "x-request-id").map(str::to_owned);
        let parsed = match answer {
            http::Answer::Body(bytes) if status != 200 => {
                let error = classify(status, &headers, &bytes);
                tracing::warn!(
                    status,
                    request_id,
                    kind = error.kind(),
                    code = error.code(),
                    model = call.provider_model,
                    "openai call failed"
                );
                return Err(error);
            }
            http::Answer::Body(bytes) => {
                parse_images(LABEL, status, &bytes, n, self.max_image_bytes)?
            }
            http::Answer::Parsed(parsed) => parsed,
        };
        let meta = serde_json::json!({
            "provider": "openai",
            "model": call.provider_model,
            "request_id": request_id,
            "processing_ms": header_str(&headers, "openai-processing-ms").and_then(|v| v.parse::<u64>().ok()),
            "answered": parsed.echoed,
            "streamed": sink.is_some(),
            "elapsed_ms": http::elapsed_ms(started),
        });
        Ok(ProviderOutput {
            images: parsed.items.into_iter().map(|(image, _)| image).collect(),
            meta,
            usage: parsed.usage,
        })
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
        let gone = classify(
            404,
            &h,
            &body(
                Some("model_not_found"),
                "The model `dall-e-3` does not exist",
            ),
        );
        assert!(matches!(
            gone,
            ProviderError::Final {
                status: Some(404),
                ..
            }
        ));
        assert!(
            gone.to_string().contains("does not serve this model"),
            "{gone}"
        );
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
