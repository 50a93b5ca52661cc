//! From what a client sent (`GenerateBody`) to what a worker runs (`GenerationRequest`): every field is checked
//! against the model the client asked for (the catalogue says what it accepts) and the service's limits, and the
//! model's defaults fill what the client left out. What happens when that model is retired is `resolve`'s part.
//!
//! Longer than ~500 lines on purpose: the body as written, the checked request with its accessors, the stored
//! form old rows still read, and the one `parse` that turns the first into the second belong together.

use super::offer::Offer;
use super::options::{Background, ModerationLevel, OutputFormat, Quality, Size, Style};
use super::prompt::Prompt;
use super::provider::{ModelId, ProviderId};
use crate::catalogue::ModelSpec;
use crate::webhooks::target::{WebhookTarget, check_events, check_url};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The body of `POST /api/v1/generate` (and of each batch item, and of `POST /api/v1/jobs`), as the client wrote it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"prompt": "A futuristic city skyline at sunset", "model": "gpt-image-2",
    "size": "1536x1024", "quality": "high", "output_format": "png", "num_images": 1}))]
pub struct GenerateBody {
    /// What to draw; 1 to the model's limit (32,000 characters for GPT image models, 4,000 for DALL-E 3) after
    /// trimming.
    pub prompt: String,
    /// A model id from `GET /api/v1/models` (e.g. `gpt-image-2`, `flux-schnell`, `flux-2-pro`); a retired model is
    /// served by its replacement (recorded on the job, with `Deprecation` and `Warning` headers). Default: the
    /// provider's default model, else DEFAULT_MODEL.
    #[serde(default)]
    pub model: Option<String>,
    /// A provider (`openai`, `azure_openai`, `flux`, `bfl`) to serve the model, or one of the seed's names
    /// (`dalle3`, `flux_schnell`), which stand for a model.
    #[serde(default)]
    pub provider: Option<String>,
    /// `WIDTHxHEIGHT` the model accepts (see its `sizes`), or `auto` where it may choose; default: the model's.
    #[serde(default)]
    pub size: Option<String>,
    /// `low`, `medium`, `high`, `auto` (GPT image models; some also `xhigh`, `max`) or `standard`, `hd` (DALL-E).
    #[serde(default)]
    pub quality: Option<String>,
    /// `vivid` or `natural` (DALL-E 3 only).
    #[serde(default)]
    pub style: Option<String>,
    /// How many images, 1 to the model's maximum (and MAX_IMAGES_PER_REQUEST); default 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10)]
    pub num_images: Option<i64>,
    /// Seed for reproducible output (FLUX models), 0 to 4294967295.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4_294_967_295_i64)]
    pub seed: Option<i64>,
    /// `transparent`, `opaque` or `auto` (GPT image models that offer it; transparent needs png or webp).
    #[serde(default)]
    pub background: Option<String>,
    /// `png`, `jpeg` or `webp`, as the model offers (default png).
    #[serde(default)]
    pub output_format: Option<String>,
    /// 0 to 100, for jpeg and webp output of GPT image models.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub output_compression: Option<i64>,
    /// `low` or `auto`: the GPT image model's own moderation strictness.
    #[serde(default)]
    pub moderation: Option<String>,
    /// May another provider or model serve the request when this one is down (default true)? Translations (size,
    /// quality, dropped options) are recorded on the job.
    #[serde(default)]
    pub allow_failover: Option<bool>,
    /// Cancel the job if it has not started within this many seconds (1 to 86400); also `Cancel-After` header.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86_400)]
    pub deadline_seconds: Option<i64>,
    /// Where to POST the job's events (signed as Standard Webhooks specifies, with the secret of `GET
    /// /api/v1/webhooks/secret`): https (http only where the service allows it).
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub webhook_url: Option<String>,
    /// Which events the webhook hears: `job.started`, `job.succeeded`, `job.failed`, `job.canceled`,
    /// `job.moderated`, `batch.completed`; default: all but `job.started`.
    #[serde(default)]
    pub webhook_events: Option<Vec<String>>,
    /// Partial pictures to stream (the OpenAI-compatible endpoint sets it; not part of this body's JSON).
    #[serde(skip)]
    #[schema(ignore)]
    pub partial_images: u8,
}

