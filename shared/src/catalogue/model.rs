//! One catalogue entry: what a model accepts, who serves it under which id, what it costs and when it retires.

use crate::domain::options::{
    Background, ImageSize, ModerationLevel, OutputFormat, Quality, Size, Style,
};
use crate::domain::provider::{ModelId, ProviderId};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which request fields a protocol sends for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// OpenAI's GPT image models: quality ladder, background, output format and compression, moderation; always
    /// answered in base64 with token `usage`.
    GptImage,
    /// DALL-E 2 and 3: `standard|hd`, styles, `response_format`.
    DallE,
    /// FLUX models: width/height (or aspect ratio) and seed.
    Flux,
}

/// Where a model stands in its life. `preview` and `ga` come from the file; `deprecated` and `retired` follow
/// from its dates and today's.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    Preview,
    Ga,
    Deprecated,
    Retired,
}

/// How a BFL endpoint takes its size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SizeParam {
    #[default]
    WidthHeight,
    /// `aspect_ratio: "W:H"`; the provider picks the pixels (about one megapixel).
    AspectRatio,
}

/// One provider's offer of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Serving {
    /// The provider-side id: the model name sent (OpenAI, Together), the default deployment name (Azure) or the
    /// endpoint (BFL).
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Date)]
    pub deprecated_on: Option<NaiveDate>,
    /// This provider stops serving it on that day (another may go on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Date)]
    pub retires_on: Option<NaiveDate>,
    /// The formats this provider offers when fewer than the model's (Azure: no webp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_formats: Option<Vec<OutputFormat>>,
    #[serde(default)]
    pub size_param: SizeParam,
}

impl Serving {
    pub fn retired_on(&self, today: NaiveDate) -> bool {
        self.retires_on.is_some_and(|d| d <= today)
    }
}

/// Size rules for models that take any size within bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SizeRules {
    /// Both sides must be multiples of this.
    #[serde(default = "one")]
    pub multiple_of: u32,
    #[serde(default = "one")]
    pub min_side: u32,
    pub max_side: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pixels: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pixels: Option<u64>,
    /// The longer side over the shorter, at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_aspect: Option<f64>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SizeSpec {
    /// Whether `auto` (the model picks) is accepted.
    #[serde(default)]
    pub auto: bool,
    /// The size used when a request names none.
    #[schema(value_type = String)]
    pub default: Size,
    /// Sizes accepted (and suggested to clients); with `rules`, any size the rules allow is accepted too.
    #[schema(value_type = Vec<String>)]
    pub list: Vec<ImageSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<SizeRules>,
}

/// What a model takes as an edit (`POST /api/v1/edits`): input images, and whether a mask marks the area to change.
/// Models without an `edits` table do not edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditSpec {
    /// Input (reference) images per request, at most.
    pub max_input_images: u8,
    /// Whether a mask (a PNG with an alpha channel, transparent where to edit, the first image's size) is taken.
    #[serde(default)]
    pub mask: bool,
    /// Whether `input_fidelity` (`high`|`low`: how closely the output keeps the inputs' details) is taken.
    #[serde(default)]
    pub input_fidelity: bool,
}

impl EditSpec {
    /// Whether a request with `inputs` images (and a mask or not) can be sent to this model.
    pub fn takes(&self, inputs: usize, mask: bool) -> bool {
        inputs >= 1 && inputs <= usize::from(self.max_input_images) && (!mask || self.mask)
    }
}

/// USD per 1M tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenPrices {
    pub text_input: f64,
    pub image_input: f64,
    pub image_output: f64,
}

