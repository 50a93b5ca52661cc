//! Providers and models as configured: which providers have credentials (OpenAI, Azure OpenAI, an OpenAI-compatible
//! FLUX host, Black Forest Labs), which models each serves here, the default model, the failover order, and how
//! retired models are handled (MODEL_ALIASES). Built once at start-up into `ProviderSettings`; the API and the worker
//! both read the `Offer` it makes.
//!
//! The seed's names still work: `dalle3` and `flux_schnell` in ENABLED_PROVIDERS, DEFAULT_PROVIDER, FAILOVER_ORDER
//! and PROVIDER_CONCURRENCY stand for the providers of that model family (`dalle3`: openai and azure_openai;
//! `flux_schnell`: flux and bfl).
//!
//! Longer than ~500 lines on purpose: most of it is the clap declarations of some thirty provider variables, each
//! with its doc; the rules that tie them together read best next to them.

use super::{ConfigError, non_empty, non_empty_secret};
use crate::catalogue::{Catalogue, Family, ModelStatus};
use crate::domain::{ModelId, Offer, ProviderId, ProviderModels};
use chrono::NaiveDate;
use clap::Args;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Start-up warns of a configured model this many days before it retires.
pub const RETIREMENT_NOTICE_DAYS: i64 = 30;

/// The Azure OpenAI REST version used on the deployments path: the first that serves GPT image models.
pub const AZURE_DEFAULT_API_VERSION: &str = "2025-04-01-preview";

