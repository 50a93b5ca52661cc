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

#[derive(Args, Clone)]
pub struct DatabaseArgs {
    /// Postgres connection URL, e.g. postgres://postgres@127.0.0.1:5432/imagegen
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL")]
    pub database_url: String,
    /// Connections in this process's pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", value_name = "DATABASE_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
}

#[derive(Args, Clone)]
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
    /// Azure OpenAI key for DALL-E 3 (sent as `api-key`).
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
    /// The DALL-E 3 deployment's name.
    #[arg(
        long,
        env = "AZURE_OPENAI_DEPLOYMENT_NAME",
        value_name = "AZURE_OPENAI_DEPLOYMENT_NAME"
    )]
    pub azure_openai_deployment_name: Option<String>,
    /// Azure OpenAI REST API version (GA versions with image generation: 2024-02-01, 2024-06-01, 2024-10-21).
    #[arg(
        long,
        env = "AZURE_OPENAI_API_VERSION",
        value_name = "AZURE_OPENAI_API_VERSION",
        default_value = "2024-10-21"
    )]
    pub azure_openai_api_version: String,
    /// Which backend serves DALL-E 3 when both are configured: azure or openai (default: azure if configured).
    #[arg(
        long,
        env = "DALLE3_BACKEND",
        value_name = "DALLE3_BACKEND",
        ignore_case = true
    )]
    pub dalle3_backend: Option<Dalle3Backend>,
    /// Key for the FLUX.1 [schnell] host (Together AI by default; BFL's x-key with FLUX_PROTOCOL=bfl).
    #[arg(
        long,
        env = "FLUX_API_KEY",
        value_name = "FLUX_API_KEY",
        hide_env_values = true
    )]
    pub flux_api_key: Option<SecretString>,
    /// The Flux API root including its version prefix.
    #[arg(
        long,
        env = "FLUX_BASE_URL",
        value_name = "FLUX_BASE_URL",
        default_value = "https://api.together.xyz/v1"
    )]
    pub flux_base_url: Url,
    /// Model to ask for (default: black-forest-labs/FLUX.1-schnell; flux-dev with the BFL protocol).
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
    /// Provider calls per job before it fails (counted in Postgres, across workers).
    #[arg(long, env = "PROVIDER_MAX_ATTEMPTS", value_name = "PROVIDER_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub provider_max_attempts: u32,
    /// Timeout of one provider call, in seconds.
    #[arg(long, env = "PROVIDER_TIMEOUT_SECS", value_name = "PROVIDER_TIMEOUT_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=900))]
    pub provider_timeout_secs: u64,
    /// Providers served by the in-process emulator because they have no key (standalone mode only; never read
    /// from the environment).
    #[arg(skip)]
    pub sandbox: Vec<ProviderId>,
}

/// The providers as configured: which are offered, which can actually run, and their credentials.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub enabled: Vec<ProviderId>,
    pub default_provider: ProviderId,
    pub openai: Option<OpenAiSettings>,
    pub azure: Option<AzureSettings>,
    /// Which backend serves DALL-E 3 (`None` when neither is configured).
    pub dalle3_backend: Option<Dalle3Backend>,
    pub flux: Option<FluxSettings>,
    pub max_attempts: u32,
    pub timeout: Duration,
    /// Providers answered by the built-in emulator (standalone mode without their keys).
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
    pub deployment: String,
    pub api_version: String,
}

