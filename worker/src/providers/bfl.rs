//! FLUX models on Black Forest Labs' own API: submit `POST {BFL base}/{endpoint}` (the catalogue's provider-side
//! name: `flux-2-pro`, `flux-kontext-pro`, ...) with `x-key`, then poll the returned `polling_url` until `Ready` and
//! download `result.sample` at once (it expires after 10 minutes). One picture per task, so `n` pictures are `n`
//! tasks run side by side. Sizes arrive fitted to the model by the catalogue (FLUX.2: multiples of 16 up to 4 MP;
//! FLUX1.1: multiples of 32 up to 1440); Kontext takes `aspect_ratio` instead of width and height. Each task's
//! `cost` (credits) is recorded. A failed poll retries the poll, never the submission (which would be paid twice).
//! The region is the base URL: `api.bfl.ai` (global), `api.eu.bfl.ai`, `api.us.bfl.ai`.

use super::http::{self, AnswerCap};
use super::{Call, GeneratedImage, ImageProvider, ImageSource, ProviderError, ProviderOutput};
use crate::retry::parse_retry_after;
use async_trait::async_trait;
use futures::future::try_join_all;
use imagegen_shared::catalogue::SizeParam;
use imagegen_shared::config::BflSettings;
use imagegen_shared::domain::{ImageSize, ModerationStage, ProviderId};
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, Instant};
use url::Url;

const LABEL: &str = "Black Forest Labs";
/// BFL's own examples poll twice a second.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Consecutive failed polls tolerated before the task is given up (the submission is never repeated).
const MAX_POLL_FAILURES: u32 = 5;
/// One submission or poll; the task as a whole is bounded by PROVIDER_TIMEOUT_SECS.
const POLL_CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct BflClient {
    http: reqwest::Client,
    /// The API root with a trailing slash: endpoints join onto it.
    base: Url,
    settings: BflSettings,
    timeout: Duration,
}

#[derive(Serialize)]
struct SubmitBody<'a> {
    prompt: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aspect_ratio: Option<String>,
    seed: u32,
    output_format: &'static str,
    /// An edit's reference images, base64: `input_image`, `input_image_2`.. (Kontext up to 4, FLUX.2 up to 8).
    #[serde(flatten)]
    input_images: std::collections::BTreeMap<String, String>,
}

/// The reference-image fields of an edit (no mask: routing sends masked edits only to models that take one).
fn input_images(edit: Option<&super::EditInputs>) -> std::collections::BTreeMap<String, String> {
    use base64::Engine;
    edit.map(|e| e.images.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let name = match i {
                0 => "input_image".to_owned(),
                i => format!("input_image_{}", i + 1),
            };
            (
                name,
                base64::engine::general_purpose::STANDARD.encode(&image.bytes),
            )
        })
        .collect()
}

#[derive(Deserialize)]
struct Submitted {
    id: String,
    polling_url: Option<String>,
    /// Credits charged for the task.
    #[serde(default)]
    cost: Option<f64>,
    #[serde(default)]
    input_mp: Option<f64>,
    #[serde(default)]
    output_mp: Option<f64>,
}

#[derive(Deserialize)]
struct Polled {
    status: String,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    details: Option<Value>,
}

fn detail_text(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("detail").cloned())
    {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let detail = detail_text(body);
    let message = match status {
        401 | 403 => format!("{LABEL} rejected the service's credentials (HTTP {status})"),
        402 => format!("{LABEL}: the account has no credits left"),
        422 => format!("{LABEL} rejected the request: {detail}"),
        429 => format!("{LABEL}: too many active tasks for this account"),
        s if s >= 500 => format!("{LABEL} is unavailable (HTTP {s})"),
        s => format!("{LABEL} rejected the request (HTTP {s}): {detail}"),
    };
    http::classified(status, None, message, parse_retry_after(headers))
}

