//! Prices a provider's answer (what it charged) and a request (the most it can cost), from the catalogue's price
//! of the day. Reported figures win: GPT image `usage` tokens, BFL `cost` credits; otherwise the tables
//! (per image, per megapixel, credits per image) give an estimate.

use super::{Cost, CostBasis, micros};
use crate::catalogue::{ModelSpec, Price};
use crate::domain::GenerationRequest;
use crate::domain::options::{ImageSize, Quality, Size};
use chrono::NaiveDate;
use serde_json::Value;

/// Pixels in the megapixel of BFL's credit tables (1024x1024).
const BFL_MEGAPIXEL: u64 = 1_048_576;
/// Pixels in the megapixel of per-megapixel prices (Together bills per million pixels).
const MEGAPIXEL: f64 = 1_000_000.0;
/// The size a per-image table's other sizes scale from.
const BASE_SIZE: ImageSize = ImageSize {
    width: 1024,
    height: 1024,
};
/// The largest picture `size: auto` makes on a GPT image model (OpenAI picks among 1024x1024, 1536x1024 and
/// 1024x1536).
const AUTO_SIZE: ImageSize = ImageSize {
    width: 1536,
    height: 1024,
};

/// What a provider answered, as far as its price goes.
#[derive(Debug, Clone, Default)]
pub struct Answer<'a> {
    /// The `usage` object of a GPT image answer (summed over its calls).
    pub usage: Option<&'a Value>,
    /// Credits the provider reported (BFL's `cost`, summed over its tasks).
    pub credits: Option<f64>,
    /// The quality the pictures were made at, when known (`auto` and unknown price as the highest).
    pub quality: Option<Quality>,
    /// Each returned picture's size.
    pub sizes: Vec<ImageSize>,
}

/// What `answer` cost on `model`, at the price of `day`.
pub fn price_answer(model: &ModelSpec, day: NaiveDate, answer: &Answer<'_>) -> Cost {
    let Some(price) = model.price_on(day) else {
        return unpriced();
    };
    let provisional = price.provisional;
    if let (Some(tokens), Some(usage)) = (&price.per_million_tokens, answer.usage)
        && let Some(u) = Usage::read(usage)
    {
        let nanos = u.text_input * nano_per_token(tokens.text_input)
            + u.image_input * nano_per_token(tokens.image_input)
            + u.output * nano_per_token(tokens.image_output);
        return Cost {
            usd_micros: i64::try_from(nanos.div_ceil(1000)).unwrap_or(i64::MAX),
            basis: CostBasis::Tokens,
            estimated: provisional,
        };
    }
    if let (Some(per_credit), Some(credits)) = (price.per_credit, answer.credits)
        && credits.is_finite()
        && credits >= 0.0
    {
        return Cost {
            usd_micros: micros(credits * per_credit),
            basis: CostBasis::Credits,
            estimated: provisional,
        };
    }
    estimate(model, price, answer.quality, &answer.sizes, 0).unwrap_or_else(unpriced)
}

/// The most `request` can cost on `model` at the price of `day`: every picture at the highest quality it may be
/// made at, the largest size `auto` may pick, and the prompt's every character a text token. `None`: unpriced.
pub fn max_cost(model: &ModelSpec, day: NaiveDate, request: &GenerationRequest) -> Option<Cost> {
    let price = model.price_on(day)?;
    let size = match request.size() {
        Size::Exact(s) => s,
        Size::Auto => AUTO_SIZE,
    };
    let sizes = vec![size; usize::from(request.num_images())];
    let prompt_chars = request.prompt().as_str().chars().count() as u64;
    let calls = u64::from(request.num_images()).div_ceil(u64::from(model.images_per_call.max(1)));
    estimate(
        model,
        price,
        request.quality(),
        &sizes,
        prompt_chars * calls,
    )
}

/// Tokens one input image is counted as, at most: as a vision input is (85, plus 170 per started 512-pixel tile
/// at the size given), twice with `input_fidelity` high (our assumption, as the emulator's: the providers do not
/// publish the rule for image models). Providers that scale inputs down first count fewer.
pub fn input_image_tokens(width: u32, height: u32, high_fidelity: bool) -> u64 {
    let tiles = u64::from(width.div_ceil(512)) * u64::from(height.div_ceil(512));
    (85 + 170 * tiles) * if high_fidelity { 2 } else { 1 }
}

/// The most an edit's input images (and mask) add to its cost on a token-priced model, at the image-input price;
/// 0 where inputs are not priced by tokens. `sizes`: each input's (width, height), `None` when not known yet (an
/// input the worker fetches by URL), counted as the largest allowed (`max_pixels`, square).
pub fn max_input_cost(
    model: &ModelSpec,
    day: NaiveDate,
    sizes: &[Option<(u32, u32)>],
    high_fidelity: bool,
    max_pixels: u64,
) -> i64 {
    let Some(tokens) = model
        .price_on(day)
        .and_then(|p| p.per_million_tokens.as_ref())
    else {
        return 0;
    };
    let side = u32::try_from(max_pixels.isqrt()).unwrap_or(u32::MAX);
    let total: u64 = sizes
        .iter()
        .map(|s| {
            let (w, h) = s.unwrap_or((side, side));
            input_image_tokens(w, h, high_fidelity)
        })
        .sum();
    i64::try_from((total * nano_per_token(tokens.image_input)).div_ceil(1000)).unwrap_or(i64::MAX)
}

