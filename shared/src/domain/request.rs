//! From what a client sent (`GenerateBody`) to what a worker runs (`GenerationRequest`): every field is checked
//! against the provider catalogue and the service's limits, and defaults fill what the client left out.

use super::catalogue::{ImageSize, ProviderId, Quality, Style};
use super::prompt::Prompt;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The body of `POST /api/v1/generate` (and of each batch item), as the client wrote it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"prompt": "A futuristic city skyline at sunset", "provider": "dalle3",
    "size": "1024x1024", "quality": "hd", "style": "vivid", "num_images": 1}))]
pub struct GenerateBody {
    /// What to draw; 1 to 4000 characters after trimming.
    pub prompt: String,
    /// `dalle3` or `flux_schnell`; defaults to DEFAULT_PROVIDER.
    #[serde(default)]
    pub provider: Option<String>,
    /// `WIDTHxHEIGHT`, one of the provider's supported sizes; defaults to its first.
    #[serde(default)]
    pub size: Option<String>,
    /// `standard` or `hd` (DALL-E 3 only; default `standard`).
    #[serde(default)]
    pub quality: Option<String>,
    /// `vivid` or `natural` (DALL-E 3 only; default `vivid`).
    #[serde(default)]
    pub style: Option<String>,
    /// How many images, 1 to the provider's maximum (and MAX_IMAGES_PER_REQUEST); default 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4)]
    pub num_images: Option<i64>,
    /// Seed for reproducible output (Flux Schnell only), 0 to 4294967295.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4_294_967_295_i64)]
    pub seed: Option<i64>,
    /// May another provider serve the request when this one is down (default true)? Translations (size, dropped
    /// options) are recorded on the job.
    #[serde(default)]
    pub allow_failover: Option<bool>,
    /// Cancel the job if it has not started within this many seconds (1 to 86400); also `Cancel-After` header.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86_400)]
    pub deadline_seconds: Option<i64>,
}

/// A request every part of which has been checked: this is what is stored on the job and run by a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRequest {
    pub prompt: Prompt,
    pub provider: ProviderId,
    pub size: ImageSize,
    pub num_images: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<Style>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    #[serde(default = "default_true")]
    pub allow_failover: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u32>,
}

/// The longest deadline a client may set: a day.
pub const MAX_DEADLINE_SECS: i64 = 86_400;

fn default_true() -> bool {
    true
}

/// What the service allows, from its configuration.
#[derive(Debug, Clone)]
pub struct GenerationLimits {
    pub enabled: Vec<ProviderId>,
    pub configured: Vec<ProviderId>,
    pub default_provider: ProviderId,
    pub max_images_per_request: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field, e.g. `size`, or `[2].size` inside a batch.
    pub field: String,
    pub message: String,
}

/// Every problem found in one request, so a client can fix them all at once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// Names a batch item in every problem: field `[3].size`, message `item 3: ...`.
    pub fn in_item(mut self, index: usize) -> Self {
        for e in &mut self.0 {
            e.field = format!("[{index}].{}", e.field);
            e.message = format!("item {index}: {}", e.message);
        }
        self
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|e| e.message.clone()).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for ValidationErrors {}

