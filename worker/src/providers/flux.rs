//! FLUX models on an OpenAI-compatible host (Together AI by default): `POST {FLUX_BASE_URL}/images/generations`
//! with the catalogue's provider-side model name (`black-forest-labs/FLUX.1-schnell`), `width`/`height`, `steps`
//! (schnell's 4), `n` (up to the model's per-call figure), `seed`, `response_format: base64|url` and
//! `output_format`. Safety-checker refusals become `moderated` (stage output); the seed we send (the client's, or
//! one we draw) is recorded so a picture can be reproduced.

use super::http::{self, AnswerCap, header_str};
use super::images_api;
use super::inline_b64::{Extracted, InlineImage, placeholder_index};
use super::{Call, GeneratedImage, ImageProvider, ImageSource, ProviderError, ProviderOutput};
use crate::picture_memory::PictureMemory;
use crate::retry::parse_retry_after;
use async_trait::async_trait;
use imagegen_shared::config::FluxSettings;
use imagegen_shared::domain::{ModerationStage, ProviderId};
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use url::Url;

const LABEL: &str = "FLUX host";
/// Schnell is distilled for 1-4 steps; 4 is the hosts' default.
const STEPS: u8 = 4;

pub struct FluxClient {
    http: reqwest::Client,
    endpoint: Url,
    settings: FluxSettings,
    inline: bool,
    /// MAX_IMAGE_BYTES: bounds how much of an answer is read.
    max_image_bytes: u64,
    /// WORKER_PICTURE_MEMORY_MB: reserved before an answer's pictures are read.
    memory: PictureMemory,
}

#[derive(Serialize)]
struct FluxRequest<'a> {
    model: &'a str,
    prompt: &'a str,
    width: u32,
    height: u32,
    steps: u8,
    n: u8,
    seed: u32,
    response_format: &'static str,
    output_format: &'static str,
}

#[derive(Deserialize)]
struct FluxResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    data: Vec<FluxItem>,
}

#[derive(Deserialize)]
struct FluxItem {
    #[serde(default)]
    b64_json: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

impl FluxClient {
    /// `inline` asks for base64 (one round trip); otherwise URLs are downloaded at once. An answer is read up to
    /// what its pictures of `max_image_bytes` (MAX_IMAGE_BYTES) each take as base64.
    pub fn new(
        settings: FluxSettings,
        timeout: Duration,
        inline: bool,
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
            inline,
            max_image_bytes,
            memory,
        })
    }
}

pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let envelope: ErrorEnvelope = serde_json::from_slice(body).unwrap_or_default();
    let error = envelope.error.unwrap_or_default();
    let provider_message = error
        .message
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    let code = error
        .code
        .as_ref()
        .and_then(|c| c.as_str().map(str::to_owned))
        .or(error.kind);
    if (400..500).contains(&status) && provider_message.to_lowercase().contains("nsfw") {
        return ProviderError::ContentPolicy {
            stage: ModerationStage::Output,
            message: provider_message,
            categories: None,
        };
    }
    let message = match status {
        401 | 403 => format!("{LABEL} rejected the service's credentials (HTTP {status})"),
        402 => format!("{LABEL}: the account has no credits left"),
        404 => format!(
            "{LABEL}: model or endpoint not found (check the catalogue entry and FLUX_BASE_URL)"
        ),
        429 => format!("{LABEL} rate limit reached"),
        s if s >= 500 => format!("{LABEL} is unavailable (HTTP {s})"),
        _ if !provider_message.is_empty() => {
            format!("{LABEL} rejected the request: {provider_message}")
        }
        s => format!("{LABEL} rejected the request (HTTP {s})"),
    };
    http::classified(status, code, message, parse_retry_after(headers))
}

#[async_trait]
impl ImageProvider for FluxClient {
    fn id(&self) -> ProviderId {
        ProviderId::Flux
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
        // Without a seed the picture could never be made again; draw one and record it.
        let seed = call.request.seed().unwrap_or_else(rand::random);
        let per_call = call.model.images_per_call;
        let calls = std::sync::atomic::AtomicU32::new(0);
        super::split_calls(call.request.num_images(), per_call, |n| {
            // Each call's pictures take the seeds after the previous call's.
            let first = calls.fetch_add(u32::from(n), std::sync::atomic::Ordering::Relaxed);
            self.call_once(call, n, seed.wrapping_add(first))
        })
        .await
    }
}

