//! The provider catalogue: what each provider accepts. The API validates against it, `GET /api/v1/providers` shows
//! it, and the worker's clients are built for it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderId {
    Dalle3,
    FluxSchnell,
}

impl ProviderId {
    pub const ALL: [ProviderId; 2] = [ProviderId::Dalle3, ProviderId::FluxSchnell];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderId::Dalle3 => "dalle3",
            ProviderId::FluxSchnell => "flux_schnell",
        }
    }

    pub fn spec(self) -> &'static ProviderSpec {
        match self {
            ProviderId::Dalle3 => &CATALOGUE[0],
            ProviderId::FluxSchnell => &CATALOGUE[1],
        }
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider '{0}' (known: dalle3, flux_schnell)")]
pub struct UnknownProvider(pub String);

impl FromStr for ProviderId {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dalle3" | "dall-e-3" => Ok(ProviderId::Dalle3),
            "flux_schnell" | "flux-schnell" => Ok(ProviderId::FluxSchnell),
            other => Err(UnknownProvider(other.to_owned())),
        }
    }
}

/// Width x height in pixels, written `1024x1024` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageSize {
    pub const fn new(width: u32, height: u32) -> Self {
        Self { width, height }
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
        let width = w.parse().map_err(|_| bad())?;
        let height = h.parse().map_err(|_| bad())?;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Standard,
    Hd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    Vivid,
    Natural,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Standard => "standard",
            Quality::Hd => "hd",
        }
    }
}

impl Style {
    pub fn as_str(self) -> &'static str {
        match self {
            Style::Vivid => "vivid",
            Style::Natural => "natural",
        }
    }
}

/// What one provider accepts. Sizes are listed in the seed's order; the first is the default.
#[derive(Debug)]
pub struct ProviderSpec {
    pub id: ProviderId,
    pub name: &'static str,
    pub description: &'static str,
    pub supported_sizes: &'static [ImageSize],
    pub max_images: u8,
    pub supports_quality: bool,
    pub supports_style: bool,
    pub supports_seed: bool,
    pub typical_generation_time: &'static str,
}

impl ProviderSpec {
    pub fn default_size(&self) -> ImageSize {
        self.supported_sizes[0]
    }

    pub fn supports_size(&self, size: ImageSize) -> bool {
        self.supported_sizes.contains(&size)
    }
}

pub static CATALOGUE: [ProviderSpec; 2] = [
    ProviderSpec {
        id: ProviderId::Dalle3,
        name: "DALL-E 3",
        description: "OpenAI's advanced image generation model",
        supported_sizes: &[
            ImageSize::new(1024, 1024),
            ImageSize::new(1792, 1024),
            ImageSize::new(1024, 1792),
        ],
        max_images: 1,
        supports_quality: true,
        supports_style: true,
        supports_seed: false,
        typical_generation_time: "10-30 seconds",
    },
    ProviderSpec {
        id: ProviderId::FluxSchnell,
        name: "Flux Schnell",
        description: "Fast image generation model optimized for speed",
        supported_sizes: &[
            ImageSize::new(1024, 1024),
            ImageSize::new(512, 512),
            ImageSize::new(768, 768),
            ImageSize::new(1536, 1024),
            ImageSize::new(1024, 1536),
        ],
        max_images: 4,
        supports_quality: false,
        supports_style: false,
        supports_seed: true,
        typical_generation_time: "2-8 seconds",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_indexed_by_id() {
        for id in ProviderId::ALL {
            assert_eq!(id.spec().id, id);
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        let s: ImageSize = "1792x1024".parse().expect("valid size");
        assert_eq!(s, ImageSize::new(1792, 1024));
        assert_eq!(s.to_string(), "1792x1024");
        assert!("1024".parse::<ImageSize>().is_err());
        assert!("axb".parse::<ImageSize>().is_err());
        assert!("-1x5".parse::<ImageSize>().is_err());
    }

    #[test]
    fn provider_ids_parse_leniently() {
        assert_eq!("DALLE3".parse::<ProviderId>(), Ok(ProviderId::Dalle3));
        assert_eq!(
            " flux_schnell ".parse::<ProviderId>(),
            Ok(ProviderId::FluxSchnell)
        );
        assert!("midjourney".parse::<ProviderId>().is_err());
    }
}