fn join_sizes(sizes: &[ImageSize]) -> String {
    sizes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl GenerationRequest {
    pub fn parse(body: GenerateBody, limits: &GenerationLimits) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();

        let prompt = Prompt::try_from(body.prompt)
            .map_err(|e| errors.push("prompt", e.to_string()))
            .ok();

        let provider = match body.provider.as_deref() {
            None => Some(limits.default_provider),
            Some(raw) => match raw.parse::<ProviderId>() {
                Err(_) => {
                    errors.push(
                        "provider",
                        format!("Unknown provider '{raw}' (known: dalle3, flux_schnell)"),
                    );
                    None
                }
                Ok(p) if !limits.enabled.contains(&p) => {
                    errors.push(
                        "provider",
                        format!("Provider '{p}' is not enabled on this service"),
                    );
                    None
                }
                Ok(p) if !limits.configured.contains(&p) => {
                    errors.push(
                        "provider",
                        format!("Provider '{p}' is not configured on this service (no API key)"),
                    );
                    None
                }
                Ok(p) => Some(p),
            },
        };

        // The remaining checks need to know the provider; without one, report only what we found so far.
        let Some(provider) = provider else {
            return Err(errors);
        };
        let spec = provider.spec();

        let size = match body.size.as_deref() {
            None => Some(spec.default_size()),
            Some(raw) => match raw.parse::<ImageSize>() {
                Ok(s) if spec.supports_size(s) => Some(s),
                _ => {
                    let msg = format!(
                        "Size '{raw}' is not supported by {provider} (supported: {})",
                        join_sizes(spec.supported_sizes)
                    );
                    errors.push("size", msg);
                    None
                }
            },
        };

        let max_images = spec.max_images.min(limits.max_images_per_request);
        let num_images = match body.num_images {
            None => Some(1),
            Some(n) if n >= 1 && n <= i64::from(max_images) => u8::try_from(n).ok(),
            Some(n) => {
                errors.push(
                    "num_images",
                    format!(
                        "num_images must be between 1 and {max_images} for {provider}, got {n}"
                    ),
                );
                None
            }
        };

        let quality = match (body.quality.as_deref(), spec.supports_quality) {
            (None, true) => Some(Quality::Standard),
            (None, false) => None,
            (Some(_), false) => {
                errors.push("quality", format!("quality is not supported by {provider}"));
                None
            }
            (Some(q), true) => match q.to_ascii_lowercase().as_str() {
                "standard" => Some(Quality::Standard),
                "hd" => Some(Quality::Hd),
                _ => {
                    errors.push(
                        "quality",
                        format!("quality must be 'standard' or 'hd', got '{q}'"),
                    );
                    None
                }
            },
        };

        let style = match (body.style.as_deref(), spec.supports_style) {
            (None, true) => Some(Style::Vivid),
            (None, false) => None,
            (Some(_), false) => {
                errors.push("style", format!("style is not supported by {provider}"));
                None
            }
            (Some(s), true) => match s.to_ascii_lowercase().as_str() {
                "vivid" => Some(Style::Vivid),
                "natural" => Some(Style::Natural),
                _ => {
                    errors.push(
                        "style",
                        format!("style must be 'vivid' or 'natural', got '{s}'"),
                    );
                    None
                }
            },
        };

        let seed = match (body.seed, spec.supports_seed) {
            (None, _) => None,
            (Some(_), false) => {
                errors.push("seed", format!("seed is not supported by {provider}"));
                None
            }
            (Some(s), true) => match u32::try_from(s) {
                Ok(s) => Some(s),
                Err(_) => {
                    errors.push(
                        "seed",
                        format!("seed must be between 0 and {}, got {s}", u32::MAX),
                    );
                    None
                }
            },
        };

        let deadline_secs = match body.deadline_seconds {
            None => None,
            Some(d) if (1..=MAX_DEADLINE_SECS).contains(&d) => u32::try_from(d).ok(),
            Some(d) => {
                errors.push(
                    "deadline_seconds",
                    format!("deadline_seconds must be between 1 and {MAX_DEADLINE_SECS}, got {d}"),
                );
                None
            }
        };

        match (prompt, size, num_images) {
            (Some(prompt), Some(size), Some(num_images)) if errors.0.is_empty() => Ok(Self {
                allow_failover: body.allow_failover.unwrap_or(true),
                deadline_secs,
                prompt,
                provider,
                size,
                num_images,
                quality,
                style,
                seed,
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> GenerationLimits {
        GenerationLimits {
            enabled: vec![ProviderId::Dalle3, ProviderId::FluxSchnell],
            configured: vec![ProviderId::Dalle3, ProviderId::FluxSchnell],
            default_provider: ProviderId::Dalle3,
            max_images_per_request: 4,
        }
    }

    fn body(prompt: &str) -> GenerateBody {
        GenerateBody {
            prompt: prompt.to_owned(),
            provider: None,
            size: None,
            quality: None,
            style: None,
            num_images: None,
            seed: None,
            allow_failover: None,
            deadline_seconds: None,
        }
    }

    fn fields(err: ValidationErrors) -> Vec<String> {
        err.0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let req = GenerationRequest::parse(body(" a cat "), &limits()).expect("valid");
        assert_eq!(req.prompt.as_str(), "a cat");
        assert_eq!(req.provider, ProviderId::Dalle3);
        assert_eq!(req.size, ImageSize::new(1024, 1024));
        assert_eq!(req.num_images, 1);
        assert_eq!(req.quality, Some(Quality::Standard));
        assert_eq!(req.style, Some(Style::Vivid));
        assert_eq!(req.seed, None);
    }

    #[test]
    fn flux_takes_seed_and_several_images_but_no_quality() {
        let mut b = body("waves");
        b.provider = Some("flux_schnell".into());
        b.size = Some("1536x1024".into());
        b.num_images = Some(4);
        b.seed = Some(42);
        let req = GenerationRequest::parse(b, &limits()).expect("valid");
        assert_eq!(
            (req.num_images, req.seed, req.quality, req.style),
            (4, Some(42), None, None)
        );

        let mut b = body("waves");
        b.provider = Some("flux_schnell".into());
        b.quality = Some("hd".into());
        b.style = Some("vivid".into());
        assert_eq!(
            fields(GenerationRequest::parse(b, &limits()).expect_err("invalid")),
            ["quality", "style"]
        );
    }

    #[test]
    fn dalle3_rejects_what_it_cannot_do() {
        let mut b = body("a cat");
        b.size = Some("512x512".into());
        b.num_images = Some(2);
        b.seed = Some(1);
        b.quality = Some("ultra".into());
        b.style = Some("noir".into());
        let errs = GenerationRequest::parse(b, &limits()).expect_err("invalid");
        assert_eq!(
            fields(errs),
            ["size", "num_images", "quality", "style", "seed"]
        );
    }

    #[test]
    fn service_limit_caps_num_images() {
        let mut l = limits();
        l.max_images_per_request = 2;
        let mut b = body("waves");
        b.provider = Some("flux_schnell".into());
        b.num_images = Some(3);
        let errs = GenerationRequest::parse(b, &l).expect_err("over the service limit");
        assert!(errs.0[0].message.contains("between 1 and 2"), "{errs}");
    }

    #[test]
    fn provider_must_be_known_enabled_and_configured() {
        let mut l = limits();
        l.enabled = vec![ProviderId::Dalle3];
        let mut b = body("a cat");
        b.provider = Some("flux_schnell".into());
        assert!(
            GenerationRequest::parse(b.clone(), &l)
                .expect_err("disabled")
                .to_string()
                .contains("not enabled")
        );
        l.enabled = ProviderId::ALL.to_vec();
        l.configured = vec![ProviderId::Dalle3];
        assert!(
            GenerationRequest::parse(b.clone(), &l)
                .expect_err("unconfigured")
                .to_string()
                .contains("not configured")
        );
        b.provider = Some("midjourney".into());
        assert!(
            GenerationRequest::parse(b, &l)
                .expect_err("unknown")
                .to_string()
                .contains("Unknown provider")
        );
    }

    #[test]
    fn empty_prompt_and_negative_seed_reported_together() {
        let mut b = body("   ");
        b.provider = Some("flux_schnell".into());
        b.seed = Some(-1);
        let errs = GenerationRequest::parse(b, &limits()).expect_err("invalid");
        assert_eq!(fields(errs.clone()), ["prompt", "seed"]);
        assert_eq!(fields(errs.in_item(3)), ["[3].prompt", "[3].seed"]);
    }

    /// The documented ranges are the ones `parse` enforces whatever the provider (schemathesis sends values outside
    /// them and expects a 400).
    #[test]
    fn documented_ranges_match_the_checks() {
        let schema = serde_json::to_value(<GenerateBody as utoipa::PartialSchema>::schema())
            .expect("schema");
        let props = &schema["properties"];
        let max_images = ProviderId::ALL.iter().map(|p| p.spec().max_images).max();
        assert_eq!(
            props["num_images"]["maximum"].as_u64(),
            max_images.map(u64::from)
        );
        assert_eq!(props["seed"]["maximum"].as_u64(), Some(u64::from(u32::MAX)));
        assert_eq!(
            props["deadline_seconds"]["maximum"].as_i64(),
            Some(MAX_DEADLINE_SECS)
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<GenerateBody>(r#"{"prompt": "x", "colour": "red"}"#)
            .expect_err("unknown");
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn stored_request_round_trips() {
        let req = GenerationRequest::parse(body("a cat"), &limits()).expect("valid");
        let json = serde_json::to_value(&req).expect("serialise");
        assert_eq!(json["size"], "1024x1024");
        let back: GenerationRequest = serde_json::from_value(json).expect("deserialise");
        assert_eq!(back, req);
    }
}