impl FluxClient {
    async fn call_once(
        &self,
        call: &Call<'_>,
        n: u8,
        seed: u32,
    ) -> Result<ProviderOutput, ProviderError> {
        let started = Instant::now();
        let req = call.request;
        let size = req
            .size()
            .exact()
            .unwrap_or(imagegen_shared::domain::ImageSize::new(1024, 1024));
        let body = FluxRequest {
            model: call.provider_model,
            prompt: req.prompt().as_str(),
            width: size.width,
            height: size.height,
            steps: STEPS,
            n,
            seed,
            response_format: if self.inline { "base64" } else { "url" },
            output_format: req.output_format().map_or("png", |f| f.as_str()),
        };
        let request = self
            .http
            .post(self.endpoint.clone())
            .bearer_auth(self.settings.api_key.expose_secret())
            .header("X-Correlation-ID", call.correlation_id)
            .json(&body);
        // Base64 answers are decoded and hashed while they stream in (`inline_b64`), never held whole.
        let cap = AnswerCap::images(n, self.max_image_bytes);
        let (status, headers, answer) = http::send_streaming(LABEL, request, |response| {
            images_api::read_answer(LABEL, response, cap, n, self.max_image_bytes, &self.memory)
        })
        .await?;
        let reader = match answer {
            http::Answer::Parsed(reader) => reader,
            http::Answer::Body(bytes) => {
                let error = classify(status, &headers, &bytes);
                tracing::warn!(
                    status,
                    kind = error.kind(),
                    code = error.code(),
                    "flux call failed"
                );
                return Err(error);
            }
        };
        let Extracted { skeleton, images } = reader
            .finish()
            .map_err(|e| images_api::extract_error(LABEL, status, e))?;
        let mut decoded: Vec<Option<InlineImage>> = images.into_iter().map(Some).collect();
        let parsed: FluxResponse = serde_json::from_slice(&skeleton).map_err(|e| {
            ProviderError::invalid_response(
                LABEL,
                status,
                format_args!("with an unreadable body: {e}"),
            )
        })?;
        let images: Vec<GeneratedImage> = parsed
            .data
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let source = match (item.b64_json, item.url) {
                    (Some(b64), _) => match placeholder_index(&b64) {
                        Some(k) => ImageSource::Decoded(decoded.get_mut(k)?.take()?),
                        None => ImageSource::Base64(b64),
                    },
                    (None, Some(url)) => ImageSource::Url(url),
                    (None, None) => return None,
                };
                // Hosts derive the i-th image of a call from seed + i.
                let seed = i64::from(seed) + i64::try_from(i).unwrap_or(0);
                Some(GeneratedImage {
                    source,
                    revised_prompt: None,
                    seed: Some(seed),
                })
            })
            .collect();
        if images.len() != usize::from(n) {
            return Err(ProviderError::invalid_response(
                LABEL,
                status,
                format_args!("with {} of {n} images", images.len()),
            ));
        }
        let meta = serde_json::json!({
            "provider": "flux",
            "model": parsed.model.unwrap_or_else(|| call.provider_model.to_owned()),
            "request_id": parsed.id.or_else(|| header_str(&headers, "x-request-id").map(str::to_owned)),
            "seed": seed,
            "steps": STEPS,
            "elapsed_ms": http::elapsed_ms(started),
        });
        Ok(ProviderOutput {
            images,
            meta,
            usage: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use serde_json::json;

    fn classify_json(status: u16, headers: &HeaderMap, body: serde_json::Value) -> ProviderError {
        classify(status, headers, &serde_json::to_vec(&body).expect("json"))
    }

    #[test]
    fn together_classes() {
        let h = HeaderMap::new();
        for status in [400, 401, 402, 404] {
            assert!(
                matches!(
                    classify_json(status, &h, json!({"error": {"message": "no"}})),
                    ProviderError::Final { .. }
                ),
                "{status}"
            );
        }
        for status in [429, 500, 503] {
            assert!(
                matches!(
                    classify_json(status, &h, json!({})),
                    ProviderError::Retryable { .. }
                ),
                "{status}"
            );
        }
        let nsfw = classify_json(
            400,
            &h,
            json!({"error": {"message": "Image generation failed: NSFW content detected"}}),
        );
        assert!(matches!(
            nsfw,
            ProviderError::ContentPolicy {
                stage: ModerationStage::Output,
                ..
            }
        ));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        match classify_json(429, &h, json!({})) {
            ProviderError::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(3)))
            }
            other => panic!("expected retryable, got {other:?}"),
        }
        assert!(
            classify(500, &HeaderMap::new(), b"<html>bad gateway</html>")
                .to_string()
                .contains("unavailable")
        );
    }
}