/// A request every part of which has been checked: this is what is stored on the job and run by a worker. Made only
/// by `parse` (from a client's body), by `resolve`/`translate` (for another model) or read back from the job store,
/// so holding one means it was checked; read it through its accessors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationRequest {
    pub(crate) prompt: Prompt,
    /// The model that serves it (after any replacement of a retired one).
    pub(crate) model: ModelId,
    /// The provider the client asked for, if any: its routes go first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) provider: Option<ProviderId>,
    pub(crate) size: Size,
    pub(crate) num_images: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) quality: Option<Quality>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) style: Option<Style>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) seed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) background: Option<Background>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) output_format: Option<OutputFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) output_compression: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) moderation: Option<ModerationLevel>,
    pub(crate) allow_failover: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deadline_secs: Option<u32>,
    /// The model the client named, when another one serves it (a retired model's replacement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) requested_model: Option<ModelId>,
    /// Every change made at submission to suit the serving model, e.g. `size 1792x1024 -> 1536x1024`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) translations: Vec<String>,
    /// Partial pictures to stream while generating (0 to 3; the OpenAI-compatible `stream` requests). A provider
    /// that streams is asked for them and the worker passes them on; one that does not simply makes none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) partial_images: u8,
    /// The request's own webhook (read by the database's outbox trigger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) webhook: Option<WebhookTarget>,
    /// Set for an edit: the inputs it starts from (their bytes are the job's `job_inputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) edit: Option<super::EditParams>,
    /// The model came from a seed provider name (`flux_schnell`), which any provider of its family may serve.
    #[serde(skip)]
    pub(crate) via_seed_name: bool,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// The most partial pictures a request may ask for (OpenAI's bound).
pub const MAX_PARTIAL_IMAGES: u8 = 3;

impl GenerationRequest {
    pub fn prompt(&self) -> &Prompt {
        &self.prompt
    }
    pub fn model(&self) -> &ModelId {
        &self.model
    }
    /// The provider the client asked for, if any.
    pub fn provider(&self) -> Option<ProviderId> {
        self.provider
    }
    pub fn size(&self) -> Size {
        self.size
    }
    pub fn num_images(&self) -> u8 {
        self.num_images
    }
    pub fn quality(&self) -> Option<Quality> {
        self.quality
    }
    pub fn style(&self) -> Option<Style> {
        self.style
    }
    pub fn seed(&self) -> Option<u32> {
        self.seed
    }
    pub fn background(&self) -> Option<Background> {
        self.background
    }
    pub fn output_format(&self) -> Option<OutputFormat> {
        self.output_format
    }
    pub fn output_compression(&self) -> Option<u8> {
        self.output_compression
    }
    pub fn moderation(&self) -> Option<ModerationLevel> {
        self.moderation
    }
    pub fn allow_failover(&self) -> bool {
        self.allow_failover
    }
    /// Seconds from submission by which the job must have started (the body's `deadline_seconds`, else the
    /// `Cancel-After` header).
    pub fn deadline_secs(&self) -> Option<u32> {
        self.deadline_secs
    }
    pub fn requested_model(&self) -> Option<&ModelId> {
        self.requested_model.as_ref()
    }
    pub fn translations(&self) -> &[String] {
        &self.translations
    }
    pub fn partial_images(&self) -> u8 {
        self.partial_images
    }
    pub fn webhook(&self) -> Option<&WebhookTarget> {
        self.webhook.as_ref()
    }
    /// Where the webhook's image links point (the API sets it from the request's host).
    pub fn set_webhook_link_base(&mut self, base: String) {
        if let Some(hook) = self.webhook.as_mut() {
            hook.link_base = Some(base);
        }
    }
    /// The edit's inputs, when this is an edit.
    pub fn edit(&self) -> Option<&super::EditParams> {
        self.edit.as_ref()
    }
    /// Makes this an edit of the given inputs (checked against the model by the caller: `edit_inputs::check_count`).
    pub fn with_edit(mut self, edit: super::EditParams) -> Self {
        self.edit = Some(edit);
        self
    }
    /// Asks for `n` partial pictures (held to 0..=3).
    pub fn with_partial_images(mut self, n: u8) -> Self {
        self.partial_images = n.min(MAX_PARTIAL_IMAGES);
        self
    }
}