#[derive(Debug, Clone)]
pub struct FluxSettings {
    pub api_key: SecretString,
    pub base_url: Url,
    pub model: String,
    pub protocol: FluxProtocol,
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
            ProviderId::Dalle3 => self.dalle3_backend.is_some(),
            ProviderId::FluxSchnell => self.flux.is_some(),
        }
    }

    /// Every configured way to reach a provider, primary first: (`provider`, route name).
    pub fn routes(&self) -> Vec<(ProviderId, &'static str)> {
        let mut routes = Vec::new();
        let dalle3 = match self.dalle3_backend {
            Some(Dalle3Backend::Azure) => [
                Some("dalle3:azure"),
                self.openai.as_ref().map(|_| "dalle3:openai"),
            ],
            Some(Dalle3Backend::OpenAi) => [
                Some("dalle3:openai"),
                self.azure.as_ref().map(|_| "dalle3:azure"),
            ],
            None => [None, None],
        };
        routes.extend(
            dalle3
                .into_iter()
                .flatten()
                .map(|r| (ProviderId::Dalle3, r)),
        );
        if self.flux.is_some() {
            routes.push((ProviderId::FluxSchnell, "flux_schnell"));
        }
        routes.retain(|(p, _)| self.enabled.contains(p));
        routes
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

/// A secret setting that is set and not blank, trimmed.
fn non_empty_secret(value: &Option<SecretString>) -> Option<SecretString> {
    use secrecy::ExposeSecret;
    value
        .as_ref()
        .map(|v| v.expose_secret().trim())
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// A connection URL with its password replaced, for Debug output and logs.
pub fn redacted_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("REDACTED"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

impl std::fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("database_url", &redacted_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .finish()
    }
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field("redis_url", &redacted_url(&self.redis_url))
            .field("queue_name", &self.queue_name)
            .finish()
    }
}

impl ProviderArgs {
    /// Azure OpenAI is configured when a key or token is given; then endpoint and deployment are required.
    fn azure_settings(&self) -> Result<Option<AzureSettings>, ConfigError> {
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
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "AZURE_OPENAI_ENDPOINT",
                "must be an http:// or https:// URL",
            ));
        }
        let trimmed = endpoint.path().trim_end_matches('/').to_owned();
        endpoint.set_path(&trimmed);
        let deployment = non_empty(&self.azure_openai_deployment_name).ok_or_else(|| {
            ConfigError::new(
                "AZURE_OPENAI_DEPLOYMENT_NAME",
                "required when AZURE_OPENAI_API_KEY is set",
            )
        })?;
        if !deployment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::new(
                "AZURE_OPENAI_DEPLOYMENT_NAME",
                "letters, digits, '-', '_' and '.' only",
            ));
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
            deployment,
            api_version,
        }))
    }

    fn flux_settings(&self) -> Result<Option<FluxSettings>, ConfigError> {
        let Some(key) = non_empty_secret(&self.flux_api_key) else {
            return Ok(None);
        };
        if !matches!(self.flux_base_url.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "FLUX_BASE_URL",
                "must be an http:// or https:// URL",
            ));
        }
        let host = self
            .flux_base_url
            .host_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let protocol =
            self.flux_protocol
                .unwrap_or(if host.ends_with("bfl.ai") || host.ends_with("bfl.ml") {
                    FluxProtocol::Bfl
                } else {
                    FluxProtocol::OpenAiCompatible
                });
        let model = non_empty(&self.flux_model).unwrap_or_else(|| match protocol {
            FluxProtocol::OpenAiCompatible => "black-forest-labs/FLUX.1-schnell".to_owned(),
            // BFL's own API does not serve schnell; flux-dev is the nearest model it does.
            FluxProtocol::Bfl => "flux-dev".to_owned(),
        });
        Ok(Some(FluxSettings {
            api_key: key,
            base_url: self.flux_base_url.clone(),
            model,
            protocol,
        }))
    }

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
        let openai = non_empty_secret(&self.openai_api_key).map(|key| OpenAiSettings {
            api_key: key,
            base_url: self.openai_base_url.clone(),
            organization: non_empty(&self.openai_organization),
            project: non_empty(&self.openai_project),
        });
        let azure = self.azure_settings()?;
        let dalle3_backend = match (self.dalle3_backend, azure.is_some(), openai.is_some()) {
            (Some(Dalle3Backend::Azure), false, _) => {
                return Err(ConfigError::new(
                    "DALLE3_BACKEND",
                    "azure chosen but AZURE_OPENAI_* is not configured",
                ));
            }
            (Some(Dalle3Backend::OpenAi), _, false) => {
                return Err(ConfigError::new(
                    "DALLE3_BACKEND",
                    "openai chosen but OPENAI_API_KEY is not set",
                ));
            }
            (Some(choice), _, _) => Some(choice),
            (None, true, _) => Some(Dalle3Backend::Azure),
            (None, false, true) => Some(Dalle3Backend::OpenAi),
            (None, false, false) => None,
        };
        let flux = self.flux_settings()?;
        let settings = ProviderSettings {
            enabled,
            default_provider,
            openai,
            azure,
            dalle3_backend,
            flux,
            max_attempts: self.provider_max_attempts,
            timeout: Duration::from_secs(self.provider_timeout_secs),
            sandbox: self.sandbox.clone(),
        };
        if !settings.is_configured(default_provider) {
            let (variable, message) = match default_provider {
                ProviderId::Dalle3 => (
                    "OPENAI_API_KEY",
                    "not set (nor AZURE_OPENAI_*), so the default provider dalle3 cannot run",
                ),
                ProviderId::FluxSchnell => (
                    "FLUX_API_KEY",
                    "not set, so the default provider flux_schnell cannot run",
                ),
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
    /// AWS S3 or an S3-compatible store (S3_ENDPOINT: MinIO, R2, moto).
    S3,
    /// Azure Blob Storage (or Azurite with AZURE_STORAGE_USE_EMULATOR).
    Azure,
}

/// Server-side encryption of S3 objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum S3Encryption {
    /// The bucket's default.
    None,
    /// SSE-S3 (AES256, keys managed by S3).
    #[value(name = "sse-s3", alias = "aes256")]
    SseS3,
    /// SSE-KMS with S3_SSE_KMS_KEY_ID (or the account's default KMS key).
    #[value(name = "sse-kms", alias = "aws:kms")]
    SseKms,
}

