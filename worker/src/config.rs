//! The worker role's configuration: `WorkerArgs` as read from the environment (every variable is also a `--flag`),
//! and `WorkerSettings`, the same validated once at start-up (`WorkerArgs::settings`), which is all the rest of the
//! worker reads. A bad value stops start-up with one line naming the variable.

use crate::providers::images_api::ResponseFormat;
use crate::reconciler::ReconcilerSettings;
use clap::Args;
use imagegen_shared::catalogue::Catalogue;
use imagegen_shared::config::edits::{EditArgs, EditSettings};
use imagegen_shared::config::providers::providers_named;
use imagegen_shared::config::{
    ConfigError, CoreArgs, DatabaseArgs, Environment, ProviderArgs, ProviderSettings, RedisArgs,
    StorageArgs, StorageSettings,
};
use imagegen_shared::domain::ProviderId;
use imagegen_shared::limits::LimitSettings;
use std::collections::HashMap;
use std::time::Duration;

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
    /// EDIT_*: limits on edit inputs, and the address policy for inputs named by URL (fetched here).
    #[command(flatten)]
    pub edits: EditArgs,
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
    /// Most picture bytes this worker holds at once, in MiB: answers and downloads that would pass it wait, unread,
    /// until stored pictures give memory back (one larger than all of it is read alone).
    #[arg(long, env = "WORKER_PICTURE_MEMORY_MB", value_name = "WORKER_PICTURE_MEMORY_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub worker_picture_memory_mb: u64,
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
    /// PROVIDER_CONCURRENCY read: the figure per provider it names (a seed name stands for several).
    pub fn concurrency(
        &self,
        catalogue: &Catalogue,
    ) -> Result<HashMap<ProviderId, u32>, ConfigError> {
        let mut out = HashMap::new();
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

    /// Every provider's limits: its PROVIDER_CONCURRENCY figure (0, unlimited, when it has none) and the fleet's
    /// breaker and permit settings.
    pub fn limits(&self, catalogue: &Catalogue) -> Result<ProviderLimits, ConfigError> {
        let concurrency = self.concurrency(catalogue)?;
        Ok(ProviderLimits::new(|provider| LimitSettings {
            concurrency: concurrency.get(&provider).copied().unwrap_or(0),
            breaker_failures: self.breaker_failures,
            breaker_cooldown: Duration::from_secs(self.breaker_cooldown_secs),
            permit_ttl: Duration::from_secs(self.provider_permit_ttl_secs),
        }))
    }
}

/// The fleet limits of every provider. Only built by [`ProviderLimits::new`], which asks for each of
/// `ProviderId::ALL`, so [`ProviderLimits::get`] cannot miss.
#[derive(Debug, Clone)]
pub struct ProviderLimits(HashMap<ProviderId, LimitSettings>);

impl ProviderLimits {
    pub fn new(mut for_provider: impl FnMut(ProviderId) -> LimitSettings) -> Self {
        Self(
            ProviderId::ALL
                .into_iter()
                .map(|p| (p, for_provider(p)))
                .collect(),
        )
    }

    pub fn get(&self, provider: ProviderId) -> &LimitSettings {
        // Every provider has an entry: see `new`.
        &self.0[&provider]
    }
}

/// The worker's settings, validated.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub environment: Environment,
    /// The job store; the queue and fleet limits (REDIS_URL, QUEUE_NAME).
    pub database: DatabaseArgs,
    pub redis: RedisArgs,
    pub providers: ProviderSettings,
    pub storage: StorageSettings,
    /// Fleet-wide limits per provider (PROVIDER_CONCURRENCY, BREAKER_*, PROVIDER_PERMIT_TTL_SECS).
    pub limits: ProviderLimits,
    /// WORKER_ID, or host-pid-random.
    pub worker_id: String,
    /// Jobs this process runs at once.
    pub concurrency: usize,
    pub lease: Duration,
    pub shutdown_grace: Duration,
    /// `None` when RECONCILE_ENABLED is off.
    pub reconcile: Option<ReconcilerSettings>,
    pub download: DownloadSettings,
    /// EDIT_*: what a URL input may be (limits) and where it may come from (address policy).
    pub edits: EditSettings,
    pub metrics_port: Option<u16>,
}

/// How provider results are fetched.
#[derive(Debug, Clone)]
pub struct DownloadSettings {
    /// DOWNLOAD_ALLOWED_HOSTS (each provider's own hosts are added when the clients are built).
    pub allowed_hosts: Vec<String>,
    pub max_image_bytes: u64,
    /// WORKER_PICTURE_MEMORY_MB, in bytes.
    pub picture_memory_bytes: u64,
    /// OPENAI_RESPONSE_FORMAT.
    pub response_format: ResponseFormat,
}

