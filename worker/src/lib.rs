//! The worker fleet: takes job ids off the Redis queue (apalis-redis), runs each job (see `process`), and stops
//! gracefully: on SIGTERM it takes no new jobs, lets running ones finish within a grace period, and gives back to
//! the queue whatever is still running when that period ends.

pub mod consumer;
pub mod download;
pub mod process;
pub mod providers;
pub mod retry;

use clap::Args;
use imagegen_shared::config::{CoreArgs, DatabaseArgs, ProviderArgs, RedisArgs, StorageArgs};
use providers::openai::ResponseFormat;

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
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", value_name = "SHUTDOWN_GRACE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,
    /// Serve this worker's Prometheus metrics on 0.0.0.0:PORT/metrics (off when unset).
    #[arg(long, env = "WORKER_METRICS_PORT", value_name = "WORKER_METRICS_PORT")]
    pub worker_metrics_port: Option<u16>,
    /// How DALL-E 3 returns pictures: b64_json (inline) or url (downloaded at once).
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
    #[arg(long, env = "DOWNLOAD_MAX_BYTES", value_name = "DOWNLOAD_MAX_BYTES", default_value_t = 32 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub download_max_bytes: u64,
}

pub use consumer::run;