#[derive(Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Comma-separated providers this service may use: openai, azure_openai, flux, bfl (or the seed's dalle3,
    /// flux_schnell). Default: every configured one.
    #[arg(long, env = "ENABLED_PROVIDERS", value_name = "ENABLED_PROVIDERS")]
    pub enabled_providers: Option<String>,
    /// Model of requests that name none (default: DEFAULT_PROVIDER's model, else the first current catalogue model a
    /// configured provider serves).
    #[arg(long, env = "DEFAULT_MODEL", value_name = "DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// The seed's default: a provider (its default model) or a seed name (`dalle3`, `flux_schnell`).
    #[arg(long, env = "DEFAULT_PROVIDER", value_name = "DEFAULT_PROVIDER")]
    pub default_provider: Option<String>,
    /// A TOML file of model entries laid over the built-in catalogue (same id: replaced; new id: added).
    #[arg(long, env = "MODEL_CATALOG_FILE", value_name = "MODEL_CATALOG_FILE")]
    pub model_catalog_file: Option<PathBuf>,
    /// `retired=replacement` pairs over the catalogue's own replacements (e.g. `dall-e-3=gpt-image-2`), or `none` to
    /// refuse requests for retired models with `model_retired` instead of serving them by a replacement.
    #[arg(long, env = "MODEL_ALIASES", value_name = "MODEL_ALIASES")]
    pub model_aliases: Option<String>,
    /// Providers in failover order (default: openai, azure_openai, flux, bfl).
    #[arg(long, env = "FAILOVER_ORDER", value_name = "FAILOVER_ORDER")]
    pub failover_order: Option<String>,
    /// OpenAI API key.
    #[arg(
        long,
        env = "OPENAI_API_KEY",
        value_name = "OPENAI_API_KEY",
        hide_env_values = true
    )]
    pub openai_api_key: Option<SecretString>,
    /// OpenAI API root including the version prefix.
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        value_name = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_base_url: Url,
    /// Optional OpenAI-Organization header.
    #[arg(long, env = "OPENAI_ORGANIZATION", value_name = "OPENAI_ORGANIZATION")]
    pub openai_organization: Option<String>,
    /// Optional OpenAI-Project header.
    #[arg(long, env = "OPENAI_PROJECT", value_name = "OPENAI_PROJECT")]
    pub openai_project: Option<String>,
    /// Azure OpenAI key (sent as `api-key`).
    #[arg(
        long,
        env = "AZURE_OPENAI_API_KEY",
        value_name = "AZURE_OPENAI_API_KEY",
        hide_env_values = true
    )]
    pub azure_openai_api_key: Option<SecretString>,
    /// A Microsoft Entra ID access token for Azure OpenAI (scope https://cognitiveservices.azure.com/.default),
    /// used instead of the key.
    #[arg(
        long,
        env = "AZURE_OPENAI_AD_TOKEN",
        value_name = "AZURE_OPENAI_AD_TOKEN",
        hide_env_values = true
    )]
    pub azure_openai_ad_token: Option<SecretString>,
    /// https://{resource}.openai.azure.com
    #[arg(
        long,
        env = "AZURE_OPENAI_ENDPOINT",
        value_name = "AZURE_OPENAI_ENDPOINT"
    )]
    pub azure_openai_endpoint: Option<Url>,
    /// The deployment of gpt-image-2 (shorthand for AZURE_OPENAI_DEPLOYMENTS=gpt-image-2=NAME).
    #[arg(
        long,
        env = "AZURE_OPENAI_DEPLOYMENT_NAME",
        value_name = "AZURE_OPENAI_DEPLOYMENT_NAME"
    )]
    pub azure_openai_deployment_name: Option<String>,
    /// `model=deployment` pairs: the models this Azure resource serves and their deployments' names, e.g.
    /// `gpt-image-2=img2,gpt-image-1-mini=mini`.
    #[arg(
        long,
        env = "AZURE_OPENAI_DEPLOYMENTS",
        value_name = "AZURE_OPENAI_DEPLOYMENTS"
    )]
    pub azure_openai_deployments: Option<String>,
    /// Azure OpenAI REST API version on the deployments path (GPT image models need 2025-04-01-preview or later).
    #[arg(
        long,
        env = "AZURE_OPENAI_API_VERSION",
        value_name = "AZURE_OPENAI_API_VERSION",
        default_value = AZURE_DEFAULT_API_VERSION
    )]
    pub azure_openai_api_version: String,
    /// deployments (`/openai/deployments/{name}/images/generations?api-version=...`) or v1
    /// (`/openai/v1/images/generations`, the deployment named in `model`).
    #[arg(
        long,
        env = "AZURE_OPENAI_API_PATH",
        value_name = "AZURE_OPENAI_API_PATH",
        default_value = "deployments",
        ignore_case = true
    )]
    pub azure_openai_api_path: AzurePath,
    /// The seed's choice of DALL-E 3 backend: azure or openai first in the failover order.
    #[arg(
        long,
        env = "DALLE3_BACKEND",
        value_name = "DALLE3_BACKEND",
        ignore_case = true
    )]
    pub dalle3_backend: Option<Dalle3Backend>,
    /// Key for the FLUX host (Together AI by default; BFL's x-key with FLUX_PROTOCOL=bfl).
    #[arg(
        long,
        env = "FLUX_API_KEY",
        value_name = "FLUX_API_KEY",
        hide_env_values = true
    )]
    pub flux_api_key: Option<SecretString>,
    /// The FLUX host's API root including its version prefix.
    #[arg(
        long,
        env = "FLUX_BASE_URL",
        value_name = "FLUX_BASE_URL",
        default_value = "https://api.together.xyz/v1"
    )]
    pub flux_base_url: Url,
    /// The FLUX host's default model: a catalogue id or the host's own name (default: flux-schnell, i.e.
    /// black-forest-labs/FLUX.1-schnell; flux-dev with the BFL protocol).
    #[arg(long, env = "FLUX_MODEL", value_name = "FLUX_MODEL")]
    pub flux_model: Option<String>,
    /// openai-compatible or bfl (default: bfl for hosts ending in bfl.ai or bfl.ml, else openai-compatible).
    #[arg(
        long,
        env = "FLUX_PROTOCOL",
        value_name = "FLUX_PROTOCOL",
        ignore_case = true
    )]
    pub flux_protocol: Option<FluxProtocol>,
    /// Black Forest Labs API key (x-key).
    #[arg(
        long,
        env = "BFL_API_KEY",
        value_name = "BFL_API_KEY",
        hide_env_values = true
    )]
    pub bfl_api_key: Option<SecretString>,
    /// global (api.bfl.ai), eu (api.eu.bfl.ai) or us (api.us.bfl.ai).
    #[arg(
        long,
        env = "BFL_REGION",
        value_name = "BFL_REGION",
        default_value = "global",
        ignore_case = true
    )]
    pub bfl_region: BflRegion,
    /// BFL API root including `/v1`; overrides BFL_REGION (emulators, proxies).
    #[arg(long, env = "BFL_BASE_URL", value_name = "BFL_BASE_URL")]
    pub bfl_base_url: Option<Url>,
    /// BFL's default model (default: the first current BFL model in the catalogue, flux-2-pro).
    #[arg(long, env = "BFL_MODEL", value_name = "BFL_MODEL")]
    pub bfl_model: Option<String>,
    /// Provider calls per route of a job (one provider serving one model) before it fails over to the next route
    /// (counted in Postgres, across workers).
    #[arg(long, env = "PROVIDER_MAX_ATTEMPTS", value_name = "PROVIDER_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub provider_max_attempts: u32,
    /// Provider calls per job over all its routes, failover included (every call may be paid); 0: twice
    /// PROVIDER_MAX_ATTEMPTS.
    #[arg(long, env = "JOB_MAX_PROVIDER_CALLS", value_name = "JOB_MAX_PROVIDER_CALLS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=60))]
    pub job_max_provider_calls: u32,
    /// Timeout of one provider call, in seconds.
    #[arg(long, env = "PROVIDER_TIMEOUT_SECS", value_name = "PROVIDER_TIMEOUT_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=900))]
    pub provider_timeout_secs: u64,
    /// Providers served by the in-process emulator because they have no key (standalone mode only; never read
    /// from the environment).
    #[arg(skip)]
    pub sandbox: Vec<ProviderId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dalle3Backend {
    Azure,
    #[value(name = "openai")]
    OpenAi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FluxProtocol {
    /// POST {base}/images/generations (Together AI and other OpenAI-compatible hosts).
    #[value(name = "openai-compatible")]
    OpenAiCompatible,
    /// Black Forest Labs: submit to {base}/{model}, then poll.
    Bfl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AzurePath {
    /// `/openai/deployments/{deployment}/images/generations?api-version=...`
    Deployments,
    /// `/openai/v1/images/generations` with the deployment in `model`.
    V1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BflRegion {
    Global,
    Eu,
    Us,
}

impl BflRegion {
    pub fn base_url(self) -> &'static str {
        match self {
            BflRegion::Global => "https://api.bfl.ai/v1",
            BflRegion::Eu => "https://api.eu.bfl.ai/v1",
            BflRegion::Us => "https://api.us.bfl.ai/v1",
        }
    }
}

#[derive(Debug, Clone)]
pub enum AzureAuth {
    ApiKey(SecretString),
    BearerToken(SecretString),
}

#[derive(Debug, Clone)]
pub struct AzureSettings {
    pub auth: AzureAuth,
    /// Without a trailing slash.
    pub endpoint: Url,
    /// Model -> deployment name.
    pub deployments: BTreeMap<ModelId, String>,
    pub api_version: String,
    pub path: AzurePath,
}

#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    pub api_key: SecretString,
    pub base_url: Url,
    pub organization: Option<String>,
    pub project: Option<String>,
}

/// An OpenAI-compatible FLUX host (Together AI).
#[derive(Debug, Clone)]
pub struct FluxSettings {
    pub api_key: SecretString,
    pub base_url: Url,
    pub default_model: Option<ModelId>,
}

/// Black Forest Labs' own API.
#[derive(Debug, Clone)]
pub struct BflSettings {
    pub api_key: SecretString,
    /// Includes `/v1`.
    pub base_url: Url,
    pub default_model: Option<ModelId>,
}

/// The providers and models as configured, validated.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub catalogue: Arc<Catalogue>,
    pub enabled: Vec<ProviderId>,
    /// Enabled providers in failover order.
    pub order: Vec<ProviderId>,
    pub openai: Option<OpenAiSettings>,
    pub azure: Option<AzureSettings>,
    pub flux: Option<FluxSettings>,
    pub bfl: Option<BflSettings>,
    pub default_model: ModelId,
    pub aliases: BTreeMap<String, ModelId>,
    pub aliasing: bool,
    /// Calls per route (PROVIDER_MAX_ATTEMPTS) and per job over all routes (JOB_MAX_PROVIDER_CALLS).
    pub max_attempts: u32,
    pub max_calls_per_job: u32,
    pub timeout: Duration,
    /// Providers answered by the built-in emulator (standalone mode without their keys).
    pub sandbox: Vec<ProviderId>,
}