impl BflClient {
    pub fn new(settings: BflSettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: http::http_client(POLL_CALL_TIMEOUT)?,
            base: http::as_directory(&settings.base_url),
            settings,
            timeout,
        })
    }

    /// The polling URL must stay with the provider: its host, or BFL's own domains.
    fn polling_url(&self, submitted: &Submitted) -> Result<Url, ProviderError> {
        let bad = |why: &str| ProviderError::Final {
            status: Some(200),
            code: Some("invalid_response".into()),
            message: format!("{LABEL} returned an unusable polling URL: {why}"),
        };
        let url = match &submitted.polling_url {
            Some(u) => Url::parse(u).map_err(|_| bad("unparseable"))?,
            None => {
                let mut u = self.settings.base_url.clone();
                u.set_path(&format!(
                    "{}/get_result",
                    self.settings.base_url.path().trim_end_matches('/')
                ));
                u.query_pairs_mut().append_pair("id", &submitted.id);
                u
            }
        };
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let own = self
            .settings
            .base_url
            .host_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if host == own || host.ends_with(".bfl.ai") || host.ends_with(".bfl.ml") {
            Ok(url)
        } else {
            Err(bad("foreign host"))
        }
    }

    async fn run_task(
        &self,
        call: &Call<'_>,
        seed: u32,
    ) -> Result<(GeneratedImage, Value), ProviderError> {
        let started = Instant::now();
        let req = call.request;
        let size = req.size().exact().unwrap_or(
            call.model
                .sizes
                .default
                .exact()
                .unwrap_or(ImageSize::new(1024, 1024)),
        );
        let size_param = call
            .model
            .serves
            .get(&ProviderId::Bfl)
            .map(|s| s.size_param)
            .unwrap_or_default();
        let (width, height, aspect_ratio) = match size_param {
            SizeParam::WidthHeight => (Some(size.width), Some(size.height), None),
            SizeParam::AspectRatio => (None, None, Some(size.ratio_string())),
        };
        let body = SubmitBody {
            prompt: req.prompt().as_str(),
            width,
            height,
            aspect_ratio,
            seed,
            output_format: req.output_format().map_or("png", |f| f.as_str()),
            input_images: input_images(call.edit),
        };
        let submit_url = self
            .base
            .join(call.provider_model)
            .map_err(|_| ProviderError::Final {
                status: None,
                code: Some("bad_model".into()),
                message: format!("{LABEL}: '{}' is not an endpoint name", call.provider_model),
            })?;
        let request = self
            .http
            .post(submit_url)
            .header("x-key", self.settings.api_key.expose_secret())
            .header("X-Correlation-ID", call.correlation_id)
            .json(&body);
        let (status, headers, bytes) = http::send(LABEL, request, AnswerCap::Short).await?;
        if status != 200 {
            return Err(classify(status, &headers, &bytes));
        }
        let submitted: Submitted = serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::invalid_response(
                LABEL,
                200,
                format_args!("the submission with an unreadable body: {e}"),
            )
        })?;
        let polling_url = self.polling_url(&submitted)?;
        let mut failures = 0;
        loop {
            if started.elapsed() > self.timeout {
                // The task was paid for; a new submission could be too. Final, so the job says what happened.
                return Err(ProviderError::Final {
                    status: None,
                    code: Some("poll_timeout".into()),
                    message: format!(
                        "{LABEL} task {} was not ready within {} s",
                        submitted.id,
                        self.timeout.as_secs()
                    ),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
            let poll = self
                .http
                .get(polling_url.clone())
                .header("x-key", self.settings.api_key.expose_secret());
            let polled = match http::send(LABEL, poll, AnswerCap::Short).await {
                Ok((200, _, body)) => {
                    serde_json::from_slice::<Polled>(&body).map_err(|e| e.to_string())
                }
                Ok((status, _, _)) => Err(format!("HTTP {status}")),
                // An answer past the cap: polling again would read the same again.
                Err(ProviderError::Final {
                    status,
                    code,
                    message,
                }) => {
                    return Err(ProviderError::Final {
                        status,
                        code,
                        message: format!("{message} (polling task {})", submitted.id),
                    });
                }
                Err(e) => Err(e.to_string()),
            };
            let polled = match polled {
                Ok(p) => {
                    failures = 0;
                    p
                }
                Err(why) => {
                    failures += 1;
                    tracing::warn!(task = %submitted.id, failures, %why, "bfl poll failed; polling again");
                    if failures >= MAX_POLL_FAILURES {
                        return Err(ProviderError::Final {
                            status: None,
                            code: Some("poll_failed".into()),
                            message: format!(
                                "{LABEL}: polling task {} kept failing ({why})",
                                submitted.id
                            ),
                        });
                    }
                    continue;
                }
            };
            match polled.status.as_str() {
                "Ready" => {
                    let result = polled.result.unwrap_or(Value::Null);
                    let Some(sample) = result.get("sample").and_then(Value::as_str) else {
                        return Err(ProviderError::Final {
                            status: Some(200),
                            code: Some("invalid_response".into()),
                            message: format!(
                                "{LABEL}: task {} is ready without a sample",
                                submitted.id
                            ),
                        });
                    };
                    let seed = result
                        .get("seed")
                        .and_then(Value::as_i64)
                        .unwrap_or(i64::from(seed));
                    let image = GeneratedImage {
                        source: ImageSource::Url(sample.to_owned()),
                        revised_prompt: result
                            .get("prompt")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        seed: Some(seed),
                    };
                    let meta = serde_json::json!({"task_id": submitted.id, "polling_url": polling_url.as_str(), "seed": seed,
                        "cost": submitted.cost, "input_mp": submitted.input_mp, "output_mp": submitted.output_mp,
                        "size_sent": match size_param { SizeParam::WidthHeight => size.to_string(), SizeParam::AspectRatio => size.ratio_string() },
                        "elapsed_ms": http::elapsed_ms(started)});
                    return Ok((image, meta));
                }
                "Pending" | "Processing" | "Queued" => {}
                "Request Moderated" | "Content Moderated" => {
                    let stage = if polled.status == "Request Moderated" {
                        ModerationStage::Input
                    } else {
                        ModerationStage::Output
                    };
                    return Err(ProviderError::ContentPolicy {
                        stage,
                        message: format!("{LABEL}: {}", polled.status),
                        categories: polled.details,
                    });
                }
                other => {
                    return Err(ProviderError::Final {
                        status: Some(200),
                        code: Some(other.to_ascii_lowercase().replace(' ', "_")),
                        message: format!(
                            "{LABEL}: task {} ended with status '{other}'",
                            submitted.id
                        ),
                    });
                }
            }
        }
    }
}

#[async_trait]
impl ImageProvider for BflClient {
    fn id(&self) -> ProviderId {
        ProviderId::Bfl
    }

    fn download_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .settings
            .base_url
            .host_str()
            .map(str::to_owned)
            .into_iter()
            .collect();
        // Results are served from delivery.*.bfl.ai, whose names change.
        hosts.push("*.bfl.ai".into());
        hosts
    }

    async fn generate(&self, call: &Call<'_>) -> Result<ProviderOutput, ProviderError> {
        let seed = call.request.seed().unwrap_or_else(rand::random);
        let tasks = (0..u32::from(call.request.num_images()))
            .map(|i| self.run_task(call, seed.wrapping_add(i)));
        let results = try_join_all(tasks).await?;
        let (images, tasks): (Vec<_>, Vec<_>) = results.into_iter().unzip();
        let credits: f64 = tasks
            .iter()
            .filter_map(|t| t.get("cost").and_then(Value::as_f64))
            .sum();
        let meta = serde_json::json!({
            "provider": "bfl",
            "model": call.provider_model,
            "cost_credits": tasks.iter().any(|t| t.get("cost").is_some_and(|c| !c.is_null())).then_some(credits),
            "tasks": tasks,
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

    #[test]
    fn bfl_classes() {
        let h = HeaderMap::new();
        assert!(matches!(
            classify(402, &h, br#"{"detail": "Insufficient credits"}"#),
            ProviderError::Final { .. }
        ));
        assert!(matches!(
            classify(403, &h, br#"{"detail": "Not authenticated"}"#),
            ProviderError::Final { .. }
        ));
        let e = classify(
            422,
            &h,
            br#"{"detail": [{"loc": ["body", "width"], "msg": "must be a multiple of 32"}]}"#,
        );
        assert!(e.to_string().contains("multiple of 32"), "{e}");
        assert!(matches!(
            classify(429, &h, b"{}"),
            ProviderError::Retryable { .. }
        ));
        assert!(matches!(
            classify(500, &h, b"oops"),
            ProviderError::Retryable { .. }
        ));
    }

    #[test]
    fn edit_images_are_input_image_then_numbered_from_2() {
        let image = |b: &'static [u8]| crate::providers::InputBytes {
            bytes: bytes::Bytes::from_static(b),
            content_type: "image/png".into(),
            width: 1,
            height: 1,
        };
        let edit = crate::providers::EditInputs {
            images: vec![image(b"a"), image(b"b"), image(b"c")],
            mask: None,
            input_fidelity: None,
        };
        let fields = input_images(Some(&edit));
        assert_eq!(
            fields.into_iter().collect::<Vec<_>>(),
            [
                ("input_image".to_owned(), "YQ==".to_owned()),
                ("input_image_2".to_owned(), "Yg==".to_owned()),
                ("input_image_3".to_owned(), "Yw==".to_owned())
            ]
        );
        assert!(input_images(None).is_empty());
    }
}
