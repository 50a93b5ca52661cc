//! Configuration shared by the roles, read from the environment with the seed's variable names (every variable is
//! also a `--flag`). Values clap can check alone are checked by clap; cross-field rules are checked by `settings()`
//! methods that name the offending variable, so start-up fails with one clear line.
//!
//! `providers` holds the provider and model settings, `storage` the image storage's; this module the rest.

pub mod edits;
pub mod providers;
pub mod storage;

pub use providers::{
    AzureAuth, AzurePath, AzureSettings, BflRegion, BflSettings, FluxProtocol, FluxSettings,
    OpenAiSettings, ProviderArgs, ProviderSettings,
};
pub use storage::{PublicUrls, S3Encryption, StorageArgs, StorageBackend, StorageSettings};

use clap::Args;
use secrecy::SecretString;

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

/// Where this deployment runs. `production` tightens what is allowed (provider result URLs must be https).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Test,
    Staging,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Test => "test",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }

    pub fn is_production(self) -> bool {
        self == Environment::Production
    }
}

impl std::fmt::Display for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Args, Debug, Clone)]
pub struct CoreArgs {
    /// development, test, staging or production (any case); shown by /health. production requires https result URLs.
    #[arg(
        long,
        env = "ENVIRONMENT",
        value_name = "ENVIRONMENT",
        default_value = "development",
        ignore_case = true
    )]
    pub environment: Environment,
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
    /// What the limits kept in Redis do when it cannot be reached: `open` lets the request (RATE_LIMIT_PER_MINUTE)
    /// or the provider call (PROVIDER_CONCURRENCY, breakers) through uncounted; `closed` refuses it (503 with
    /// Retry-After; a worker hands the job back to wait). Budgets and IMAGE_QUOTA_PER_DAY always fail closed.
    #[arg(
        long,
        env = "LIMITS_ON_REDIS_ERROR",
        value_name = "LIMITS_ON_REDIS_ERROR",
        value_enum,
        default_value = "open",
        ignore_case = true
    )]
    pub limits_on_redis_error: crate::limits::FailMode,
}

/// A secret setting that is set and not blank, trimmed.
pub(crate) fn non_empty_secret(value: &Option<SecretString>) -> Option<SecretString> {
    use secrecy::ExposeSecret;
    value
        .as_ref()
        .map(|v| v.expose_secret().trim())
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
}

pub(crate) fn non_empty(value: &Option<String>) -> Option<String> {
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