/// The request as stored by any version: jobs written before the model catalogue named only a seed provider
/// (`"provider": "dalle3"`), which stands for its model.
#[derive(Deserialize)]
struct StoredRequest {
    prompt: Prompt,
    #[serde(default)]
    model: Option<ModelId>,
    #[serde(default)]
    provider: Option<String>,
    size: Size,
    num_images: u8,
    #[serde(default)]
    quality: Option<Quality>,
    #[serde(default)]
    style: Option<Style>,
    #[serde(default)]
    seed: Option<u32>,
    #[serde(default)]
    background: Option<Background>,
    #[serde(default)]
    output_format: Option<OutputFormat>,
    #[serde(default)]
    output_compression: Option<u8>,
    #[serde(default)]
    moderation: Option<ModerationLevel>,
    #[serde(default = "default_true")]
    allow_failover: bool,
    #[serde(default)]
    deadline_secs: Option<u32>,
    #[serde(default)]
    requested_model: Option<ModelId>,
    #[serde(default)]
    translations: Vec<String>,
    #[serde(default)]
    partial_images: u8,
    #[serde(default)]
    webhook: Option<WebhookTarget>,
    #[serde(default)]
    edit: Option<super::EditParams>,
}

impl<'de> Deserialize<'de> for GenerationRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StoredRequest::deserialize(d)?;
        let pinned = s
            .provider
            .as_deref()
            .and_then(|p| p.parse::<ProviderId>().ok());
        let model = match (s.model, s.provider.as_deref()) {
            (Some(model), _) => model,
            (None, Some(legacy)) => crate::catalogue::Catalogue::builtin()
                .legacy_model(legacy)
                .cloned()
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("no model for provider '{legacy}'"))
                })?,
            (None, None) => return Err(serde::de::Error::missing_field("model")),
        };
        Ok(Self {
            prompt: s.prompt,
            model,
            provider: pinned,
            size: s.size,
            num_images: s.num_images,
            quality: s.quality,
            style: s.style,
            seed: s.seed,
            background: s.background,
            output_format: s.output_format,
            output_compression: s.output_compression,
            moderation: s.moderation,
            allow_failover: s.allow_failover,
            deadline_secs: s.deadline_secs,
            requested_model: s.requested_model,
            translations: s.translations,
            partial_images: s.partial_images.min(MAX_PARTIAL_IMAGES),
            webhook: s.webhook,
            edit: s.edit,
            via_seed_name: false,
        })
    }
}

/// The request's own webhook, checked: `webhook_events` without `webhook_url` is an error.
fn parse_webhook(body: &GenerateBody, errors: &mut ValidationErrors) -> Option<WebhookTarget> {
    let events = match check_events(body.webhook_events.as_deref()) {
        Ok(events) => events,
        Err(e) => {
            errors.push("webhook_events", e);
            return None;
        }
    };
    let Some(url) = &body.webhook_url else {
        if body.webhook_events.is_some() {
            errors.push("webhook_events", "needs webhook_url");
        }
        return None;
    };
    match check_url(url) {
        Ok(_) => Some(WebhookTarget {
            url: url.clone(),
            events,
            link_base: None,
        }),
        Err(e) => {
            errors.push("webhook_url", e);
            None
        }
    }
}

/// The longest deadline a client may set: a day.
pub const MAX_DEADLINE_SECS: i64 = 86_400;