/// How image downloads reach clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublicUrls {
    /// The API streams the bytes from storage.
    Proxy,
    /// The API answers 307 to a short-lived pre-signed S3 or SAS URL (s3 and azure only).
    Signed,
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
    /// S3 bucket (STORAGE_BACKEND=s3).
    #[arg(long, env = "S3_BUCKET", value_name = "S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// Key prefix inside the bucket, e.g. `images/`.
    #[arg(long, env = "S3_PREFIX", value_name = "S3_PREFIX", default_value = "")]
    pub s3_prefix: String,
    /// AWS region of the bucket.
    #[arg(long, env = "AWS_REGION", value_name = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// Static credentials; without them the usual AWS chain applies (web identity, ECS, instance metadata).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", value_name = "AWS_ACCESS_KEY_ID")]
    pub aws_access_key_id: Option<String>,
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        value_name = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub aws_secret_access_key: Option<SecretString>,
    #[arg(
        long,
        env = "AWS_SESSION_TOKEN",
        value_name = "AWS_SESSION_TOKEN",
        hide_env_values = true
    )]
    pub aws_session_token: Option<SecretString>,
    /// An S3-compatible endpoint (MinIO, R2, moto): path-style requests, http allowed.
    #[arg(long, env = "S3_ENDPOINT", value_name = "S3_ENDPOINT")]
    pub s3_endpoint: Option<Url>,
    /// Server-side encryption: none, sse-s3 or sse-kms.
    #[arg(
        long,
        env = "S3_SSE",
        value_name = "S3_SSE",
        default_value = "none",
        ignore_case = true
    )]
    pub s3_sse: S3Encryption,
    /// KMS key id or ARN for S3_SSE=sse-kms (default: the account's S3 KMS key).
    #[arg(long, env = "S3_SSE_KMS_KEY_ID", value_name = "S3_SSE_KMS_KEY_ID")]
    pub s3_sse_kms_key_id: Option<String>,
    /// Storage account (STORAGE_BACKEND=azure).
    #[arg(
        long,
        env = "AZURE_STORAGE_ACCOUNT",
        value_name = "AZURE_STORAGE_ACCOUNT"
    )]
    pub azure_storage_account: Option<String>,
    /// Shared key; without it (and without a connection string) managed identity / workload identity applies.
    #[arg(
        long,
        env = "AZURE_STORAGE_ACCESS_KEY",
        value_name = "AZURE_STORAGE_ACCESS_KEY",
        hide_env_values = true
    )]
    pub azure_storage_access_key: Option<SecretString>,
    /// `AccountName=...;AccountKey=...;BlobEndpoint=...` (or `UseDevelopmentStorage=true`).
    #[arg(
        long,
        env = "AZURE_STORAGE_CONNECTION_STRING",
        value_name = "AZURE_STORAGE_CONNECTION_STRING",
        hide_env_values = true
    )]
    pub azure_storage_connection_string: Option<SecretString>,
    /// Blob container.
    #[arg(
        long,
        env = "AZURE_STORAGE_CONTAINER",
        value_name = "AZURE_STORAGE_CONTAINER",
        default_value = "generated-images"
    )]
    pub azure_storage_container: String,
    /// Talk to Azurite (devstoreaccount1 on 127.0.0.1:10000 unless the connection string says otherwise).
    #[arg(long, env = "AZURE_STORAGE_USE_EMULATOR", value_name = "AZURE_STORAGE_USE_EMULATOR",
          default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub azure_storage_use_emulator: bool,
    /// proxy (the API streams the bytes) or signed (307 to a short-lived pre-signed URL; s3 and azure only).
    #[arg(
        long,
        env = "STORAGE_PUBLIC_URLS",
        value_name = "STORAGE_PUBLIC_URLS",
        default_value = "proxy",
        ignore_case = true
    )]
    pub storage_public_urls: PublicUrls,
    /// Lifetime of a pre-signed download URL, in seconds.
    #[arg(long, env = "STORAGE_SIGNED_URL_TTL_SECS", value_name = "STORAGE_SIGNED_URL_TTL_SECS",
          default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=604_800))]
    pub storage_signed_url_ttl_secs: u64,
    /// Delete images (objects and rows) older than this many days; unset keeps them forever.
    #[arg(long, env = "IMAGE_RETENTION_DAYS", value_name = "IMAGE_RETENTION_DAYS",
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub image_retention_days: Option<u32>,
}

