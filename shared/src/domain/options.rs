//! The values a request's options take on the wire (`quality`, `style`, `background`, `output_format`,
//! `moderation`, `size`), each an enum that prints and parses as the providers spell it. Which values a model
//! accepts is the catalogue's business (`crate::catalogue`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A wire value that is not one of the enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a {what} (one of: {known})")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub known: String,
}

/// An enum whose variants are written as fixed lowercase words on the wire.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        // Lowercase variant names are the wire words (the OpenAPI schema is derived from the names, not renames);
        // `wire_values_round_trip` checks they agree with `as_str`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let lower = s.trim().to_ascii_lowercase();
                $name::ALL.iter().copied().find(|v| v.as_str() == lower).ok_or_else(|| UnknownValue {
                    what: $what,
                    value: s.to_owned(),
                    known: $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                })
            }
        }
    };
}

wire_enum!(
    /// Rendering quality. GPT image models take `low|medium|high|auto` (some also `xhigh|max`); DALL-E took
    /// `standard|hd`. Moving between ladders goes by the catalogue's ranks.
    Quality, "quality" {
        Low => "low",
        Medium => "medium",
        High => "high",
        Xhigh => "xhigh",
        Max => "max",
        Auto => "auto",
        Standard => "standard",
        Hd => "hd",
    }
);

wire_enum!(
    /// DALL-E 3's styles.
    Style, "style" {
        Vivid => "vivid",
        Natural => "natural",
    }
);

wire_enum!(
    /// GPT image models' background: `transparent` needs a format with alpha (png, webp).
    Background, "background" {
        Transparent => "transparent",
        Opaque => "opaque",
        Auto => "auto",
    }
);

wire_enum!(
    /// The picture's encoding.
    OutputFormat, "output format" {
        Png => "png",
        Jpeg => "jpeg",
        Webp => "webp",
    }
);

wire_enum!(
    /// GPT image models' own content-moderation strictness.
    ModerationLevel, "moderation level" {
        Low => "low",
        Auto => "auto",
    }
);

impl OutputFormat {
    pub fn has_alpha(self) -> bool {
        matches!(self, OutputFormat::Png | OutputFormat::Webp)
    }

    /// Whether `output_compression` means anything for it.
    pub fn is_lossy(self) -> bool {
        matches!(self, OutputFormat::Jpeg | OutputFormat::Webp)
    }
}

/// Width x height in pixels, written `1024x1024` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageSize {
    pub const fn new(width: u32, height: u32) -> Self {
        Self { width, height }
    }

    pub fn pixels(self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Width over height.
    pub fn aspect(self) -> f64 {
        f64::from(self.width) / f64::from(self.height.max(1))
    }

    /// The ratio in lowest terms, `16:9` (BFL's `aspect_ratio`).
    pub fn ratio_string(self) -> String {
        fn gcd(a: u32, b: u32) -> u32 {
            if b == 0 { a } else { gcd(b, a % b) }
        }
        let g = gcd(self.width, self.height).max(1);
        format!("{}:{}", self.width / g, self.height / g)
    }
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a size of the form WIDTHxHEIGHT")]
pub struct BadSize(pub String);

impl FromStr for ImageSize {
    type Err = BadSize;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadSize(s.to_owned());
        let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
        let width: u32 = w.parse().map_err(|_| bad())?;
        let height: u32 = h.parse().map_err(|_| bad())?;
        if width == 0 || height == 0 {
            return Err(bad());
        }
        Ok(Self { width, height })
    }
}

impl Serialize for ImageSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A requested size: exact pixels, or `auto` (the model picks; GPT image models only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    Auto,
    Exact(ImageSize),
}

impl Size {
    pub fn exact(self) -> Option<ImageSize> {
        match self {
            Size::Auto => None,
            Size::Exact(s) => Some(s),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Auto => f.write_str("auto"),
            Size::Exact(s) => s.fmt(f),
        }
    }
}

impl FromStr for Size {
    type Err = BadSize;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(Size::Auto)
        } else {
            s.parse().map(Size::Exact)
        }
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        let s: ImageSize = "1792x1024".parse().expect("valid size");
        assert_eq!(s, ImageSize::new(1792, 1024));
        assert_eq!(s.to_string(), "1792x1024");
        assert!("1024".parse::<ImageSize>().is_err());
        assert!("axb".parse::<ImageSize>().is_err());
        assert!("-1x5".parse::<ImageSize>().is_err());
        assert!("0x5".parse::<ImageSize>().is_err());
        assert_eq!("AUTO".parse::<Size>(), Ok(Size::Auto));
        assert_eq!(ImageSize::new(1920, 1080).ratio_string(), "16:9");
    }

    #[test]
    fn wire_values_round_trip() {
        fn check<T: Copy + std::fmt::Debug + PartialEq + Serialize + FromStr + std::fmt::Display>(
            all: &[T],
        ) where
            T::Err: std::fmt::Debug,
        {
            for v in all {
                assert_eq!(v.to_string().parse::<T>().ok(), Some(*v));
                assert_eq!(serde_json::to_value(v).expect("json"), v.to_string());
            }
        }
        check(Quality::ALL);
        check(Style::ALL);
        check(Background::ALL);
        check(OutputFormat::ALL);
        check(ModerationLevel::ALL);
        let schema =
            serde_json::to_value(<Quality as utoipa::PartialSchema>::schema()).expect("schema");
        assert!(
            schema["enum"]
                .as_array()
                .is_some_and(|e| e.contains(&serde_json::json!("xhigh"))),
            "{schema}"
        );
        assert_eq!(" HD ".parse::<Quality>(), Ok(Quality::Hd));
        let err = "ultra".parse::<Quality>().expect_err("unknown");
        assert!(err.to_string().contains("low, medium"), "{err}");
        assert_eq!("webp".parse::<OutputFormat>(), Ok(OutputFormat::Webp));
        assert!(OutputFormat::Webp.has_alpha() && !OutputFormat::Jpeg.has_alpha());
    }
}