impl WorkerArgs {
    /// Every setting checked, each error naming its variable.
    pub fn settings(&self) -> Result<WorkerSettings, ConfigError> {
        let providers = self.providers.settings()?;
        let storage = self.storage.settings()?;
        let limits = self.fleet.limits(&providers.catalogue)?;
        Ok(WorkerSettings {
            environment: self.core.environment,
            database: self.database.clone(),
            redis: self.redis.clone(),
            providers,
            storage,
            limits,
            worker_id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            concurrency: usize::try_from(self.worker_concurrency).unwrap_or(1),
            lease: Duration::from_secs(self.job_lease_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            reconcile: self.reconcile_enabled.then(|| ReconcilerSettings {
                every: Duration::from_secs(self.reconcile_interval_secs),
                queued_after: Duration::from_secs(self.reconcile_queued_after),
            }),
            download: DownloadSettings {
                allowed_hosts: allowed_hosts(&self.download_allowed_hosts)?,
                max_image_bytes: self.max_image_bytes,
                picture_memory_bytes: self.worker_picture_memory_mb * 1024 * 1024,
                response_format: self.openai_response_format,
            },
            edits: self.edits.settings()?,
            metrics_port: self.worker_metrics_port,
        })
    }
}

/// DOWNLOAD_ALLOWED_HOSTS: host names or `*.domain` patterns, comma-separated. A URL (scheme or path) or a wildcard
/// elsewhere than in front would never match a host, so downloads would fail later for no clear reason.
fn allowed_hosts(raw: &str) -> Result<Vec<String>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| {
            let name = host.strip_prefix("*.").unwrap_or(host);
            let valid = !name.is_empty()
                && !name.contains(['/', '*'])
                && !name.contains(char::is_whitespace);
            if valid {
                Ok(host.to_owned())
            } else {
                Err(ConfigError::new(
                    "DOWNLOAD_ALLOWED_HOSTS",
                    format!("'{host}' is not a host name or *.domain (no scheme or path)"),
                ))
            }
        })
        .collect()
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}

#[cfg(test)]
mod tests {
    use super::WorkerArgs;
    use clap::Parser;
    use imagegen_shared::domain::ProviderId;
    use std::time::Duration;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    fn args(extra: &[&str]) -> WorkerArgs {
        let base = [
            "imagegen",
            "--database-url",
            "postgres://db/x",
            "--redis-url",
            "redis://r",
            "--openai-api-key",
            "k",
        ];
        Cli::try_parse_from(base.iter().chain(extra))
            .expect("arguments parse")
            .worker
    }

    /// Each bad value stops start-up with an error naming its variable.
    #[test]
    fn bad_settings_name_their_variable() {
        let cases: [(&[&str], &str); 8] = [
            (
                &["--provider-concurrency", "openai"],
                "PROVIDER_CONCURRENCY",
            ),
            (
                &["--provider-concurrency", "midjourney=3"],
                "PROVIDER_CONCURRENCY",
            ),
            (
                &["--provider-concurrency", "openai=many"],
                "PROVIDER_CONCURRENCY",
            ),
            (
                &["--download-allowed-hosts", "https://cdn.example.com"],
                "DOWNLOAD_ALLOWED_HOSTS",
            ),
            (
                &["--download-allowed-hosts", "cdn.*.example.com"],
                "DOWNLOAD_ALLOWED_HOSTS",
            ),
            (&["--default-model", "nope"], "DEFAULT_MODEL"),
            (&["--storage-backend", "s3"], "S3_BUCKET"),
            // The worker reads EDIT_* too: it fetches URL inputs under the same limits and address policy.
            (
                &["--edit-url-allowed-networks", "10.0.0.0/99"],
                "EDIT_URL_ALLOWED_NETWORKS",
            ),
        ];
        for (extra, variable) in cases {
            let err = args(extra).settings().expect_err("refused");
            assert_eq!(err.variable, variable, "{extra:?}: {err}");
        }
    }

    #[test]
    fn every_provider_has_limits() {
        let settings = args(&[
            "--provider-concurrency",
            "openai=3, bfl=7",
            "--breaker-failures",
            "2",
            "--image-retention-days",
            "3",
            "--reconcile-enabled",
            "false",
        ])
        .settings()
        .expect("valid");
        let concurrency: Vec<u32> = ProviderId::ALL
            .iter()
            .map(|p| settings.limits.get(*p).concurrency)
            .collect();
        assert_eq!(concurrency, [3, 0, 0, 7]);
        assert!(
            ProviderId::ALL
                .iter()
                .all(|p| settings.limits.get(*p).breaker_failures == 2)
        );
        assert_eq!(
            settings.storage.retention,
            Some(Duration::from_secs(3 * 86_400))
        );
        assert!(settings.reconcile.is_none());
        assert_eq!(settings.download.allowed_hosts, ["*.blob.core.windows.net"]);
        assert!(!settings.worker_id.is_empty());
    }

    #[test]
    fn a_seed_name_sets_each_provider_of_its_family() {
        let settings = args(&["--provider-concurrency", "dalle3=5"])
            .settings()
            .expect("valid");
        assert_eq!(settings.limits.get(ProviderId::OpenAi).concurrency, 5);
        assert_eq!(settings.limits.get(ProviderId::AzureOpenAi).concurrency, 5);
        assert_eq!(settings.limits.get(ProviderId::Bfl).concurrency, 0);
    }
}