fn default_true() -> bool {
    true
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
    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    pub fn one(field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::default();
        e.push(field, message);
        e
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

fn join<T: fmt::Display>(values: &[T]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An option checked against what the model offers: absent -> `None`; given -> parsed and offered, or an error.
fn option<
    T: Copy + PartialEq + fmt::Display + std::str::FromStr<Err = super::options::UnknownValue>,
>(
    errors: &mut ValidationErrors,
    field: &str,
    raw: Option<&str>,
    offered: &[T],
    model: &ModelSpec,
) -> Option<T> {
    let raw = raw?;
    if offered.is_empty() {
        errors.push(field, format!("{field} is not supported by {}", model.id));
        return None;
    }
    match raw.parse::<T>() {
        Ok(v) if offered.contains(&v) => Some(v),
        _ => {
            errors.push(
                field,
                format!(
                    "{field} must be one of {} for {}, got '{raw}'",
                    join(offered),
                    model.id
                ),
            );
            None
        }
    }
}

/// What `parse` found before the model's own checks: the model asked for and the provider pinned, if any.
fn choose_model(
    body: &GenerateBody,
    offer: &Offer,
    errors: &mut ValidationErrors,
) -> Option<(std::sync::Arc<ModelSpec>, Option<ProviderId>)> {
    let catalogue = &offer.catalogue;
    let mut pinned = None;
    let mut legacy_model = None;
    if let Some(raw) = body.provider.as_deref() {
        if let Some(model) = catalogue.legacy_model(raw) {
            legacy_model = Some(model.clone());
        } else {
            match raw.parse::<ProviderId>() {
                Err(_) => {
                    let mut known: Vec<String> =
                        ProviderId::ALL.iter().map(|p| p.to_string()).collect();
                    known.extend(catalogue.legacy_names().map(|(n, _)| n.clone()));
                    errors.push(
                        "provider",
                        format!("Unknown provider '{raw}' (known: {})", known.join(", ")),
                    );
                    return None;
                }
                Ok(p) if !offer.enabled.contains(&p) => {
                    errors.push(
                        "provider",
                        format!("Provider '{p}' is not enabled on this service"),
                    );
                    return None;
                }
                Ok(p) if !offer.is_configured(p) => {
                    errors.push(
                        "provider",
                        format!("Provider '{p}' is not configured on this service (no API key)"),
                    );
                    return None;
                }
                Ok(p) => pinned = Some(p),
            }
        }
    }
    let model_id = match (body.model.as_deref(), legacy_model) {
        (Some(m), Some(legacy)) if catalogue.get(m).map(|s| &s.id) != Some(&legacy) => {
            errors.push(
                "provider",
                format!(
                    "provider '{}' stands for model {legacy}; name either the model or a provider (openai, azure_openai, flux, bfl)",
                    body.provider.as_deref().unwrap_or_default()
                ),
            );
            return None;
        }
        (Some(m), _) => m.to_owned(),
        (None, Some(legacy)) => legacy.to_string(),
        (None, None) => match pinned {
            Some(p) => match offer.provider_default(p) {
                Some(m) => m.to_string(),
                None => {
                    errors.push(
                        "provider",
                        format!("Provider '{p}' serves no current model here"),
                    );
                    return None;
                }
            },
            None => offer.default_model.to_string(),
        },
    };
    let spec = catalogue.get(&model_id).or_else(|| {
        catalogue
            .legacy_model(&model_id)
            .and_then(|m| catalogue.get(m.as_str()))
    });
    match spec {
        Some(spec) => Some((spec.clone(), pinned)),
        None => {
            errors.push(
                "model",
                format!("Unknown model '{model_id}' (GET /api/v1/models lists the models this service knows)"),
            );
            None
        }
    }
}

impl GenerationRequest {
    /// Checks `body` against the model it names (retired or not: what happens then is `resolve`'s decision).
    /// `cancel_after` is the `Cancel-After` header's deadline, used when the body sets none.
    pub fn parse(
        body: GenerateBody,
        offer: &Offer,
        cancel_after: Option<u32>,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();

        let prompt = Prompt::try_from(body.prompt.clone())
            .map_err(|e| errors.push("prompt", e.to_string()))
            .ok();

        // The remaining checks need the model; without one, report only what was found so far.
        let Some((model, pinned)) = choose_model(&body, offer, &mut errors) else {
            return Err(errors);
        };
        let id = &model.id;

        if let Some(p) = &prompt {
            let chars = p.as_str().chars().count();
            if chars > model.max_prompt_chars as usize {
                errors.push(
                    "prompt",
                    format!(
                        "Prompt is too long for {id}: {chars} characters (at most {})",
                        model.max_prompt_chars
                    ),
                );
            }
        }

        let size = match body.size.as_deref() {
            None => Some(model.sizes.default),
            Some(raw) => match raw.parse::<Size>() {
                Ok(s) if model.accepts_size(s) => Some(s),
                _ => {
                    errors.push(
                        "size",
                        format!(
                            "Size '{raw}' is not supported by {id} (supported: {})",
                            model.describe_sizes()
                        ),
                    );
                    None
                }
            },
        };

        let max_images = model.max_images.min(offer.max_images_per_request).max(1);
        let num_images = match body.num_images {
            None => Some(1),
            Some(n) if n >= 1 && n <= i64::from(max_images) => u8::try_from(n).ok(),
            Some(n) if max_images == 1 => {
                errors.push(
                    "num_images",
                    format!("{id} makes one image per request, got {n}"),
                );
                None
            }
            Some(n) => {
                errors.push(
                    "num_images",
                    format!("num_images must be between 1 and {max_images} for {id}, got {n}"),
                );
                None
            }
        };

        let quality = option(
            &mut errors,
            "quality",
            body.quality.as_deref(),
            &model.qualities,
            &model,
        )
        .or(if body.quality.is_none() {
            model.default_quality
        } else {
            None
        });
        let style = option(
            &mut errors,
            "style",
            body.style.as_deref(),
            &model.styles,
            &model,
        )
        .or(if body.style.is_none() {
            model.default_style
        } else {
            None
        });
        let background = option(
            &mut errors,
            "background",
            body.background.as_deref(),
            &model.backgrounds,
            &model,
        );
        let formats = match pinned {
            Some(p) if model.serves.contains_key(&p) => model.formats_on(p),
            _ => &model.output_formats,
        };
        let output_format = option(
            &mut errors,
            "output_format",
            body.output_format.as_deref(),
            formats,
            &model,
        );
        let moderation = option(
            &mut errors,
            "moderation",
            body.moderation.as_deref(),
            &model.moderation,
            &model,
        );

        let output_compression = match body.output_compression {
            None => None,
            Some(_) if !model.output_compression => {
                errors.push(
                    "output_compression",
                    format!("output_compression is not supported by {id}"),
                );
                None
            }
            Some(c) if !(0..=100).contains(&c) => {
                errors.push(
                    "output_compression",
                    format!("output_compression must be between 0 and 100, got {c}"),
                );
                None
            }
            Some(_) if !output_format.is_some_and(OutputFormat::is_lossy) => {
                errors.push(
                    "output_compression",
                    "output_compression needs output_format jpeg or webp",
                );
                None
            }
            Some(c) => u8::try_from(c).ok(),
        };
        if background == Some(Background::Transparent)
            && output_format.is_some_and(|f| !f.has_alpha())
        {
            errors.push(
                "background",
                "a transparent background needs output_format png or webp",
            );
        }

        let seed = match (body.seed, model.seed) {
            (None, _) => None,
            (Some(_), false) => {
                errors.push("seed", format!("seed is not supported by {id}"));
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

        let webhook = parse_webhook(&body, &mut errors);

        match (prompt, size, num_images) {
            (Some(prompt), Some(size), Some(num_images)) if errors.0.is_empty() => Ok(Self {
                webhook,
                allow_failover: body.allow_failover.unwrap_or(true),
                deadline_secs: deadline_secs.or(cancel_after),
                prompt,
                model: model.id.clone(),
                provider: pinned,
                size,
                num_images,
                quality,
                style,
                seed,
                background,
                output_format,
                output_compression,
                moderation,
                requested_model: None,
                translations: Vec::new(),
                partial_images: body.partial_images.min(MAX_PARTIAL_IMAGES),
                edit: None,
                via_seed_name: body.model.is_none()
                    && body
                        .provider
                        .as_deref()
                        .is_some_and(|p| offer.catalogue.legacy_model(p).is_some()),
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
pub(crate) mod tests;
