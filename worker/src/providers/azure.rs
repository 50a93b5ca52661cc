//! DALL-E 3 over Azure OpenAI:
//! `POST {endpoint}/openai/deployments/{deployment}/images/generations?api-version={v}`, authenticated with `api-key`
//! or an Entra ID bearer token. Same body as OpenAI without `model`; answers carry content-filter annotations, and
//! content-filter rejections (on the prompt or on the generated image) become `moderated` with their categories.

use super::openai::{
    MAX_ERROR_BODY, ResponseFormat, SAFETY_PREFIX, header_str, parse_images, request_body,
};
use super::{ImageProvider, ProviderError, ProviderOutput};
use crate::retry::parse_retry_after;
use async_trait::async_trait;
use imagegen_shared::config::{AzureAuth, AzureSettings};
use imagegen_shared::domain::{GenerationRequest, ModerationStage, ProviderId};
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, Instant};
use url::Url;

const LABEL: &str = "Azure OpenAI DALL-E 3";
/// Error codes Azure has used for content-filter rejections over the API's versions.
const FILTER_CODES: [&str; 3] = [
    "content_policy_violation",
    "contentFilter",
    "content_filter",
];

pub struct AzureClient {
    http: reqwest::Client,
    endpoint: Url,
    settings: AzureSettings,
    response_format: ResponseFormat,
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
    ) -> Result<Self, reqwest::Error> {
        let http = super::http_client(timeout)?;
        let mut endpoint = settings.endpoint.clone();
        endpoint.set_path(&format!(
            "{}/openai/deployments/{}/images/generations",
            settings.endpoint.path().trim_end_matches('/'),
            settings.deployment
        ));
        endpoint
            .query_pairs_mut()
            .clear()
            .append_pair("api-version", &settings.api_version);
        Ok(Self {
            http,
            endpoint,
            settings,
            response_format,
        })
    }
}

/// Whether any category of a filter-results object says `filtered: true`.
fn any_filtered(results: &Value) -> bool {
    results.as_object().is_some_and(|m| {
        m.values()
            .any(|c| c.get("filtered").and_then(Value::as_bool) == Some(true))
    })
}

pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
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
            format!("{LABEL}: the deployment does not exist (check AZURE_OPENAI_DEPLOYMENT_NAME)")
        }
        404 => format!("{LABEL}: endpoint or API version not found (HTTP 404)"),
        429 => format!("{LABEL} rate limit reached"),
        s if s >= 500 => format!("{LABEL} is unavailable (HTTP {s})"),
        _ if !provider_message.is_empty() => {
            format!("{LABEL} rejected the request: {provider_message}")
        }
        s => format!("{LABEL} rejected the request (HTTP {s})"),
    };
    super::classified(status, code, message, retry_after)
}

#[async_trait]
impl ImageProvider for AzureClient {
    fn id(&self) -> ProviderId {
        ProviderId::Dalle3
    }

    fn route(&self) -> &'static str {
        "dalle3:azure"
    }

    fn download_hosts(&self) -> Vec<String> {
        self.settings
            .endpoint
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

impl AzureClient {
    async fn call_once(
        &self,
        req: &GenerationRequest,
        correlation_id: &str,
    ) -> Result<ProviderOutput, ProviderError> {
        let started = Instant::now();
        let call = self
            .http
            .post(self.endpoint.clone())
            .header("X-Correlation-ID", correlation_id)
            .json(&request_body(req, None, self.response_format));
        let call = match &self.settings.auth {
            AzureAuth::ApiKey(key) => call.header("api-key", key.expose_secret()),
            AzureAuth::BearerToken(token) => call.bearer_auth(token.expose_secret()),
        };
        let (status, headers, body) = super::send(LABEL, call).await?;
        let request_id = header_str(&headers, "apim-request-id").map(str::to_owned);
        if status != 200 {
            let error = classify(status, &headers, &body[..body.len().min(MAX_ERROR_BODY)]);
            tracing::warn!(
                status,
                request_id,
                kind = error.kind(),
                code = error.code(),
                "azure dall-e 3 call failed"
            );
            return Err(error);
        }
        let items = parse_images(LABEL, status, &body)?;
        // A 200 can still carry an image the output filter flagged.
        if let Some(flagged) = items.iter().find_map(|(_, m)| {
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
        let filters: Vec<Value> = items
            .iter()
            .map(|(_, m)| {
                serde_json::json!({"prompt_filter_results": m.prompt_filter_results, "content_filter_results": m.content_filter_results})
            })
            .collect();
        let meta = serde_json::json!({
            "provider": "dalle3",
            "protocol": "azure",
            "deployment": self.settings.deployment,
            "api_version": self.settings.api_version,
            "request_id": request_id,
            "region": header_str(&headers, "x-ms-region"),
            "filters": filters,
            "elapsed_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        Ok(ProviderOutput {
            images: items.into_iter().map(|(image, _)| image).collect(),
            meta,
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
        assert!(missing.to_string().contains("AZURE_OPENAI_DEPLOYMENT_NAME"));
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
