//! FLUX over Black Forest Labs' own API (`FLUX_PROTOCOL=bfl`): submit `POST {FLUX_BASE_URL}/{FLUX_MODEL}` with
//! `x-key`, then poll the returned `polling_url` until `Ready` and download `result.sample` at once (it expires after
//! 10 minutes). One picture per task, so `n` pictures are `n` tasks run side by side. BFL caps sides at 1440 (multiples
//! of 32): 1536x1024 becomes 1440x960, and the job records the substitution. A failed poll retries the poll, never the
//! submission (which would be paid twice).

use super::openai::MAX_ERROR_BODY;
use super::{GeneratedImage, ImageProvider, ImageSource, ProviderError, ProviderOutput};
use crate::retry::parse_retry_after;
use async_trait::async_trait;
use futures::future::try_join_all;
use imagegen_shared::config::FluxSettings;
use imagegen_shared::domain::{GenerationRequest, ImageSize, ModerationStage, ProviderId};
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
const MAX_SIDE: u32 = 1440;
/// One submission or poll; the task as a whole is bounded by PROVIDER_TIMEOUT_SECS.
const POLL_CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct BflClient {
    http: reqwest::Client,
    submit_url: Url,
    settings: FluxSettings,
    timeout: Duration,
}

#[derive(Serialize)]
struct SubmitBody<'a> {
    prompt: &'a str,
    width: u32,
    height: u32,
    seed: u32,
    output_format: &'static str,
}

#[derive(Deserialize)]
struct Submitted {
    id: String,
    polling_url: Option<String>,
}

#[derive(Deserialize)]
struct Polled {
    status: String,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    details: Option<Value>,
}

/// BFL's sizes: multiples of 32 within 256..=1440, keeping the aspect ratio.
pub fn bfl_size(size: ImageSize) -> ImageSize {
    let scale = (f64::from(MAX_SIDE) / f64::from(size.width.max(size.height))).min(1.0);
    let fit = |side: u32| -> u32 {
        let scaled = (f64::from(side) * scale / 32.0).round() as u32 * 32;
        scaled.clamp(256, MAX_SIDE)
    };
    ImageSize::new(fit(size.width), fit(size.height))
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

pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let detail = detail_text(body);
    let message = match status {
        401 | 403 => format!("{LABEL} rejected the service's credentials (HTTP {status})"),
        402 => format!("{LABEL}: the account has no credits left"),
        422 => format!("{LABEL} rejected the request: {detail}"),
        429 => format!("{LABEL}: too many active tasks for this account"),
        s if s >= 500 => format!("{LABEL} is unavailable (HTTP {s})"),
        s => format!("{LABEL} rejected the request (HTTP {s}): {detail}"),
    };
    super::classified(status, None, message, parse_retry_after(headers))
}

impl BflClient {
    pub fn new(settings: FluxSettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = super::http_client(POLL_CALL_TIMEOUT)?;
        let mut base = settings.base_url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let submit_url = base.join(&settings.model).unwrap_or(base);
        Ok(Self {
            http,
            submit_url,
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
        prompt: &str,
        size: ImageSize,
        seed: u32,
        correlation_id: &str,
    ) -> Result<(GeneratedImage, Value), ProviderError> {
        let started = Instant::now();
        let body = SubmitBody {
            prompt,
            width: size.width,
            height: size.height,
            seed,
            output_format: "png",
        };
        let call = self
            .http
            .post(self.submit_url.clone())
            .header("x-key", self.settings.api_key.expose_secret())
            .header("X-Correlation-ID", correlation_id)
            .json(&body);
        let (status, headers, bytes) = super::send(LABEL, call).await?;
        if status != 200 {
            return Err(classify(
                status,
                &headers,
                &bytes[..bytes.len().min(MAX_ERROR_BODY)],
            ));
        }
        let submitted: Submitted =
            serde_json::from_slice(&bytes).map_err(|e| ProviderError::Retryable {
                status: Some(200),
                code: Some("invalid_response".into()),
                message: format!("{LABEL} answered the submission with an unreadable body: {e}"),
                retry_after: None,
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
            let polled = self
                .http
                .get(polling_url.clone())
                .header("x-key", self.settings.api_key.expose_secret())
                .send()
                .await;
            let polled = match polled {
                Ok(r) if r.status().is_success() => {
                    r.json::<Polled>().await.map_err(|e| e.to_string())
                }
                Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
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
                        "elapsed_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)});
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
        ProviderId::FluxSchnell
    }

    fn route(&self) -> &'static str {
        "flux_schnell"
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

    async fn generate(
        &self,
        req: &GenerationRequest,
        correlation_id: &str,
    ) -> Result<ProviderOutput, ProviderError> {
        let size = bfl_size(req.size);
        let seed = req.seed.unwrap_or_else(rand::random);
        let tasks = (0..u32::from(req.num_images)).map(|i| {
            self.run_task(
                req.prompt.as_str(),
                size,
                seed.wrapping_add(i),
                correlation_id,
            )
        });
        let results = try_join_all(tasks).await?;
        let (images, tasks): (Vec<_>, Vec<_>) = results.into_iter().unzip();
        let meta = serde_json::json!({
            "provider": "flux_schnell",
            "protocol": "bfl",
            "model": self.settings.model,
            "model_substituted": (self.settings.model != "flux-schnell").then_some("BFL does not serve FLUX.1 [schnell]"),
            "size_requested": req.size.to_string(),
            "size_sent": size.to_string(),
            "tasks": tasks,
        });
        Ok(ProviderOutput { images, meta })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_fit_bfl_limits() {
        assert_eq!(
            bfl_size(ImageSize::new(1536, 1024)),
            ImageSize::new(1440, 960)
        );
        assert_eq!(
            bfl_size(ImageSize::new(1024, 1536)),
            ImageSize::new(960, 1440)
        );
        assert_eq!(
            bfl_size(ImageSize::new(1024, 1024)),
            ImageSize::new(1024, 1024)
        );
        assert_eq!(bfl_size(ImageSize::new(512, 512)), ImageSize::new(512, 512));
        assert_eq!(bfl_size(ImageSize::new(768, 768)), ImageSize::new(768, 768));
    }

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
}
