//! Who serves a model (`ProviderId`: a configured endpoint with its credentials and wire protocol) and what is
//! served (`ModelId`: a catalogue entry). A route is one provider serving one model: `openai:gpt-image-2`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A configured provider. Each speaks one protocol; one of each can be configured.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProviderId {
    /// The OpenAI Images API (`OPENAI_API_KEY`).
    #[serde(rename = "openai")]
    OpenAi,
    /// Azure OpenAI deployments (`AZURE_OPENAI_*`).
    #[serde(rename = "azure_openai")]
    AzureOpenAi,
    /// An OpenAI-compatible FLUX host such as Together AI (`FLUX_API_KEY`).
    Flux,
    /// Black Forest Labs' own API (`BFL_API_KEY`, or `FLUX_API_KEY` with `FLUX_PROTOCOL=bfl`).
    Bfl,
}

impl ProviderId {
    /// Also the default failover order.
    pub const ALL: [ProviderId; 4] = [
        ProviderId::OpenAi,
        ProviderId::AzureOpenAi,
        ProviderId::Flux,
        ProviderId::Bfl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderId::OpenAi => "openai",
            ProviderId::AzureOpenAi => "azure_openai",
            ProviderId::Flux => "flux",
            ProviderId::Bfl => "bfl",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ProviderId::OpenAi => "OpenAI",
            ProviderId::AzureOpenAi => "Azure OpenAI",
            ProviderId::Flux => "FLUX (OpenAI-compatible host)",
            ProviderId::Bfl => "Black Forest Labs",
        }
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider '{0}' (known: openai, azure_openai, flux, bfl)")]
pub struct UnknownProvider(pub String);

impl FromStr for ProviderId {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "openai" => Ok(ProviderId::OpenAi),
            "azure_openai" | "azure" => Ok(ProviderId::AzureOpenAi),
            "flux" | "together" => Ok(ProviderId::Flux),
            "bfl" => Ok(ProviderId::Bfl),
            _ => Err(UnknownProvider(s.trim().to_owned())),
        }
    }
}

impl ProviderId {
    /// A stored provider name: today's ids, or the seed's names rows written before the catalogue hold.
    pub fn from_stored(s: &str) -> Result<Self, UnknownProvider> {
        match s {
            "dalle3" => Ok(ProviderId::OpenAi),
            "flux_schnell" => Ok(ProviderId::Flux),
            other => other.parse(),
        }
    }
}

impl sqlx::Type<sqlx::Postgres> for ProviderId {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl sqlx::Type<sqlx::Sqlite> for ProviderId {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <String as sqlx::Type<sqlx::Sqlite>>::type_info()
    }
}

impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for ProviderId
where
    String: sqlx::Decode<'r, DB>,
{
    fn decode(
        value: <DB as sqlx::Database>::ValueRef<'r>,
    ) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(ProviderId::from_stored(&String::decode(value)?)?)
    }
}

impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for ProviderId
where
    String: sqlx::Encode<'q, DB>,
{
    fn encode_by_ref(
        &self,
        buf: &mut <DB as sqlx::Database>::ArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        self.as_str().to_owned().encode_by_ref(buf)
    }
}

/// A model's catalogue id (`gpt-image-2`, `flux-2-pro`). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelId(Arc<str>);

impl ModelId {
    pub fn new(id: &str) -> Self {
        Self(Arc::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `provider:model`: the name of a route in attempts, limits, metrics and `served_by`.
pub fn route_key(provider: ProviderId, model: &ModelId) -> String {
    format!("{provider}:{model}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_parse_leniently() {
        assert_eq!("OpenAI".parse::<ProviderId>(), Ok(ProviderId::OpenAi));
        assert_eq!(
            " azure-openai ".parse::<ProviderId>(),
            Ok(ProviderId::AzureOpenAi)
        );
        for p in ProviderId::ALL {
            assert_eq!(p.as_str().parse::<ProviderId>(), Ok(p));
            assert_eq!(serde_json::to_value(p).expect("json"), p.as_str());
        }
        assert!("midjourney".parse::<ProviderId>().is_err());
        assert_eq!(ProviderId::from_stored("dalle3"), Ok(ProviderId::OpenAi));
        assert_eq!(
            ProviderId::from_stored("flux_schnell"),
            Ok(ProviderId::Flux)
        );
        assert_eq!(
            route_key(ProviderId::Bfl, &ModelId::new("flux-2-pro")),
            "bfl:flux-2-pro"
        );
    }
}
