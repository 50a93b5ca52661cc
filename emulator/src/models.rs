//! What each emulated provider serves, written from the providers' own documentation (shared/models.md) and kept
//! apart from our catalogue on purpose: the emulator models the providers, not us.
//!
//! - OpenAI (`/v1/images/generations`): the GPT image models below; `dall-e-2`/`dall-e-3` retired on 2026-05-12,
//!   `gpt-image-1` on 2026-10-23, and `gpt-image-1-mini`, `gpt-image-1.5` (and its snapshot), `chatgpt-image-latest`
//!   shut down on 2026-12-01.
//! - Azure OpenAI: `gpt-image-2` (GA to 2027-04-21), `gpt-image-1-mini` (to 2027-04-07), `gpt-image-1.5` (to
//!   2026-12-16); `dall-e-3` retired 2026-03-04, `gpt-image-1` 2026-10-23.
//! - Together: `black-forest-labs/FLUX.1-schnell` (the `-Free` variant is gone).
//! - Black Forest Labs: the FLUX.2 endpoints, FLUX1.1 [pro], FLUX.1 [pro]/[dev], FLUX1.1 [pro] Ultra and Kontext.
//!
//! A model is served until its retirement date (exclusive) compared with the emulator's date (the real date unless
//! `--today` sets one), and answers as retired or missing from that day on.

use chrono::NaiveDate;

/// Which parameter rules a GPT image model follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// DALL-E 2 and 3: retired everywhere, listed so their dates are on record.
    DallE,
    /// gpt-image-1, -1-mini, -1.5, chatgpt-image-latest: three fixed sizes, transparent backgrounds.
    GptImage1,
    /// gpt-image-2: any size within limits, no transparent background.
    GptImage2,
    /// gpt-image-2.5 and 2.6 (sunburst, flare): as gpt-image-2, plus quality `xhigh` and `max`.
    GptImage25,
}

impl Family {
    /// Any `WxH` within limits (else only the three standard sizes).
    pub fn flexible_sizes(self) -> bool {
        matches!(self, Family::GptImage2 | Family::GptImage25)
    }

    pub fn transparent_background(self) -> bool {
        self == Family::GptImage1
    }

    pub fn extra_qualities(self) -> bool {
        self == Family::GptImage25
    }
}

/// One model a provider knows of, and the first day it no longer serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageModel {
    pub id: &'static str,
    pub family: Family,
    /// (year, month, day): from this date on the model is retired. `None`: no date announced.
    pub retires: Option<(i32, u32, u32)>,
}

impl ImageModel {
    pub fn retirement(&self) -> Option<NaiveDate> {
        self.retires
            .and_then(|(y, m, d)| NaiveDate::from_ymd_opt(y, m, d))
    }

    pub fn served_on(&self, today: NaiveDate) -> bool {
        self.retirement().is_none_or(|r| today < r)
    }
}

const fn model(id: &'static str, family: Family, retires: Option<(i32, u32, u32)>) -> ImageModel {
    ImageModel {
        id,
        family,
        retires,
    }
}

const OPENAI_DALLE_RETIRED: Option<(i32, u32, u32)> = Some((2026, 5, 12));
const OPENAI_GPT_IMAGE_1_RETIRED: Option<(i32, u32, u32)> = Some((2026, 10, 23));
const OPENAI_GPT_IMAGE_1X_RETIRES: Option<(i32, u32, u32)> = Some((2026, 12, 1));

/// OpenAI's image models (developers.openai.com, images reference and deprecations page).
pub const OPENAI: &[ImageModel] = &[
    model("dall-e-2", Family::DallE, OPENAI_DALLE_RETIRED),
    model("dall-e-3", Family::DallE, OPENAI_DALLE_RETIRED),
    model("gpt-image-1", Family::GptImage1, OPENAI_GPT_IMAGE_1_RETIRED),
    model(
        "gpt-image-1-mini",
        Family::GptImage1,
        OPENAI_GPT_IMAGE_1X_RETIRES,
    ),
    model(
        "gpt-image-1.5",
        Family::GptImage1,
        OPENAI_GPT_IMAGE_1X_RETIRES,
    ),
    model(
        "gpt-image-1.5-2025-12-16",
        Family::GptImage1,
        OPENAI_GPT_IMAGE_1X_RETIRES,
    ),
    model(
        "chatgpt-image-latest",
        Family::GptImage1,
        OPENAI_GPT_IMAGE_1X_RETIRES,
    ),
    model("gpt-image-2", Family::GptImage2, None),
    model("gpt-image-2-2026-04-21", Family::GptImage2, None),
    model("gpt-image-2.5-sunburst", Family::GptImage25, None),
    model(
        "gpt-image-2.5-sunburst-2026-09-08",
        Family::GptImage25,
        None,
    ),
    model("gpt-image-2.5-flare", Family::GptImage25, None),
    model("gpt-image-2.5-flare-2026-09-08", Family::GptImage25, None),
    model("gpt-image-2.6-sunburst", Family::GptImage25, None),
    model("gpt-image-2.6-flare", Family::GptImage25, None),
];