/// The providers a configured name stands for: a provider id, or a seed name for its model family's providers.
pub fn providers_named(
    name: &str,
    catalogue: &Catalogue,
) -> Result<Vec<ProviderId>, crate::domain::provider::UnknownProvider> {
    if let Ok(p) = name.parse::<ProviderId>() {
        return Ok(vec![p]);
    }
    let family = catalogue
        .legacy_model(name)
        .and_then(|m| catalogue.get(m.as_str()))
        .map(|m| m.family)
        .ok_or_else(|| crate::domain::provider::UnknownProvider(name.trim().to_owned()))?;
    let family_group = |f: Family| if f == Family::Flux { 1 } else { 0 };
    let mut out = Vec::new();
    for model in catalogue.models() {
        if family_group(model.family) == family_group(family) {
            for p in model.serves.keys() {
                if !out.contains(p) {
                    out.push(*p);
                }
            }
        }
    }
    out.sort_by_key(|p| ProviderId::ALL.iter().position(|a| a == p));
    Ok(out)
}

/// A comma list of provider names, expanded and without repeats.
fn provider_list(
    variable: &'static str,
    raw: &str,
    catalogue: &Catalogue,
) -> Result<Vec<ProviderId>, ConfigError> {
    let mut out = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let named = providers_named(name, catalogue).map_err(|e| {
            ConfigError::new(
                variable,
                format!("{e} (or the seed's dalle3, flux_schnell)"),
            )
        })?;
        for p in named {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// `name=value` pairs, comma-separated.
fn pairs(variable: &'static str, raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(a, b)| (a.trim().to_owned(), b.trim().to_owned()))
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .ok_or_else(|| ConfigError::new(variable, format!("'{pair}' is not name=value")))
        })
        .collect()
}