/// A model's price, in force from `effective_on` (until a later one of the same model takes over).
///
/// What each figure is for: a job's cost comes from what the provider reported when it reports it (`usage` tokens
/// at `per_million_tokens`, BFL's `cost` credits at `per_credit`); otherwise from the tables (`per_image`,
/// `per_megapixel`, `credits`), and is then marked estimated. The tables also give the most a request can cost,
/// which a budget reserves before the job is queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[schema(value_type = String, format = Date)]
    pub effective_on: NaiveDate,
    /// Not a price the provider published (a stand-in until it does, or our assumption): every cost computed from
    /// it is marked estimated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisional: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_million_tokens: Option<TokenPrices>,
    /// USD per image, keyed `quality/WxH` (`standard/1024x1024`; models without qualities: `WxH`). For
    /// token-priced models, the provider's published per-image figures, used where no `usage` is reported and to
    /// bound a request's cost; other sizes scale from the same quality's 1024x1024 figure by pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_image: Option<BTreeMap<String, f64>>,
    /// USD per megapixel of output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_megapixel: Option<f64>,
    /// USD per provider credit (BFL reports each task's cost in credits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_credit: Option<f64>,
    /// Credits one image takes, for estimates when the provider does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<CreditTable>,
}

/// Credits per image: `first_mp` for the first megapixel (1024x1024 pixels) and `extra_mp` for each further one
/// started; a flat-priced endpoint has `extra_mp = 0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditTable {
    pub first_mp: f64,
    #[serde(default)]
    pub extra_mp: f64,
}

/// `price = {...}` or `price = [{...}, {...}]`: one price or its history.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Price>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Box<Price>),
        Many(Vec<Price>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![*p],
        OneOrMany::Many(v) => v,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub id: ModelId,
    pub name: String,
    pub description: String,
    pub family: Family,
    /// `preview` or `ga` as published; see `status_on` for today's.
    pub status: ModelStatus,
    #[serde(default)]
    pub released_on: Option<NaiveDate>,
    #[serde(default)]
    pub deprecated_on: Option<NaiveDate>,
    /// The last provider stops serving it on that day.
    #[serde(default)]
    pub retires_on: Option<NaiveDate>,
    /// What serves its requests once it is retired (unless MODEL_ALIASES says otherwise).
    #[serde(default)]
    pub replacement: Option<ModelId>,
    pub typical_generation_time: String,
    pub max_prompt_chars: u32,
    /// Images per request.
    pub max_images: u8,
    /// Images per provider call; more are split into several calls.
    pub images_per_call: u8,
    pub seed: bool,
    pub qualities: Vec<Quality>,
    #[serde(default)]
    pub default_quality: Option<Quality>,
    pub styles: Vec<Style>,
    #[serde(default)]
    pub default_style: Option<Style>,
    pub backgrounds: Vec<Background>,
    pub output_formats: Vec<OutputFormat>,
    pub output_compression: bool,
    pub moderation: Vec<ModerationLevel>,
    pub serves: BTreeMap<ProviderId, Serving>,
    pub sizes: SizeSpec,
    /// What it takes as an edit; none: it does not edit.
    #[serde(default)]
    pub edits: Option<EditSpec>,
    /// The model's prices over time (the TOML key is `price`, one table or an array of them).
    #[serde(default, rename = "price", deserialize_with = "one_or_many")]
    pub prices: Vec<Price>,
}

impl ModelSpec {
    /// The price in force on `day`: the latest `effective_on` not after it (a later entry wins a tie, so an override
    /// file's negotiated price replaces the list price of the same day).
    pub fn price_on(&self, day: NaiveDate) -> Option<&Price> {
        self.prices
            .iter()
            .enumerate()
            .filter(|(_, p)| p.effective_on <= day)
            .max_by_key(|(i, p)| (p.effective_on, *i))
            .map(|(_, p)| p)
    }

    /// Today's standing: retired from `retires_on`, deprecated from `deprecated_on` (or once a retirement is set).
    pub fn status_on(&self, today: NaiveDate) -> ModelStatus {
        if self.retires_on.is_some_and(|d| d <= today) {
            ModelStatus::Retired
        } else if self.deprecated_on.is_some_and(|d| d <= today) || self.retires_on.is_some() {
            ModelStatus::Deprecated
        } else {
            self.status
        }
    }

    /// The formats `provider` produces for it.
    pub fn formats_on(&self, provider: ProviderId) -> &[OutputFormat] {
        self.serves
            .get(&provider)
            .and_then(|s| s.output_formats.as_deref())
            .unwrap_or(&self.output_formats)
    }