/// Azure OpenAI's image models (Azure's model retirement table of 2026-07-07; dall-e-3 retirement notice).
pub const AZURE: &[ImageModel] = &[
    model("dall-e-2", Family::DallE, Some((2025, 1, 27))),
    model("dall-e-3", Family::DallE, Some((2026, 3, 4))),
    model("gpt-image-1", Family::GptImage1, Some((2026, 10, 23))),
    model("gpt-image-1-mini", Family::GptImage1, Some((2027, 4, 7))),
    model("gpt-image-1.5", Family::GptImage1, Some((2026, 12, 16))),
    model("gpt-image-2", Family::GptImage2, Some((2027, 4, 21))),
];

/// What a deployment serves when its name is neither configured nor a model id.
pub const AZURE_DEFAULT_MODEL: &str = "gpt-image-2";

/// A model looked up on a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Serves(ImageModel),
    /// Known, but past its retirement date.
    Retired(ImageModel),
    Unknown,
}

pub fn lookup(table: &[ImageModel], id: &str, today: NaiveDate) -> Lookup {
    match table.iter().find(|m| m.id == id) {
        Some(m) if m.served_on(today) => Lookup::Serves(*m),
        Some(m) => Lookup::Retired(*m),
        None => Lookup::Unknown,
    }
}

/// Together's FLUX models served on its OpenAI-compatible API (`black-forest-labs/FLUX.1-schnell-Free` is no
/// longer offered: it answers 404 like any unknown model).
pub const TOGETHER: &[&str] = &["black-forest-labs/FLUX.1-schnell"];

/// How a BFL endpoint takes its output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BflSizing {
    /// FLUX.2: `width`/`height`, multiples of 16, each >= 64, at most 4 MP (4,194,304 pixels); default 1024x1024.
    Flux2,
    /// FLUX.1 [pro]/[dev], FLUX1.1 [pro]: `width`/`height`, multiples of 32 in 256..=1440; default 1024x768.
    Flux1,
    /// FLUX1.1 [pro] Ultra and Kontext: `aspect_ratio` "W:H" between 21:9 and 9:21 (default 1:1), about 1 MP.
    AspectRatio,
}

