//! The HTTP API: validates and moderates each request, records the job in Postgres, queues it in Redis, and either
//! answers at once or holds the request until the job ends (wait mode).
//! `run` serves it on a listener; `router` builds the app (tests and the future standalone mode use it directly).

pub mod auth;
pub mod error;
pub mod extract;
pub mod links;
pub mod middleware;
pub mod openapi;
pub mod rate_limit;
pub mod routes;
pub mod security;
pub mod state;
pub mod submit;
pub mod views;
pub mod wait;
pub mod waiters;

use anyhow::Context;
use clap::Args;
use imagegen_shared::backends::Backends;
use imagegen_shared::config::{CoreArgs, DatabaseArgs, ProviderArgs, RedisArgs, StorageArgs};
use std::future::Future;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use routes::router;
pub use state::AppState;

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
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
    /// Address to listen on.
    #[arg(
        long,
        env = "API_HOST",
        value_name = "API_HOST",
        default_value = "0.0.0.0"
    )]
    pub api_host: String,
    /// Port to listen on.
    #[arg(
        long,
        env = "API_PORT",
        value_name = "API_PORT",
        default_value_t = 8003
    )]
    pub api_port: u16,
    /// Most images one request may ask for (a provider's own maximum still applies).
    #[arg(long, env = "MAX_IMAGES_PER_REQUEST", value_name = "MAX_IMAGES_PER_REQUEST", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(1..=16))]
    pub max_images_per_request: u8,
    /// Check prompts against BLOCKED_WORDS.
    #[arg(long, env = "ENABLE_CONTENT_MODERATION", value_name = "ENABLE_CONTENT_MODERATION", default_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub enable_content_moderation: bool,
    /// Comma-separated words or phrases that block a prompt.
    #[arg(
        long,
        env = "BLOCKED_WORDS",
        value_name = "BLOCKED_WORDS",
        default_value = "",
        hide_env_values = true
    )]
    pub blocked_words: String,
    /// Most requests in one batch.
    #[arg(long, env = "BATCH_MAX_REQUESTS", value_name = "BATCH_MAX_REQUESTS", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub batch_max_requests: u16,
    /// How long wait mode holds a request when the client does not say (`Prefer: wait=N`).
    #[arg(
        long,
        env = "WAIT_DEFAULT_SECS",
        value_name = "WAIT_DEFAULT_SECS",
        default_value_t = 60
    )]
    pub wait_default_secs: u64,
    /// The longest any request is held.
    #[arg(long, env = "WAIT_MAX_SECS", value_name = "WAIT_MAX_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub wait_max_secs: u64,
    /// How long an Idempotency-Key is remembered.
    #[arg(long, env = "IDEMPOTENCY_TTL", value_name = "IDEMPOTENCY_TTL", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub idempotency_ttl_secs: u64,
    /// After SIGTERM, keep serving this many seconds with /health/ready answering 503, so load balancers stop
    /// sending before connections are refused (Kubernetes: a few seconds; 0 stops accepting at once).
    #[arg(long, env = "API_SHUTDOWN_DELAY_SECS", value_name = "API_SHUTDOWN_DELAY_SECS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub api_shutdown_delay_secs: u64,
    /// Require credentials on the API (an API key from `imagegen keys create`, or a token from AZURE_AD_* /
    /// OIDC_*); false serves everyone as `anonymous`. Health, metrics, docs and the provider list stay open.
    #[arg(long, env = "ENABLE_AUTHENTICATION", value_name = "ENABLE_AUTHENTICATION", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub enable_authentication: bool,
    #[command(flatten)]
    pub oidc: auth::oidc::OidcArgs,
    /// Key of the signed download links handed out while authentication is on (32 characters or more; the same on
    /// every API replica).
    #[arg(
        long,
        env = "DOWNLOAD_SIGNING_KEY",
        value_name = "DOWNLOAD_SIGNING_KEY",
        hide_env_values = true
    )]
    pub download_signing_key: Option<secrecy::SecretString>,
    /// How long a signed download link works, in seconds.
    #[arg(long, env = "DOWNLOAD_LINK_TTL_SECS", value_name = "DOWNLOAD_LINK_TTL_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(60..=604_800))]
    pub download_link_ttl_secs: u64,
    /// Requests per minute one owner may make to /api/v1 across the API fleet (0: no limit).
    #[arg(
        long,
        env = "RATE_LIMIT_PER_MINUTE",
        value_name = "RATE_LIMIT_PER_MINUTE",
        default_value_t = 0
    )]
    pub rate_limit_per_minute: u32,
    /// Images one owner may request per day, UTC (0: no limit).
    #[arg(
        long,
        env = "IMAGE_QUOTA_PER_DAY",
        value_name = "IMAGE_QUOTA_PER_DAY",
        default_value_t = 0
    )]
    pub image_quota_per_day: u32,
    /// Jobs one owner may have queued or running at once (0: no limit).
    #[arg(
        long,
        env = "MAX_ACTIVE_JOBS_PER_OWNER",
        value_name = "MAX_ACTIVE_JOBS_PER_OWNER",
        default_value_t = 0
    )]
    pub max_active_jobs_per_owner: u32,
    /// Browser origins allowed to call the API (CORS), comma-separated exact origins such as
    /// https://app.example.com; `*` only while authentication is off; empty: no cross-origin access.
    #[arg(
        long,
        env = "CORS_ORIGINS",
        value_name = "CORS_ORIGINS",
        default_value = ""
    )]
    pub cors_origins: String,
    /// Serve /metrics on this port of API_HOST instead of API_PORT (keeps metrics off the public listener);
    /// unset: /metrics is on API_PORT.
    #[arg(long, env = "API_METRICS_PORT", value_name = "API_METRICS_PORT")]
    pub api_metrics_port: Option<u16>,
    /// Base of the download URLs handed to clients, e.g. https://images.example.com (default: from the Host header).
    #[arg(long, env = "PUBLIC_BASE_URL", value_name = "PUBLIC_BASE_URL")]
    pub public_base_url: Option<url::Url>,
}

