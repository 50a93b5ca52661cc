//! Configuration shared by the roles, read from the environment with the seed's variable names (every variable is
//! also a `--flag`). Values clap can check alone are checked by clap; cross-field rules are checked by `settings()`
//! methods that name the offending variable, so start-up fails with one clear line.

use crate::domain::{GenerationLimits, ProviderId};
use clap::Args;
use clap::builder::BoolishValueParser;
use secrecy::SecretString;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// A configuration problem, always naming the variable to fix.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct CoreArgs {
    /// development, staging or production; shown by /health.
    #[arg(
        long,
        env = "ENVIRONMENT",
        value_name = "ENVIRONMENT",
        default_value = "development"
    )]
    pub environment: String,
    /// trace, debug, info, warn or error (any case), or a tracing filter such as `info,sqlx=warn`.
    #[arg(
        long,
        env = "LOG_LEVEL",
        value_name = "LOG_LEVEL",
        default_value = "INFO"
    )]
    pub log_level: String,
}

#[derive(Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// Postgres connection URL, e.g. postgres://postgres@127.0.0.1:5432/imagegen
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL")]
    pub database_url: String,
    /// Connections in this process's pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", value_name = "DATABASE_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
}

#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis URL for the job queue and job events, e.g. redis://127.0.0.1:6379
    #[arg(long, env = "REDIS_URL", value_name = "REDIS_URL")]
    pub redis_url: String,
    /// Prefix of every Redis key and channel this deployment uses (lets several deployments share one Redis).
    #[arg(
        long,
        env = "QUEUE_NAME",
        value_name = "QUEUE_NAME",
        default_value = "imagegen"
    )]
    pub queue_name: String,
}

#[derive(Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Comma-separated providers this service offers: dalle3, flux_schnell.
    #[arg(
        long,
        env = "ENABLED_PROVIDERS",
        value_name = "ENABLED_PROVIDERS",
        default_value = "dalle3,flux_schnell"
    )]
    pub enabled_providers: String,
    /// Provider used when a request names none.
    #[arg(
        long,
        env = "DEFAULT_PROVIDER",
        value_name = "DEFAULT_PROVIDER",
        default_value = "dalle3"
    )]
    pub default_provider: String,
    /// OpenAI API key for DALL-E 3.
    #[arg(
        long,
        env = "OPENAI_API_KEY",
        value_name = "OPENAI_API_KEY",
        hide_env_values = true
    )]
    pub openai_api_key: Option<String>,
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
    /// Provider calls per job before it fails (counted in Postgres, across workers).
    #[arg(long, env = "PROVIDER_MAX_ATTEMPTS", value_name = "PROVIDER_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub provider_max_attempts: u32,
    /// Timeout of one provider call, in seconds.
    #[arg(long, env = "PROVIDER_TIMEOUT_SECS", value_name = "PROVIDER_TIMEOUT_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=900))]
    pub provider_timeout_secs: u64,
}

/// The providers as configured: which are offered, which can actually run, and their credentials.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub enabled: Vec<ProviderId>,
    pub default_provider: ProviderId,
    pub openai: Option<OpenAiSettings>,
    pub max_attempts: u32,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    pub api_key: SecretString,
    pub base_url: Url,
    pub organization: Option<String>,
    pub project: Option<String>,
}

impl ProviderSettings {
    pub fn is_configured(&self, provider: ProviderId) -> bool {
        match provider {
            ProviderId::Dalle3 => self.openai.is_some(),
            // Its client arrives with the next provider issue; until then it is listed but cannot run.
            ProviderId::FluxSchnell => false,
        }
    }

    pub fn configured(&self) -> Vec<ProviderId> {
        self.enabled
            .iter()
            .copied()
            .filter(|p| self.is_configured(*p))
            .collect()
    }