/// What a BFL task costs, in credits (1 credit = $0.01).
///
/// OUR ASSUMPTIONS, not BFL's published rules: the per-model figures follow BFL's pricing pages as read on
/// 2026-11-28 (FLUX.2 per megapixel: first MP, each further MP, and input images per MP; FLUX.1 models a flat price
/// per image); a megapixel is 1024x1024 = 1,048,576 pixels and a started megapixel counts as a whole one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BflCost {
    PerMegapixel { first: f64, extra: f64, input: f64 },
    Flat(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BflEndpoint {
    pub name: &'static str,
    pub sizing: BflSizing,
    pub cost: BflCost,
    /// How many reference images it takes (`input_image`, `input_image_2`, ...): an edit (Kontext 4, FLUX.2 8).
    pub input_images: usize,
}

const fn bfl(
    name: &'static str,
    sizing: BflSizing,
    cost: BflCost,
    input_images: usize,
) -> BflEndpoint {
    BflEndpoint {
        name,
        sizing,
        cost,
        input_images,
    }
}

const fn per_mp(first: f64, extra: f64, input: f64) -> BflCost {
    BflCost::PerMegapixel {
        first,
        extra,
        input,
    }
}

/// Black Forest Labs' generation endpoints (`POST /v1/{name}`).
pub const BFL: &[BflEndpoint] = &[
    bfl("flux-2-pro", BflSizing::Flux2, per_mp(3.0, 1.5, 1.5), 8),
    bfl("flux-2-max", BflSizing::Flux2, per_mp(7.0, 3.0, 3.0), 8),
    bfl("flux-2-flex", BflSizing::Flux2, per_mp(5.0, 5.0, 5.0), 8),
    bfl(
        "flux-2-klein-4b",
        BflSizing::Flux2,
        per_mp(1.4, 0.1, 0.1),
        8,
    ),
    bfl(
        "flux-2-klein-9b",
        BflSizing::Flux2,
        per_mp(1.5, 0.2, 0.2),
        8,
    ),
    bfl("flux-pro-1.1", BflSizing::Flux1, BflCost::Flat(4.0), 0),
    bfl("flux-pro", BflSizing::Flux1, BflCost::Flat(5.0), 0),
    bfl("flux-dev", BflSizing::Flux1, BflCost::Flat(2.5), 0),
    bfl(
        "flux-pro-1.1-ultra",
        BflSizing::AspectRatio,
        BflCost::Flat(6.0),
        0,
    ),
    bfl(
        "flux-kontext-pro",
        BflSizing::AspectRatio,
        BflCost::Flat(4.0),
        4,
    ),
    bfl(
        "flux-kontext-max",
        BflSizing::AspectRatio,
        BflCost::Flat(8.0),
        4,
    ),
];

pub fn bfl_endpoint(name: &str) -> Option<&'static BflEndpoint> {
    BFL.iter().find(|e| e.name == name)
}

/// Pixels in one megapixel, as our cost table counts them.
pub const MEGAPIXEL: f64 = 1_048_576.0;

impl BflEndpoint {
    /// Credits for one task making `output_mp` megapixels from `input_mp` megapixels of reference images.
    pub fn credits(&self, output_mp: f64, input_mp: f64) -> f64 {
        // A started megapixel is a whole one (a hair of float error does not start a new one).
        let whole = |mp: f64| (mp - 1e-9).max(0.0).ceil();
        let credits = match self.cost {
            BflCost::PerMegapixel {
                first,
                extra,
                input,
            } => first + whole(output_mp - 1.0) * extra + whole(input_mp) * input,
            BflCost::Flat(c) => c,
        };
        (credits * 100.0).round() / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("date")
    }

    #[test]
    fn models_retire_on_their_date() {
        let before = day(2026, 11, 30);
        let on = day(2026, 12, 1);
        assert!(matches!(
            lookup(OPENAI, "gpt-image-1.5", before),
            Lookup::Serves(_)
        ));
        assert!(matches!(
            lookup(OPENAI, "gpt-image-1.5", on),
            Lookup::Retired(_)
        ));
        assert!(matches!(
            lookup(OPENAI, "dall-e-3", before),
            Lookup::Retired(_)
        ));
        assert!(matches!(
            lookup(OPENAI, "gpt-image-2.6-flare", on),
            Lookup::Serves(m) if m.family == Family::GptImage25
        ));
        assert_eq!(lookup(OPENAI, "gpt-image-9", on), Lookup::Unknown);
        assert!(matches!(
            lookup(AZURE, "gpt-image-1.5", on),
            Lookup::Serves(_)
        ));
        assert!(matches!(
            lookup(AZURE, "gpt-image-1.5", day(2026, 12, 16)),
            Lookup::Retired(_)
        ));
        assert!(matches!(
            lookup(AZURE, "gpt-image-1", before),
            Lookup::Retired(_)
        ));
    }

    #[test]
    fn bfl_costs_follow_the_table() {
        let pro = bfl_endpoint("flux-2-pro").expect("flux-2-pro");
        assert_eq!(pro.credits(1.0, 0.0), 3.0);
        assert_eq!(pro.credits(1.9, 0.0), 4.5);
        assert_eq!(pro.credits(4.0, 0.0), 7.5);
        assert_eq!(pro.credits(1.0, 1.0), 4.5);
        assert_eq!(
            bfl_endpoint("flux-2-klein-4b")
                .expect("klein")
                .credits(0.5, 0.0),
            1.4
        );
        assert_eq!(
            bfl_endpoint("flux-dev").expect("dev").credits(0.75, 0.0),
            2.5
        );
        assert!(bfl_endpoint("flux-schnell").is_none());
    }
}