/// Pending connections the kernel may queue for us (it caps this at net.core.somaxconn). tokio's `bind` asks for
/// 1,024, which a burst of thousands of clients (wait mode at scale) overflows: their SYNs are dropped and they
/// retry for seconds.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the API's listening socket (`host:port`, host may be a name) with a deep accept queue.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for resolved in tokio::net::lookup_host(addr).await? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(resolved)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to no address"))))
}

/// Serves the API on `listener` until `shutdown` resolves; waiting requests are answered (202) at shutdown.
pub async fn run(
    args: ApiArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let backends = Backends::connect(
        &args.database.database_url,
        args.database.database_max_connections,
        Some(&args.redis.redis_url),
        &args.redis.queue_name,
    )?;
    serve(args, backends, listener, shutdown).await
}

/// Serves the API on `listener` with the given stores (the standalone mode shares them with its workers).
pub async fn serve(
    args: ApiArgs,
    backends: Backends,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let state = AppState::new(&args, backends, stop.clone())?;
    state
        .storage
        .verify()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let metrics_server = match args.api_metrics_port {
        Some(port) => {
            let addr = format!("{}:{port}", args.api_host);
            let listener = bind(&addr)
                .await
                .with_context(|| format!("API_METRICS_PORT: cannot listen on {addr}"))?;
            tracing::info!(%addr, "metrics listening");
            let app = routes::metrics::router().with_state(state.clone());
            let stop = stop.clone();
            Some(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }))
        }
        None => None,
    };
    if let Some(oidc) = state.oidc.clone() {
        tokio::spawn(async move { oidc.warm_up().await });
    }
    let signals = state.queue.signals(stop.clone());
    let listen = tokio::spawn(state.waiters.clone().listen(signals, stop.clone()));
    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(%addr, environment = %args.core.environment, "api listening");
    let app = router(state);
    let stop_serving = stop.clone();
    let delay = std::time::Duration::from_secs(args.api_shutdown_delay_secs);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // From now on /health/ready answers 503 and waiting requests answer 202.
            stop_serving.cancel();
            if !delay.is_zero() {
                tracing::info!(
                    delay_secs = delay.as_secs(),
                    "shutting down: not ready; still serving while load balancers notice"
                );
                tokio::time::sleep(delay).await;
            }
            tracing::info!("shutting down: draining connections");
        })
        .await
        .context("serving HTTP")?;
    stop.cancel();
    let _ = listen.await;
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ApiArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        api: ApiArgs,
    }

    /// Settings end up in panics, logs and error reports through `Debug`: no secret may show there.
    #[test]
    fn debug_output_holds_no_secret() {
        let secrets = [
            "sk-openai-SECRET1",
            "azure-key-SECRET2",
            "aad-token-SECRET3",
            "flux-key-SECRET4",
            "signing-key-SECRET5-of-at-least-32-chars",
            "dbpass-SECRET6",
            "redispass-SECRET7",
            "aws-SECRET8",
            "azure-storage-SECRET9",
        ];
        let cli = Cli::try_parse_from([
            "imagegen",
            "--database-url",
            &format!("postgres://app:{}@db:5432/imagegen", secrets[5]),
            "--redis-url",
            &format!("redis://:{}@redis:6379", secrets[6]),
            "--openai-api-key",
            secrets[0],
            "--azure-openai-api-key",
            secrets[1],
            "--azure-openai-ad-token",
            secrets[2],
            "--flux-api-key",
            secrets[3],
            "--download-signing-key",
            secrets[4],
            "--aws-secret-access-key",
            secrets[7],
            "--azure-storage-access-key",
            secrets[8],
        ])
        .expect("arguments parse");
        let debug = format!("{:?}", cli.api);
        for secret in secrets {
            assert!(!debug.contains(secret), "{secret} in Debug: {debug}");
        }
        assert!(debug.contains("postgres://app:REDACTED@db:5432/imagegen"));
    }
}