fn http_url(variable: &'static str, url: &Url) -> Result<(), ConfigError> {
    if matches!(url.scheme(), "http" | "https") {
        Ok(())
    } else {
        Err(ConfigError::new(
            variable,
            "must be an http:// or https:// URL",
        ))
    }
}

impl ProviderArgs {
    fn catalogue(&self, today: NaiveDate) -> Result<Arc<Catalogue>, ConfigError> {
        Catalogue::load(self.model_catalog_file.as_deref(), today)
            .map_err(|e| ConfigError::new("MODEL_CATALOG_FILE", e.to_string()))
    }

    /// A catalogue model by id or by the provider's own name for it (`black-forest-labs/FLUX.1-schnell`).
    fn model_for(
        variable: &'static str,
        catalogue: &Catalogue,
        provider: ProviderId,
        name: &str,
    ) -> Result<ModelId, ConfigError> {
        let found = catalogue
            .get(name)
            .filter(|m| m.serves.contains_key(&provider))
            .or_else(|| {
                catalogue.served_by(provider).find(|m| {
                    m.serves
                        .get(&provider)
                        .is_some_and(|s| s.model.eq_ignore_ascii_case(name))
                })
            });
        found.map(|m| m.id.clone()).ok_or_else(|| {
            ConfigError::new(
                variable,
                format!("'{name}' is not a catalogue model that {provider} serves (add it with MODEL_CATALOG_FILE)"),
            )
        })
    }

