//! The HTTP API: validates and moderates each request, records the job in Postgres, queues it in Redis, and either
//! answers at once or holds the request until the job ends (wait mode).
//! `run` serves it on a listener; `router` builds the app (tests and the future standalone mode use it directly).

pub mod auth;
pub mod budgets;
pub mod config;
pub mod edit_json;
pub mod edit_upload;
pub mod edits;
pub mod error;
pub mod event_streams;
pub mod extract;
pub mod gate;
pub mod http_server;
pub mod layers;
pub mod links;
pub mod middleware;
pub mod moderation;
pub mod openai;
pub mod openapi;
pub mod owner_limits;
pub mod rate_limit;
pub mod routes;
pub mod sandbox;
pub mod security;
pub mod state;
pub mod submit;
pub mod ui;
pub mod views;
pub mod wait;
pub mod waiters;
pub mod webhooks;

use anyhow::Context;
use imagegen_shared::backends::Backends;
use std::future::Future;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{ApiArgs, ApiSettings, MAX_BODY_BYTES};
pub use state::AppState;

/// The whole app: every route and the OpenAPI document describing them.
pub fn router(state: AppState) -> axum::Router {
    let docs = openapi::docs_router(state.authentication, state.batch_max_requests);
    routes::router(state, docs)
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
    let mut settings = args.settings()?;
    sandbox::detect(&mut settings.providers).await;
    let stop = CancellationToken::new();
    let state = AppState::new(&settings, backends, stop.clone())?;
    state
        .storage
        .verify()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let metrics_server = match settings.metrics_port {
        Some(port) => {
            let addr = format!("{}:{port}", settings.host);
            let listener = bind(&addr)
                .await
                .with_context(|| format!("API_METRICS_PORT: cannot listen on {addr}"))?;
            tracing::info!(%addr, "metrics listening");
            let app = routes::metrics::router().with_state(state.clone());
            let stop = stop.clone();
            Some(tokio::spawn(http_server::serve(
                listener,
                app,
                stop.cancelled_owned(),
            )))
        }
        None => None,
    };
    if let Some(oidc) = state.oidc.clone() {
        tokio::spawn(async move { oidc.warm_up().await });
    }
    let key_invalidations = tokio::spawn(state.key_cache.clone().listen(stop.clone()));
    let signals = state.queue.signals(stop.clone());
    let listen = tokio::spawn(state.waiters.clone().listen(signals, stop.clone()));
    let webhooks = tokio::spawn(webhooks::dispatcher::run(state.clone(), stop.clone()));
    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(%addr, environment = %settings.environment, storage = %state.storage.location(),
        "api listening");
    // Each request carries its connection's remote address (`ConnectInfo`): download links believe forwarded
    // headers only from TRUSTED_PROXIES.
    let app = router(state);
    let stop_serving = stop.clone();
    let delay = settings.shutdown_delay;
    http_server::serve(listener, app, async move {
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
    .await;
    stop.cancel();
    let _ = listen.await;
    let _ = webhooks.await;
    let _ = key_invalidations.await;
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    Ok(())
}