impl StorageArgs {
    /// The defaults for `backend` (tests fill in the rest).
    pub fn for_backend(backend: StorageBackend) -> Self {
        Self {
            enable_image_storage: true,
            storage_backend: backend,
            local_storage_path: PathBuf::from("./generated_images"),
            s3_bucket: None,
            s3_prefix: String::new(),
            aws_region: None,
            aws_access_key_id: None,
            aws_secret_access_key: None,
            aws_session_token: None,
            s3_endpoint: None,
            s3_sse: S3Encryption::None,
            s3_sse_kms_key_id: None,
            azure_storage_account: None,
            azure_storage_access_key: None,
            azure_storage_connection_string: None,
            azure_storage_container: "generated-images".into(),
            azure_storage_use_emulator: false,
            storage_public_urls: PublicUrls::Proxy,
            storage_signed_url_ttl_secs: 300,
            image_retention_days: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enable_image_storage {
            return Err(ConfigError::new(
                "ENABLE_IMAGE_STORAGE",
                "false is not supported: images are stored before a job succeeds and clients never get provider URLs",
            ));
        }
        match self.storage_backend {
            StorageBackend::Local | StorageBackend::Memory => {
                if self.storage_public_urls == PublicUrls::Signed {
                    return Err(ConfigError::new(
                        "STORAGE_PUBLIC_URLS",
                        "signed needs STORAGE_BACKEND=s3 or azure",
                    ));
                }
            }
            StorageBackend::S3 => {
                if self
                    .s3_bucket
                    .as_deref()
                    .is_none_or(|b| b.trim().is_empty())
                {
                    return Err(ConfigError::new(
                        "S3_BUCKET",
                        "required with STORAGE_BACKEND=s3",
                    ));
                }
                if self.aws_access_key_id.is_some() != self.aws_secret_access_key.is_some() {
                    return Err(ConfigError::new(
                        "AWS_SECRET_ACCESS_KEY",
                        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together",
                    ));
                }
                if self.s3_sse_kms_key_id.is_some() && self.s3_sse != S3Encryption::SseKms {
                    return Err(ConfigError::new(
                        "S3_SSE_KMS_KEY_ID",
                        "needs S3_SSE=sse-kms",
                    ));
                }
            }
            StorageBackend::Azure => {
                let has_connection_string = self.azure_storage_connection_string.is_some();
                if !has_connection_string
                    && !self.azure_storage_use_emulator
                    && self
                        .azure_storage_account
                        .as_deref()
                        .is_none_or(|a| a.trim().is_empty())
                {
                    return Err(ConfigError::new(
                        "AZURE_STORAGE_ACCOUNT",
                        "required with STORAGE_BACKEND=azure (or AZURE_STORAGE_CONNECTION_STRING)",
                    ));
                }
                if self.azure_storage_container.trim().is_empty() {
                    return Err(ConfigError::new(
                        "AZURE_STORAGE_CONTAINER",
                        "must not be empty",
                    ));
                }
            }
        }
        Ok(())
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
    fn storage_must_be_enabled_and_completely_configured() {
        assert!(parse(&[]).storage.validate().is_ok());
        let err = parse(&["--enable-image-storage", "false"])
            .storage
            .validate()
            .expect_err("disabled");
        assert_eq!(err.variable, "ENABLE_IMAGE_STORAGE");
        let err = parse(&["--storage-backend", "S3"])
            .storage
            .validate()
            .expect_err("no bucket");
        assert_eq!(err.variable, "S3_BUCKET");
        assert!(
            parse(&["--storage-backend", "s3", "--s3-bucket", "b"])
                .storage
                .validate()
                .is_ok()
        );
        let err = parse(&[
            "--storage-backend",
            "s3",
            "--s3-bucket",
            "b",
            "--s3-sse-kms-key-id",
            "k",
        ])
        .storage
        .validate()
        .expect_err("key id without sse-kms");
        assert_eq!(err.variable, "S3_SSE_KMS_KEY_ID");
        let err = parse(&["--storage-backend", "azure"])
            .storage
            .validate()
            .expect_err("no account");
        assert_eq!(err.variable, "AZURE_STORAGE_ACCOUNT");
        let err = parse(&["--storage-public-urls", "signed"])
            .storage
            .validate()
            .expect_err("signed needs a cloud backend");
        assert_eq!(err.variable, "STORAGE_PUBLIC_URLS");
    }

    #[test]
    fn azure_needs_endpoint_and_deployment_and_wins_by_default() {
        let cli = parse(&["--azure-openai-api-key", "k"]);
        assert_eq!(
            cli.providers.settings().expect_err("no endpoint").variable,
            "AZURE_OPENAI_ENDPOINT"
        );
        let cli = parse(&[
            "--azure-openai-api-key",
            "k",
            "--azure-openai-endpoint",
            "https://r.openai.azure.com/",
        ]);
        assert_eq!(
            cli.providers
                .settings()
                .expect_err("no deployment")
                .variable,
            "AZURE_OPENAI_DEPLOYMENT_NAME"
        );
        let full = [
            "--azure-openai-api-key",
            "k",
            "--azure-openai-endpoint",
            "https://r.openai.azure.com/",
            "--azure-openai-deployment-name",
            "dalle3",
            "--openai-api-key",
            "sk",
        ];
        let s = parse(&full).providers.settings().expect("configured");
        assert_eq!(s.dalle3_backend, Some(Dalle3Backend::Azure));
        assert_eq!(
            s.azure.expect("azure").endpoint.as_str(),
            "https://r.openai.azure.com/"
        );
        let mut args = full.to_vec();
        args.extend(["--dalle3-backend", "openai"]);
        assert_eq!(
            parse(&args)
                .providers
                .settings()
                .expect("configured")
                .dalle3_backend,
            Some(Dalle3Backend::OpenAi)
        );
        let cli = parse(&["--openai-api-key", "sk", "--dalle3-backend", "azure"]);
        assert_eq!(
            cli.providers
                .settings()
                .expect_err("azure not configured")
                .variable,
            "DALLE3_BACKEND"
        );
    }

    #[test]
    fn flux_protocol_follows_the_host_unless_told() {
        let s = parse(&["--openai-api-key", "sk", "--flux-api-key", "f"])
            .providers
            .settings()
            .expect("ok");
        let flux = s.flux.clone().expect("flux");
        assert_eq!(
            (flux.protocol, flux.model.as_str()),
            (
                FluxProtocol::OpenAiCompatible,
                "black-forest-labs/FLUX.1-schnell"
            )
        );
        assert!(s.is_configured(ProviderId::FluxSchnell));
        let s = parse(&[
            "--openai-api-key",
            "sk",
            "--flux-api-key",
            "f",
            "--flux-base-url",
            "https://api.bfl.ai/v1",
        ])
        .providers
        .settings()
        .expect("ok");
        let flux = s.flux.clone().expect("flux");
        assert_eq!(
            (flux.protocol, flux.model.as_str()),
            (FluxProtocol::Bfl, "flux-dev")
        );
        let s = parse(&["--flux-api-key", "f", "--default-provider", "flux_schnell"])
            .providers
            .settings()
            .expect("ok");
        assert_eq!(s.configured(), [ProviderId::FluxSchnell]);
    }
}