    /// Azure OpenAI is configured when a key or token is given; then the endpoint and a deployment are required.
    fn azure_settings(&self, catalogue: &Catalogue) -> Result<Option<AzureSettings>, ConfigError> {
        let auth = match (
            non_empty_secret(&self.azure_openai_api_key),
            non_empty_secret(&self.azure_openai_ad_token),
        ) {
            (Some(key), _) => AzureAuth::ApiKey(key),
            (None, Some(token)) => AzureAuth::BearerToken(token),
            (None, None) => return Ok(None),
        };
        let mut endpoint = self.azure_openai_endpoint.clone().ok_or_else(|| {
            ConfigError::new(
                "AZURE_OPENAI_ENDPOINT",
                "required when AZURE_OPENAI_API_KEY is set",
            )
        })?;
        http_url("AZURE_OPENAI_ENDPOINT", &endpoint)?;
        let trimmed = endpoint.path().trim_end_matches('/').to_owned();
        endpoint.set_path(&trimmed);
        let mut named: Vec<(&'static str, String, String)> = Vec::new();
        if let Some(name) = non_empty(&self.azure_openai_deployment_name) {
            named.push((
                "AZURE_OPENAI_DEPLOYMENT_NAME",
                "gpt-image-2".to_owned(),
                name,
            ));
        }
        if let Some(raw) = &self.azure_openai_deployments {
            for (model, deployment) in pairs("AZURE_OPENAI_DEPLOYMENTS", raw)? {
                named.push(("AZURE_OPENAI_DEPLOYMENTS", model, deployment));
            }
        }
        if named.is_empty() {
            return Err(ConfigError::new(
                "AZURE_OPENAI_DEPLOYMENTS",
                "required when AZURE_OPENAI_API_KEY is set (or AZURE_OPENAI_DEPLOYMENT_NAME for gpt-image-2)",
            ));
        }
        let mut deployments = BTreeMap::new();
        for (variable, model, deployment) in named {
            if !deployment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(ConfigError::new(
                    variable,
                    "deployment names are letters, digits, '-', '_' and '.' only",
                ));
            }
            let model = Self::model_for(variable, catalogue, ProviderId::AzureOpenAi, &model)?;
            deployments.insert(model, deployment);
        }
        let api_version = self.azure_openai_api_version.trim().to_owned();
        if api_version.is_empty() {
            return Err(ConfigError::new(
                "AZURE_OPENAI_API_VERSION",
                "must not be empty",
            ));
        }
        Ok(Some(AzureSettings {
            auth,
            endpoint,
            deployments,
            api_version,
            path: self.azure_openai_api_path,
        }))
    }

    /// The FLUX settings: FLUX_API_KEY configures Together (or, by protocol, BFL); BFL_API_KEY configures BFL.
    fn flux_and_bfl(
        &self,
        catalogue: &Catalogue,
    ) -> Result<(Option<FluxSettings>, Option<BflSettings>), ConfigError> {
        let mut flux = None;
        let mut bfl = None;
        if let Some(key) = non_empty_secret(&self.flux_api_key) {
            http_url("FLUX_BASE_URL", &self.flux_base_url)?;
            let host = self
                .flux_base_url
                .host_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let protocol = self.flux_protocol.unwrap_or(
                if host.ends_with("bfl.ai") || host.ends_with("bfl.ml") {
                    FluxProtocol::Bfl
                } else {
                    FluxProtocol::OpenAiCompatible
                },
            );
            match protocol {
                FluxProtocol::OpenAiCompatible => {
                    let default_model = non_empty(&self.flux_model)
                        .map(|m| Self::model_for("FLUX_MODEL", catalogue, ProviderId::Flux, &m))
                        .transpose()?;
                    flux = Some(FluxSettings {
                        api_key: key,
                        base_url: self.flux_base_url.clone(),
                        default_model,
                    });
                }
                FluxProtocol::Bfl => {
                    // The seed's FLUX_* pointed at BFL: BFL's own API does not serve schnell; flux-dev is nearest.
                    let name = non_empty(&self.flux_model).unwrap_or_else(|| "flux-dev".to_owned());
                    let default_model = Some(Self::model_for(
                        "FLUX_MODEL",
                        catalogue,
                        ProviderId::Bfl,
                        &name,
                    )?);
                    bfl = Some(BflSettings {
                        api_key: key,
                        base_url: self.flux_base_url.clone(),
                        default_model,
                    });
                }
            }
        }
        if let Some(key) = non_empty_secret(&self.bfl_api_key) {
            let base_url = match &self.bfl_base_url {
                Some(url) => url.clone(),
                None => self
                    .bfl_region
                    .base_url()
                    .parse()
                    .map_err(|_| ConfigError::new("BFL_REGION", "no base URL"))?,
            };
            http_url("BFL_BASE_URL", &base_url)?;
            let default_model = non_empty(&self.bfl_model)
                .map(|m| Self::model_for("BFL_MODEL", catalogue, ProviderId::Bfl, &m))
                .transpose()?;
            bfl = Some(BflSettings {
                api_key: key,
                base_url,
                default_model,
            });
        }
        Ok((flux, bfl))
    }