    /// Whether it can edit with `inputs` images (and a mask or not).
    pub fn edits_with(&self, inputs: usize, mask: bool) -> bool {
        self.edits.as_ref().is_some_and(|e| e.takes(inputs, mask))
    }

    pub fn accepts_size(&self, size: Size) -> bool {
        match size {
            Size::Auto => self.sizes.auto,
            Size::Exact(s) => {
                self.sizes.list.contains(&s)
                    || self.sizes.rules.as_ref().is_some_and(|r| r.allow(s))
            }
        }
    }

    /// A sentence naming what sizes are accepted, for error messages.
    pub fn describe_sizes(&self) -> String {
        let list = self
            .sizes
            .list
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = match &self.sizes.rules {
            None => list,
            Some(r) => {
                let mut parts = vec![format!(
                    "sides multiples of {} from {} to {}",
                    r.multiple_of, r.min_side, r.max_side
                )];
                if let Some(a) = r.max_aspect {
                    parts.push(format!("aspect ratio at most {a}:1"));
                }
                if let Some(p) = r.min_pixels {
                    parts.push(format!("at least {p} pixels"));
                }
                if let Some(p) = r.max_pixels {
                    parts.push(format!("at most {p} pixels"));
                }
                format!("{} (e.g. {list})", parts.join(", "))
            }
        };
        if self.sizes.auto {
            out.push_str(", or auto");
        }
        out
    }
}

impl SizeRules {
    pub fn allow(&self, s: ImageSize) -> bool {
        let (long, short) = (s.width.max(s.height), s.width.min(s.height));
        s.width.is_multiple_of(self.multiple_of)
            && s.height.is_multiple_of(self.multiple_of)
            && short >= self.min_side
            && long <= self.max_side
            && self.min_pixels.is_none_or(|p| s.pixels() >= p)
            && self.max_pixels.is_none_or(|p| s.pixels() <= p)
            && self
                .max_aspect
                .is_none_or(|a| f64::from(long) <= a * f64::from(short))
    }

    /// The allowed size nearest `s` in shape and area: the aspect ratio clamped to the bounds, the area to the pixel
    /// bounds, the sides rounded to the multiple (then nudged inside the bounds).
    pub fn fit(&self, s: ImageSize) -> ImageSize {
        let m = f64::from(self.multiple_of.max(1));
        let mut ratio = s.aspect();
        if let Some(a) = self.max_aspect {
            ratio = ratio.clamp(1.0 / a, a);
        }
        let mut area = s.pixels() as f64;
        if let Some(p) = self.min_pixels {
            area = area.max(p as f64);
        }
        if let Some(p) = self.max_pixels {
            area = area.min(p as f64);
        }
        let mut w = (area * ratio).sqrt();
        let mut h = w / ratio;
        // Sides within bounds, keeping the ratio where possible.
        let max = f64::from(self.max_side);
        let min = f64::from(self.min_side);
        if w > max {
            h *= max / w;
            w = max;
        }
        if h > max {
            w *= max / h;
            h = max;
        }
        let round = |v: f64| -> u32 {
            let r = ((v / m).round() * m).clamp(min.max(m), max);
            // Rounding up past the bound: step back one multiple.
            (r as u32) / self.multiple_of.max(1) * self.multiple_of.max(1)
        };
        let mut out = ImageSize::new(round(w), round(h));
        // Rounding may cross a pixel bound by a hair: shrink or grow one step at a time (bounded).
        for _ in 0..64 {
            if self.allow(out) {
                break;
            }
            let step = self.multiple_of.max(1);
            if self.max_pixels.is_some_and(|p| out.pixels() > p) {
                if out.width >= out.height {
                    out.width = out.width.saturating_sub(step).max(step);
                } else {
                    out.height = out.height.saturating_sub(step).max(step);
                }
            } else if self.min_pixels.is_some_and(|p| out.pixels() < p) {
                if out.width <= out.height {
                    out.width = (out.width + step).min(self.max_side);
                } else {
                    out.height = (out.height + step).min(self.max_side);
                }
            } else {
                break;
            }
        }
        out
    }
}