    pub fn limits(&self, max_images_per_request: u8) -> GenerationLimits {
        GenerationLimits {
            enabled: self.enabled.clone(),
            configured: self.configured(),
            default_provider: self.default_provider,
            max_images_per_request,
        }
    }
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

impl ProviderArgs {
    pub fn settings(&self) -> Result<ProviderSettings, ConfigError> {
        let mut enabled = Vec::new();
        for raw in self
            .enabled_providers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let id = raw
                .parse::<ProviderId>()
                .map_err(|e| ConfigError::new("ENABLED_PROVIDERS", e.to_string()))?;
            if !enabled.contains(&id) {
                enabled.push(id);
            }
        }
        if enabled.is_empty() {
            return Err(ConfigError::new(
                "ENABLED_PROVIDERS",
                "must name at least one provider",
            ));
        }
        let default_provider = self
            .default_provider
            .parse::<ProviderId>()
            .map_err(|e| ConfigError::new("DEFAULT_PROVIDER", e.to_string()))?;
        if !enabled.contains(&default_provider) {
            return Err(ConfigError::new(
                "DEFAULT_PROVIDER",
                format!(
                    "'{default_provider}' is not in ENABLED_PROVIDERS ({})",
                    self.enabled_providers
                ),
            ));
        }
        if !matches!(self.openai_base_url.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "OPENAI_BASE_URL",
                "must be an http:// or https:// URL",
            ));
        }
        let openai = non_empty(&self.openai_api_key).map(|key| OpenAiSettings {
            api_key: SecretString::from(key),
            base_url: self.openai_base_url.clone(),
            organization: non_empty(&self.openai_organization),
            project: non_empty(&self.openai_project),
        });
        let settings = ProviderSettings {
            enabled,
            default_provider,
            openai,
            max_attempts: self.provider_max_attempts,
            timeout: Duration::from_secs(self.provider_timeout_secs),
        };
        if !settings.is_configured(default_provider) {
            let variable = match default_provider {
                ProviderId::Dalle3 => "OPENAI_API_KEY",
                ProviderId::FluxSchnell => "DEFAULT_PROVIDER",
            };
            let message = match default_provider {
                ProviderId::Dalle3 => {
                    "not set, so the default provider dalle3 cannot run".to_owned()
                }
                ProviderId::FluxSchnell => {
                    "flux_schnell has no client in this build yet; use dalle3".to_owned()
                }
            };
            return Err(ConfigError::new(variable, message));
        }
        Ok(settings)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageBackend {
    /// Files under LOCAL_STORAGE_PATH.
    Local,
    /// In this process's memory; for tests (a separate API process cannot read it).
    Memory,
    /// AWS S3 (not in this build yet).
    S3,
    /// Azure Blob Storage (not in this build yet).
    Azure,
}

#[derive(Args, Debug, Clone)]
pub struct StorageArgs {
    /// Images are always stored before a job succeeds (clients only get our URLs), so `false` is refused.
    #[arg(long, env = "ENABLE_IMAGE_STORAGE", value_name = "ENABLE_IMAGE_STORAGE", default_value = "true",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub enable_image_storage: bool,
    /// local, memory, s3 or azure.
    #[arg(
        long,
        env = "STORAGE_BACKEND",
        value_name = "STORAGE_BACKEND",
        default_value = "local",
        ignore_case = true
    )]
    pub storage_backend: StorageBackend,
    /// Root directory of the local backend.
    #[arg(
        long,
        env = "LOCAL_STORAGE_PATH",
        value_name = "LOCAL_STORAGE_PATH",
        default_value = "./generated_images"
    )]
    pub local_storage_path: PathBuf,
}

impl StorageArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enable_image_storage {
            return Err(ConfigError::new(
                "ENABLE_IMAGE_STORAGE",
                "false is not supported: images are stored before a job succeeds and clients never get provider URLs",
            ));
        }
        match self.storage_backend {
            StorageBackend::Local | StorageBackend::Memory => Ok(()),
            StorageBackend::S3 | StorageBackend::Azure => Err(ConfigError::new(
                "STORAGE_BACKEND",
                "s3 and azure are not available in this build yet; use local",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        providers: ProviderArgs,
        #[command(flatten)]
        storage: StorageArgs,
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).expect("parses")
    }

    #[test]
    fn default_provider_needs_its_key() {
        let cli = parse(&[]);
        let err = cli.providers.settings().expect_err("no key");
        assert_eq!(err.variable, "OPENAI_API_KEY");
        let cli = parse(&["--openai-api-key", "sk-test"]);
        let s = cli.providers.settings().expect("configured");
        assert_eq!(s.configured(), [ProviderId::Dalle3]);
        assert_eq!(s.enabled, [ProviderId::Dalle3, ProviderId::FluxSchnell]);
    }

    #[test]
    fn bad_provider_lists_name_the_variable() {
        let cli = parse(&[
            "--openai-api-key",
            "k",
            "--enabled-providers",
            "dalle3,midjourney",
        ]);
        assert_eq!(
            cli.providers.settings().expect_err("unknown").variable,
            "ENABLED_PROVIDERS"
        );
        let cli = parse(&[
            "--openai-api-key",
            "k",
            "--enabled-providers",
            "dalle3",
            "--default-provider",
            "flux_schnell",
        ]);
        assert_eq!(
            cli.providers.settings().expect_err("not enabled").variable,
            "DEFAULT_PROVIDER"
        );
    }

    #[test]
    fn storage_must_be_enabled_and_available() {
        assert!(parse(&[]).storage.validate().is_ok());
        let err = parse(&["--enable-image-storage", "false"])
            .storage
            .validate()
            .expect_err("disabled");
        assert_eq!(err.variable, "ENABLE_IMAGE_STORAGE");
        let err = parse(&["--storage-backend", "S3"])
            .storage
            .validate()
            .expect_err("not yet");
        assert_eq!(err.variable, "STORAGE_BACKEND");
    }
}