    pub fn settings(&self) -> Result<ProviderSettings, ConfigError> {
        self.settings_on(crate::domain::today())
    }

    /// The settings as of `today` (tests pin the date; retirements depend on it).
    pub fn settings_on(&self, today: NaiveDate) -> Result<ProviderSettings, ConfigError> {
        let catalogue = self.catalogue(today)?;
        let enabled = match self
            .enabled_providers
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => ProviderId::ALL.to_vec(),
            Some(raw) => provider_list("ENABLED_PROVIDERS", raw, &catalogue)?,
        };
        if enabled.is_empty() {
            return Err(ConfigError::new(
                "ENABLED_PROVIDERS",
                "must name at least one provider",
            ));
        }
        http_url("OPENAI_BASE_URL", &self.openai_base_url)?;
        let openai = non_empty_secret(&self.openai_api_key).map(|key| OpenAiSettings {
            api_key: key,
            base_url: self.openai_base_url.clone(),
            organization: non_empty(&self.openai_organization),
            project: non_empty(&self.openai_project),
        });
        let azure = self.azure_settings(&catalogue)?;
        let (flux, bfl) = self.flux_and_bfl(&catalogue)?;

        let mut order = match self
            .failover_order
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => ProviderId::ALL.to_vec(),
            Some(raw) => {
                let mut listed = provider_list("FAILOVER_ORDER", raw, &catalogue)?;
                // Providers left out still serve their own models, after the listed ones.
                listed.extend(
                    ProviderId::ALL
                        .iter()
                        .filter(|p| !listed.contains(p))
                        .collect::<Vec<_>>(),
                );
                listed
            }
        };
        match self.dalle3_backend {
            Some(Dalle3Backend::Azure) if azure.is_none() => {
                return Err(ConfigError::new(
                    "DALLE3_BACKEND",
                    "azure chosen but AZURE_OPENAI_* is not configured",
                ));
            }
            Some(Dalle3Backend::OpenAi) if openai.is_none() => {
                return Err(ConfigError::new(
                    "DALLE3_BACKEND",
                    "openai chosen but OPENAI_API_KEY is not set",
                ));
            }
            Some(choice) => {
                let (first, second) = match choice {
                    Dalle3Backend::Azure => (ProviderId::AzureOpenAi, ProviderId::OpenAi),
                    Dalle3Backend::OpenAi => (ProviderId::OpenAi, ProviderId::AzureOpenAi),
                };
                if let (Some(a), Some(b)) = (
                    order.iter().position(|p| *p == first),
                    order.iter().position(|p| *p == second),
                ) && a > b
                {
                    order.swap(a, b);
                }
            }
            None => {}
        }
        order.retain(|p| enabled.contains(p));

        let (aliasing, aliases) = match self.model_aliases.as_deref().map(str::trim) {
            Some(off) if ["none", "off", "false"].contains(&off.to_ascii_lowercase().as_str()) => {
                (false, BTreeMap::new())
            }
            None | Some("") => (true, BTreeMap::new()),
            Some(raw) => {
                let mut map = BTreeMap::new();
                for (from, to) in pairs("MODEL_ALIASES", raw)? {
                    let from_model = catalogue.get(&from).ok_or_else(|| {
                        ConfigError::new(
                            "MODEL_ALIASES",
                            format!("'{from}' is not a catalogue model"),
                        )
                    })?;
                    let to_model = catalogue.get(&to).ok_or_else(|| {
                        ConfigError::new(
                            "MODEL_ALIASES",
                            format!("'{to}' is not a catalogue model"),
                        )
                    })?;
                    if to_model.status_on(today) == ModelStatus::Retired {
                        return Err(ConfigError::new(
                            "MODEL_ALIASES",
                            format!("'{to}' is retired itself"),
                        ));
                    }
                    map.insert(
                        from_model.id.as_str().to_ascii_lowercase(),
                        to_model.id.clone(),
                    );
                }
                (true, map)
            }
        };

        let mut settings = ProviderSettings {
            catalogue: catalogue.clone(),
            enabled,
            order,
            openai,
            azure,
            flux,
            bfl,
            default_model: ModelId::new(""),
            aliases,
            aliasing,
            max_attempts: self.provider_max_attempts,
            max_calls_per_job: match self.job_max_provider_calls {
                0 => self.provider_max_attempts * 2,
                n => n,
            },
            timeout: Duration::from_secs(self.provider_timeout_secs),
            sandbox: self.sandbox.clone(),
        };
        let offer = settings.offer_on(4, today);
        if offer.providers.is_empty() {
            return Err(ConfigError::new(
                "OPENAI_API_KEY",
                "no provider is configured: set OPENAI_API_KEY, AZURE_OPENAI_API_KEY, FLUX_API_KEY or BFL_API_KEY",
            ));
        }
        settings.default_model = self.default_model_of(&offer, today)?;
        Ok(settings)
    }

    fn default_model_of(&self, offer: &Offer, today: NaiveDate) -> Result<ModelId, ConfigError> {
        let catalogue = &offer.catalogue;
        let served = |id: &ModelId| {
            catalogue
                .get(id.as_str())
                .is_some_and(|m| !offer.routes_for(m, today).is_empty())
        };
        if let Some(raw) = non_empty(&self.default_model) {
            let model = catalogue.get(&raw).ok_or_else(|| {
                ConfigError::new("DEFAULT_MODEL", format!("'{raw}' is not a catalogue model"))
            })?;
            // A retired default is served by its replacement, like any request for it.
            let id = match offer.replacement(model) {
                Some(r) if !served(&model.id) => r,
                _ => model.id.clone(),
            };
            if !served(&id) {
                return Err(ConfigError::new(
                    "DEFAULT_MODEL",
                    format!("'{raw}' is not served by any configured provider"),
                ));
            }
            return Ok(id);
        }
        if let Some(raw) = non_empty(&self.default_provider) {
            let chosen = if let Some(model) = catalogue.legacy_model(&raw) {
                let spec = catalogue.get(model.as_str());
                spec.and_then(|m| {
                    if served(&m.id) {
                        Some(m.id.clone())
                    } else {
                        offer.replacement(m)
                    }
                })
            } else {
                let p = raw
                    .parse::<ProviderId>()
                    .map_err(|e| ConfigError::new("DEFAULT_PROVIDER", e.to_string()))?;
                offer.provider_default(p).cloned()
            };
            return chosen.filter(served).ok_or_else(|| {
                ConfigError::new(
                    "DEFAULT_PROVIDER",
                    format!("'{raw}' has no configured provider to serve it"),
                )
            });
        }
        // The first configured provider's default model (FLUX_MODEL / BFL_MODEL count).
        offer
            .providers
            .iter()
            .find_map(|p| p.default_model.clone())
            .ok_or_else(|| {
                ConfigError::new(
                    "DEFAULT_MODEL",
                    "no configured provider serves a current model",
                )
            })
    }
}

