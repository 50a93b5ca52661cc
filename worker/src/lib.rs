//! The worker fleet: takes job ids off the Redis queue (apalis-redis), runs each job (see `process`), and stops
//! gracefully: on SIGTERM it takes no new jobs, lets running ones finish within a grace period, and gives back to
//! the queue whatever is still running when that period ends.

pub mod consumer;
pub mod download;
pub mod process;
pub mod providers;
pub mod reconciler;
pub mod retention;
pub mod retry;
pub mod routing;
pub mod store;

use clap::Args;
use imagegen_shared::catalogue::Catalogue;
use imagegen_shared::config::providers::providers_named;
use imagegen_shared::config::{
    ConfigError, CoreArgs, DatabaseArgs, ProviderArgs, RedisArgs, StorageArgs,
};
use imagegen_shared::domain::ProviderId;
use providers::images_api::ResponseFormat;

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub core: CoreArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub providers: ProviderArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Run the reconciler in this worker (one pass at a time across the fleet, by advisory lock).
    #[arg(long, env = "RECONCILE_ENABLED", value_name = "RECONCILE_ENABLED", default_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub reconcile_enabled: bool,
    /// Queued jobs untouched this long are pushed onto the queue again (Redis lost them).
    #[arg(long, env = "RECONCILE_QUEUED_AFTER", value_name = "RECONCILE_QUEUED_AFTER", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub reconcile_queued_after: u64,
    /// Seconds between reconciler passes.
    #[arg(long, env = "RECONCILE_INTERVAL_SECS", value_name = "RECONCILE_INTERVAL_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reconcile_interval_secs: u64,
    /// Jobs this process runs at once.
    #[arg(long, env = "WORKER_CONCURRENCY", value_name = "WORKER_CONCURRENCY", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub worker_concurrency: u32,
    /// This process's name in the queue; default host-pid-random, unique per process.
    #[arg(long, env = "WORKER_ID", value_name = "WORKER_ID")]
    pub worker_id: Option<String>,
    /// How long a claimed job stays ours without a renewal (renewed every third of it).
    #[arg(long, env = "JOB_LEASE_SECS", value_name = "JOB_LEASE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub job_lease_secs: u64,
    /// After SIGTERM, how long running jobs may take before they are given back to the queue.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", value_name = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,
    /// Serve this worker's Prometheus metrics on 0.0.0.0:PORT/metrics (off when unset).
    #[arg(long, env = "WORKER_METRICS_PORT", value_name = "WORKER_METRICS_PORT")]
    pub worker_metrics_port: Option<u16>,
    /// How DALL-E and FLUX hosts return pictures: b64_json (inline) or url (downloaded at once). GPT image models
    /// always answer base64.
    #[arg(
        long,
        env = "OPENAI_RESPONSE_FORMAT",
        value_name = "OPENAI_RESPONSE_FORMAT",
        default_value = "b64_json"
    )]
    pub openai_response_format: ResponseFormat,
    /// Hosts result URLs may be downloaded from (`*.domain` for sub-domains), besides each provider's API host.
    #[arg(
        long,
        env = "DOWNLOAD_ALLOWED_HOSTS",
        value_name = "DOWNLOAD_ALLOWED_HOSTS",
        default_value = "*.blob.core.windows.net"
    )]
    pub download_allowed_hosts: String,
    /// Largest picture accepted from a provider, in bytes.
    #[arg(long, env = "MAX_IMAGE_BYTES", value_name = "MAX_IMAGE_BYTES", default_value_t = 32 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_image_bytes: u64,
}

/// Fleet-wide limit and failover settings.
#[derive(Args, Debug, Clone)]
pub struct FleetArgs {
    /// Most calls in flight per provider across all workers, e.g. `openai=5,bfl=24` (unset: unlimited). The seed's
    /// names give each provider of their family the figure on its own (`dalle3=5`: openai 5 and azure_openai 5).
    #[arg(
        long,
        env = "PROVIDER_CONCURRENCY",
        value_name = "PROVIDER_CONCURRENCY",
        default_value = ""
    )]
    pub provider_concurrency: String,
    /// Consecutive retryable failures that open a provider's circuit.
    #[arg(long, env = "BREAKER_FAILURES", value_name = "BREAKER_FAILURES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one probe call is let through.
    #[arg(long, env = "BREAKER_COOLDOWN_SECS", value_name = "BREAKER_COOLDOWN_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub breaker_cooldown_secs: u64,
    /// A fleet permit not renewed for this long is free again (a dead worker's calls stop counting); renewed every
    /// third of it while a call runs.
    #[arg(long, env = "PROVIDER_PERMIT_TTL_SECS", value_name = "PROVIDER_PERMIT_TTL_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub provider_permit_ttl_secs: u64,
}

impl FleetArgs {
    pub fn permit_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.provider_permit_ttl_secs)
    }

    pub fn concurrency(
        &self,
        catalogue: &Catalogue,
    ) -> Result<std::collections::HashMap<ProviderId, u32>, ConfigError> {
        let mut out = std::collections::HashMap::new();
        for pair in self
            .provider_concurrency
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (name, n) = pair.split_once('=').ok_or_else(|| {
                ConfigError::new(
                    "PROVIDER_CONCURRENCY",
                    format!("'{pair}' is not provider=N"),
                )
            })?;
            let ids = providers_named(name, catalogue)
                .map_err(|e| ConfigError::new("PROVIDER_CONCURRENCY", e.to_string()))?;
            let n = n.trim().parse::<u32>().map_err(|_| {
                ConfigError::new(
                    "PROVIDER_CONCURRENCY",
                    format!("'{pair}': N must be a whole number"),
                )
            })?;
            for id in ids {
                out.insert(id, n);
            }
        }
        Ok(out)
    }
}

pub use consumer::run;
