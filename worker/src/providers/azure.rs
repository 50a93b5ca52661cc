//! Azure OpenAI, for the GPT image models deployed on a resource (and DALL-E 3 while Azure served it). Two paths,
//! chosen by AZURE_OPENAI_API_PATH:
//! - deployments: `POST {endpoint}/openai/deployments/{deployment}/images/generations?api-version={v}` (GPT image
//!   models need 2025-04-01-preview or later); the body has no `model`, the deployment names it;
//! - v1: `POST {endpoint}/openai/v1/images/generations`, the deployment's name in `model`.
//!
//! Authenticated with `api-key` or an Entra ID bearer token. Answers carry content-filter annotations, and
//! content-filter rejections (on the prompt or on the generated image) become `moderated` with their categories.

use super::http::{self, header_str};
use super::images_api::{
    ResponseFormat, SAFETY_PREFIX, parse_images, request_body, send_images, stream_partials,
};
use super::images_api_edit::{edit_form, edits_url};
use super::{Call, ImageProvider, ProviderError, ProviderOutput};
use crate::picture_memory::PictureMemory;
use crate::retry::parse_retry_after;
use async_trait::async_trait;
use imagegen_shared::config::{AzureAuth, AzurePath, AzureSettings};
use imagegen_shared::domain::{ModerationStage, ProviderId};
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, Instant};
use url::Url;

const LABEL: &str = "Azure OpenAI";
/// Error codes Azure has used for content-filter rejections over the API's versions.
const FILTER_CODES: [&str; 3] = [
    "content_policy_violation",
    "contentFilter",
    "content_filter",
];

pub struct AzureClient {
    http: reqwest::Client,
    settings: AzureSettings,
    response_format: ResponseFormat,
    /// MAX_IMAGE_BYTES: bounds how much of an answer is read.
    max_image_bytes: u64,
    /// WORKER_PICTURE_MEMORY_MB: reserved before an answer's pictures are read.
    memory: PictureMemory,
}

#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    error: Option<AzureError>,
}

#[derive(Deserialize, Default)]
struct AzureError {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    inner_error: Option<InnerError>,
    /// The chat-style spelling.
    #[serde(default)]
    innererror: Option<InnerError>,
}

#[derive(Deserialize, Default)]
struct InnerError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    content_filter_results: Option<Value>,
    #[serde(default)]
    content_filter_result: Option<Value>,
}

impl AzureClient {
    pub fn new(
        settings: AzureSettings,
        timeout: Duration,
        response_format: ResponseFormat,
        max_image_bytes: u64,
        memory: PictureMemory,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: http::http_client(timeout)?,
            settings,
            response_format,
            max_image_bytes,
            memory,
        })
    }

    /// Where a call for `deployment` goes, on the configured path.
    pub fn endpoint(&self, deployment: &str) -> Url {
        let root = self
            .settings
            .endpoint
            .path()
            .trim_end_matches('/')
            .to_owned();
        let mut url = self.settings.endpoint.clone();
        match self.settings.path {
            AzurePath::Deployments => {
                url.set_path(&format!(
                    "{root}/openai/deployments/{deployment}/images/generations"
                ));
                url.query_pairs_mut()
                    .clear()
                    .append_pair("api-version", &self.settings.api_version);
            }
            AzurePath::V1 => {
                url.set_path(&format!("{root}/openai/v1/images/generations"));
                url.set_query(None);
            }
        }
        url
    }
}

/// Whether any category of a filter-results object says `filtered: true`.
fn any_filtered(results: &Value) -> bool {
    results.as_object().is_some_and(|m| {
        m.values()
            .any(|c| c.get("filtered").and_then(Value::as_bool) == Some(true))
    })
}

pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let envelope: ErrorEnvelope = serde_json::from_slice(body).unwrap_or_default();
    let error = envelope.error.unwrap_or_default();
    let code = error.code.as_ref().and_then(|c| match c {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let provider_message = error.message.unwrap_or_default();
    let inner = error.inner_error.or(error.innererror).unwrap_or_default();
    let is_filter = code.as_deref().is_some_and(|c| FILTER_CODES.contains(&c))
        || inner.code.as_deref() == Some("ResponsibleAIPolicyViolation")
        || provider_message.starts_with(SAFETY_PREFIX);
    if status == 400 && is_filter {
        let lower = provider_message.to_lowercase();
        let stage = if lower.contains("generated image") || lower.contains("output image") {
            ModerationStage::Output
        } else {
            ModerationStage::Input
        };
        return ProviderError::ContentPolicy {
            stage,
            message: if provider_message.is_empty() {
                SAFETY_PREFIX.to_owned()
            } else {
                provider_message
            },
            categories: inner.content_filter_results.or(inner.content_filter_result),
        };
    }
    let retry_after = parse_retry_after(headers);
    let code = code.or(error.kind);
    let message = match status {
        401 | 403 => format!("{LABEL} rejected the service's credentials (HTTP {status})"),
        404 if code.as_deref() == Some("DeploymentNotFound") => {
            format!("{LABEL}: the deployment does not exist (check AZURE_OPENAI_DEPLOYMENTS)")
        }
        404 => format!("{LABEL}: endpoint or API version not found (HTTP 404)"),
        429 => format!("{LABEL} rate limit reached"),
        s if s >= 500 => format!("{LABEL} is unavailable (HTTP {s})"),
        _ if !provider_message.is_empty() => {
            format!("{LABEL} rejected the request: {provider_message}")
        }
        s => format!("{LABEL} rejected the request (HTTP {s})"),
    };
    http::classified(status, code, message, retry_after)
}

#[async_trait]
impl ImageProvider for AzureClient {
    fn id(&self) -> ProviderId {
        ProviderId::AzureOpenAi
    }

    fn download_hosts(&self) -> Vec<String> {
        self.settings
            .endpoint
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

impl AzureClient {
    async fn call_once(&self, call: &Call<'_>, n: u8) -> Result<ProviderOutput, ProviderError> {
        let started = Instant::now();
        let deployment = call.provider_model;
        // On the v1 path `model` names the deployment; on the deployments path the URL does.
        let model_field = (self.settings.path == AzurePath::V1).then_some(deployment);
        let mut body = request_body(
            call.request,
            call.model,
            model_field,
            n,
            self.response_format,
        );
        // Partial pictures asked for and someone to hand them to: a streamed answer (never for an edit).
        let sink = match call.edit {
            None => stream_partials(call, &mut body),
            Some(_) => None,
        };
        let url = match call.edit {
            None => self.endpoint(deployment),
            Some(_) => edits_url(&self.endpoint(deployment)),
        };
        let request = self
            .http
            .post(url)
            .header("X-Correlation-ID", call.correlation_id);
        let request = match call.edit {
            None => request.json(&body),
            Some(edit) => request.multipart(edit_form(&body, edit)?),
        };
        let request = match &self.settings.auth {
            AzureAuth::ApiKey(key) => request.header("api-key", key.expose_secret()),
            AzureAuth::BearerToken(token) => request.bearer_auth(token.expose_secret()),
        };
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
        let request_id = header_str(&headers, "apim-request-id").map(str::to_owned);
        let parsed = match answer {
            http::Answer::Body(bytes) if status != 200 => {
                let error = classify(status, &headers, &bytes);
                tracing::warn!(
                    status,
                    request_id,
                    kind = error.kind(),
                    code = error.code(),
                    deployment,
                    "azure openai call failed"
                );
                return Err(error);
            }
            http::Answer::Body(bytes) => {
                parse_images(LABEL, status, &bytes, n, self.max_image_bytes)?
            }
            // A streamed answer's filter verdicts arrive as errors (a filtered picture is never completed).
            http::Answer::Parsed(parsed) => parsed,
        };
        // A 200 can still carry an image the output filter flagged.
        if let Some(flagged) = parsed.items.iter().find_map(|(_, m)| {
            m.content_filter_results
                .as_ref()
                .filter(|r| any_filtered(r))
        }) {
            return Err(ProviderError::ContentPolicy {
                stage: ModerationStage::Output,
                message: "The generated image was filtered by Azure's content filter".into(),
                categories: Some(flagged.clone()),
            });
        }
        let filters: Vec<Value> = parsed
            .items
            .iter()
            .map(|(_, m)| {
                serde_json::json!({"prompt_filter_results": m.prompt_filter_results, "content_filter_results": m.content_filter_results})
            })
            .collect();
        let meta = serde_json::json!({
            "provider": "azure_openai",
            "model": call.model.id,
            "deployment": deployment,
            "api_version": (self.settings.path == AzurePath::Deployments).then_some(self.settings.api_version.as_str()),
            "request_id": request_id,
            "region": header_str(&headers, "x-ms-region"),
            "filters": filters,
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
    use serde_json::json;

    fn classify_json(status: u16, headers: &HeaderMap, body: Value) -> ProviderError {
        classify(status, headers, &serde_json::to_vec(&body).expect("json"))
    }

    #[test]
    fn content_filter_errors_are_moderation_with_categories() {
        let h = HeaderMap::new();
        let body = json!({"error": {"code": "content_policy_violation", "message": "Your request was rejected as a result of our safety system.",
            "inner_error": {"code": "ResponsibleAIPolicyViolation", "content_filter_results": {"sexual": {"filtered": true, "severity": "high"}}}}});
        match classify_json(400, &h, body) {
            ProviderError::ContentPolicy {
                stage, categories, ..
            } => {
                assert_eq!(stage, ModerationStage::Input);
                assert_eq!(
                    categories.expect("categories")["sexual"]["severity"],
                    "high"
                );
            }
            other => panic!("expected moderation, got {other:?}"),
        }
        let older = json!({"error": {"code": "contentFilter", "message": "Your task failed as a result of our safety system."}});
        assert!(matches!(
            classify_json(400, &h, older),
            ProviderError::ContentPolicy { .. }
        ));
        let output = json!({"error": {"code": "content_policy_violation", "message": "The generated image was filtered as a result of our safety system."}});
        assert!(matches!(
            classify_json(400, &h, output),
            ProviderError::ContentPolicy {
                stage: ModerationStage::Output,
                ..
            }
        ));
    }

    #[test]
    fn azure_classes() {
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        match classify_json(
            429,
            &h,
            json!({"error": {"code": "429", "message": "Requests ... exceeded call rate limit"}}),
        ) {
            ProviderError::Retryable {
                retry_after, code, ..
            } => {
                assert_eq!(retry_after, Some(Duration::from_millis(1500)));
                assert_eq!(code.as_deref(), Some("429"));
            }
            other => panic!("expected retryable, got {other:?}"),
        }
        let h = HeaderMap::new();
        let missing = classify_json(
            404,
            &h,
            json!({"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}}),
        );
        assert!(matches!(missing, ProviderError::Final { .. }));
        assert!(missing.to_string().contains("AZURE_OPENAI_DEPLOYMENTS"));
        assert!(matches!(
            classify_json(
                401,
                &h,
                json!({"error": {"code": "401", "message": "Access denied"}})
            ),
            ProviderError::Final { .. }
        ));
        assert!(matches!(
            classify_json(503, &h, json!({})),
            ProviderError::Retryable { .. }
        ));
        assert!(matches!(
            classify_json(400, &h, json!({"error": {"code": "invalid_size"}})),
            ProviderError::Final { .. }
        ));
    }

    #[test]
    fn filtered_results_are_detected() {
        assert!(any_filtered(
            &json!({"sexual": {"filtered": false}, "violence": {"filtered": true}})
        ));
        assert!(!any_filtered(
            &json!({"sexual": {"filtered": false, "severity": "safe"}})
        ));
    }
}