impl ProviderSettings {
    pub fn is_configured(&self, provider: ProviderId) -> bool {
        self.enabled.contains(&provider)
            && match provider {
                ProviderId::OpenAi => self.openai.is_some(),
                ProviderId::AzureOpenAi => self.azure.is_some(),
                ProviderId::Flux => self.flux.is_some(),
                ProviderId::Bfl => self.bfl.is_some(),
            }
    }

    /// Configured, enabled providers in failover order.
    pub fn configured(&self) -> Vec<ProviderId> {
        self.order
            .iter()
            .copied()
            .filter(|p| self.is_configured(*p))
            .collect()
    }

    /// One line per model a configured provider serves that retires there within `RETIREMENT_NOTICE_DAYS`.
    pub fn retirement_warnings(&self, today: NaiveDate) -> Vec<String> {
        let offer = self.offer_on(u8::MAX, today);
        let mut out = Vec::new();
        for provider in &offer.providers {
            for model_id in provider.models.keys() {
                let Some(model) = self.catalogue.get(model_id.as_str()) else {
                    continue;
                };
                let Some(on) = model
                    .serves
                    .get(&provider.provider)
                    .and_then(|s| s.retires_on)
                    .or(model.retires_on)
                else {
                    continue;
                };
                let days = (on - today).num_days();
                if (0..=RETIREMENT_NOTICE_DAYS).contains(&days) {
                    let then = match offer.replacement(model) {
                        Some(r) => format!("its requests will be served by {r}"),
                        None => "its requests will then be refused (model_retired)".to_owned(),
                    };
                    out.push(format!(
                        "model {model_id} retires on {} on {on} (in {days} days); {then}",
                        provider.provider
                    ));
                }
            }
        }
        out
    }