/// From the tables: per image (scaled by pixels off 1024x1024), per megapixel, or credits per image; plus
/// `text_tokens` at the text input price when the model is priced per token.
fn estimate(
    model: &ModelSpec,
    price: &Price,
    quality: Option<Quality>,
    sizes: &[ImageSize],
    text_tokens: u64,
) -> Option<Cost> {
    let text = price.per_million_tokens.as_ref().map_or(0, |t| {
        i64::try_from((text_tokens * nano_per_token(t.text_input)).div_ceil(1000)).unwrap_or(0)
    });
    let cost = |usd_micros: i64, basis| Cost {
        usd_micros: usd_micros.saturating_add(text),
        basis,
        estimated: true,
    };
    if let Some(table) = &price.per_image {
        let mut total = 0i64;
        for size in sizes {
            total = total.saturating_add(micros(per_image(model, table, quality, *size)?));
        }
        return Some(cost(total, CostBasis::PerImage));
    }
    if let Some(per_mp) = price.per_megapixel {
        let total: f64 = sizes
            .iter()
            .map(|s| per_mp * s.pixels() as f64 / MEGAPIXEL)
            .sum();
        return Some(cost(micros(total), CostBasis::PerMegapixel));
    }
    if let (Some(table), Some(per_credit)) = (&price.credits, price.per_credit) {
        let credits: f64 = sizes
            .iter()
            .map(|s| {
                // A started megapixel counts whole.
                let megapixels = s.pixels().div_ceil(BFL_MEGAPIXEL).max(1);
                table.first_mp + (megapixels - 1) as f64 * table.extra_mp
            })
            .sum();
        return Some(cost(micros(credits * per_credit), CostBasis::CreditTable));
    }
    None
}

/// One picture's price from a `quality/WxH` table: the exact entry, else the quality's 1024x1024 entry scaled by
/// pixels. `auto` or no quality on a model with qualities: the dearest quality (an upper bound). Qualities above
/// the table's (`xhigh`, `max`) are priced as `high` times 1.5 and 2 (our assumption, as the emulator's).
fn per_image(
    model: &ModelSpec,
    table: &std::collections::BTreeMap<String, f64>,
    quality: Option<Quality>,
    size: ImageSize,
) -> Option<f64> {
    let lookup = |q: Option<Quality>| -> Option<f64> {
        let key = |s: ImageSize| match q {
            Some(q) => format!("{q}/{s}"),
            None => s.to_string(),
        };
        table.get(&key(size)).copied().or_else(|| {
            table
                .get(&key(BASE_SIZE))
                .map(|base| base * size.pixels() as f64 / BASE_SIZE.pixels() as f64)
        })
    };
    let priced = |q: Quality| -> Option<f64> {
        lookup(Some(q)).or(match q {
            Quality::Xhigh => lookup(Some(Quality::High)).map(|p| p * 1.5),
            Quality::Max => lookup(Some(Quality::High)).map(|p| p * 2.0),
            _ => None,
        })
    };
    match quality {
        _ if model.qualities.is_empty() => lookup(None),
        Some(q) if q != Quality::Auto => priced(q).or_else(|| dearest(model, &priced)),
        _ => dearest(model, &priced),
    }
}

fn dearest(model: &ModelSpec, priced: &dyn Fn(Quality) -> Option<f64>) -> Option<f64> {
    model
        .qualities
        .iter()
        .filter_map(|q| priced(*q))
        .max_by(f64::total_cmp)
}

/// Nano-dollars per token of a price in dollars per million tokens.
fn nano_per_token(usd_per_million: f64) -> u64 {
    (usd_per_million * 1000.0).round().max(0.0) as u64
}

fn unpriced() -> Cost {
    Cost {
        usd_micros: 0,
        basis: CostBasis::Unpriced,
        estimated: true,
    }
}

/// Token counts of a `usage` object: `{input_tokens, input_tokens_details: {text_tokens, image_tokens},
/// output_tokens}` (details missing: all input is text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    text_input: u64,
    image_input: u64,
    output: u64,
}

impl Usage {
    fn read(v: &Value) -> Option<Usage> {
        let count = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        let input = count(v, "input_tokens").unwrap_or(0);
        let output = count(v, "output_tokens")?;
        let details = v.get("input_tokens_details");
        let image_input = details.and_then(|d| count(d, "image_tokens")).unwrap_or(0);
        let text_input = details
            .and_then(|d| count(d, "text_tokens"))
            .unwrap_or(input.saturating_sub(image_input));
        Some(Usage {
            text_input,
            image_input,
            output,
        })
    }
}