    /// What the service offers today.
    pub fn offer(&self, max_images_per_request: u8) -> Offer {
        self.offer_on(max_images_per_request, crate::domain::today())
    }

    pub fn offer_on(&self, max_images_per_request: u8, today: NaiveDate) -> Offer {
        let catalogue = &self.catalogue;
        let providers = self
            .configured()
            .into_iter()
            .map(|provider| {
                let models: BTreeMap<ModelId, String> = match (provider, &self.azure) {
                    (ProviderId::AzureOpenAi, Some(azure)) => azure
                        .deployments
                        .iter()
                        .filter(|(m, _)| {
                            catalogue
                                .get(m.as_str())
                                .is_some_and(|s| s.serves.contains_key(&provider))
                        })
                        .map(|(m, d)| (m.clone(), d.clone()))
                        .collect(),
                    _ => catalogue
                        .served_by(provider)
                        .filter_map(|m| {
                            m.serves
                                .get(&provider)
                                .map(|s| (m.id.clone(), s.model.clone()))
                        })
                        .collect(),
                };
                let configured_default = match provider {
                    ProviderId::Flux => self.flux.as_ref().and_then(|f| f.default_model.clone()),
                    ProviderId::Bfl => self.bfl.as_ref().and_then(|b| b.default_model.clone()),
                    _ => None,
                };
                let current = |id: &ModelId| {
                    catalogue.get(id.as_str()).is_some_and(|m| {
                        m.status_on(today) != ModelStatus::Retired
                            && m.serves
                                .get(&provider)
                                .is_some_and(|s| !s.retired_on(today))
                    })
                };
                let default_model = configured_default.filter(current).or_else(|| {
                    // Current models first; a deprecated one only when nothing else is served.
                    let served = || {
                        catalogue
                            .served_by(provider)
                            .filter(|m| models.contains_key(&m.id) && current(&m.id))
                    };
                    served()
                        .find(|m| m.status_on(today) != ModelStatus::Deprecated)
                        .or_else(|| served().next())
                        .map(|m| m.id.clone())
                });
                ProviderModels {
                    provider,
                    models,
                    default_model,
                }
            })
            .collect();
        Offer {
            catalogue: catalogue.clone(),
            enabled: self.enabled.clone(),
            providers,
            default_model: self.default_model.clone(),
            aliases: self.aliases.clone(),
            aliasing: self.aliasing,
            max_images_per_request,
            sandbox: self.sandbox.clone(),
        }
    }
}

#[cfg(test)]
#[path = "providers_tests.rs"]
mod tests;
