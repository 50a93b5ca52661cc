//! Wires the job handler to the apalis-redis queue and owns the process lifecycle (restart on Redis trouble,
//! graceful shutdown).

use crate::WorkerArgs;
use crate::download::Downloader;
use crate::process::{self, JobContext, ProcessError};
use crate::providers::ImageProvider;
use crate::providers::azure::AzureClient;
use crate::providers::bfl::BflClient;
use crate::providers::flux::FluxClient;
use crate::providers::openai::OpenAiClient;
use crate::providers::openai::ResponseFormat;
use crate::retry::Backoff;
use crate::routing::{Route, Routes};
use anyhow::Context;
use apalis::prelude::{BoxDynError, Data, WorkerBuilder, WorkerBuilderExt};
use apalis::prelude::{Event, WorkerContext};
use apalis_core::worker::ext::event_listener::EventListenerExt;
use apalis_core::worker::ext::parallelize::ParallelizeExt;
use apalis_redis::RedisStorage;
use futures::StreamExt;
use imagegen_shared::config::FluxProtocol;
use imagegen_shared::config::ProviderSettings;
use imagegen_shared::db;
use imagegen_shared::domain::JobStatus;
use imagegen_shared::domain::ProviderId;
use imagegen_shared::events::JobEvent;
use imagegen_shared::limits::{FleetLimits, LimitSettings};
use imagegen_shared::queue::JobQueue;
use imagegen_shared::queue::wake_channel;
use imagegen_shared::queue::{JobMessage, apalis_config, redis_connection};
use imagegen_shared::storage::ImageStorage;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pause before the queue consumer is rebuilt after Redis went away.
const RESTART_DELAY: Duration = Duration::from_secs(2);
const VACUUM_EVERY: Duration = Duration::from_secs(600);
const VACUUM_AFTER: Duration = Duration::from_secs(3600);

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}

async fn handle_message(
    message: JobMessage,
    ctx: Data<Arc<JobContext>>,
) -> Result<(), BoxDynError> {
    match process::handle(ctx.0.clone(), message).await {
        Ok(_) => Ok(()),
        // Returned to apalis so the message comes back later (it reschedules failed tasks with a growing delay).
        Err(e @ (ProcessError::Busy(_) | ProcessError::Db(_) | ProcessError::Released(_))) => {
            tracing::warn!(error = %e, "job not finished; the queue will deliver it again");
            Err(e.into())
        }
    }
}

/// Builds everything from configuration, then consumes the queue until `shutdown` resolves.
pub async fn run(
    args: WorkerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let provider_settings = args.providers.settings()?;
    let storage = ImageStorage::from_args(&args.storage).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = db::connect_lazy(
        &args.database.database_url,
        args.database.database_max_connections,
    )
    .context("DATABASE_URL: invalid")?;
    let (client, redis) = redis_connection(&args.redis.redis_url).context("REDIS_URL: invalid")?;

    let timeout = provider_settings.timeout;
    let routes = build_routes(&args, &provider_settings)?;
    let concurrency_limits = args.fleet.concurrency()?;
    let limit_settings = ProviderId::ALL
        .iter()
        .map(|p| {
            let settings = LimitSettings {
                concurrency: concurrency_limits.get(p).copied().unwrap_or(0),
                breaker_failures: args.fleet.breaker_failures,
                breaker_cooldown: Duration::from_secs(args.fleet.breaker_cooldown_secs),
                permit_ttl: args.fleet.permit_ttl(),
            };
            (*p, settings)
        })
        .collect();
    let mut allowed: Vec<String> = args
        .download_allowed_hosts
        .split(',')
        .map(str::to_owned)
        .collect();
    allowed.extend(routes.download_hosts());
    // Production downloads must be encrypted; plain http is for emulators and tests.
    let require_https = args.core.environment.eq_ignore_ascii_case("production");
    let downloader =
        Downloader::new(allowed, args.max_image_bytes, timeout)?.require_https(require_https);

    if let Some(port) = args.worker_metrics_port {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(SocketAddr::from(([0, 0, 0, 0], port)))
            .install()
            .context("WORKER_METRICS_PORT: could not serve metrics")?;
    }

    let worker_id = args.worker_id.clone().unwrap_or_else(default_worker_id);
    let concurrency = usize::try_from(args.worker_concurrency).unwrap_or(1);
    let abandon = CancellationToken::new();
    let ctx = Arc::new(JobContext {
        pool,
        storage,
        routes,
        downloader,
        redis: redis.clone(),
        queue: JobQueue::new(redis.clone(), &args.redis.queue_name),
        limits: FleetLimits::new(redis.clone(), &args.redis.queue_name),
        limit_settings,
        in_progress: Mutex::new(std::collections::HashMap::new()),
        queue_name: args.redis.queue_name.clone(),
        worker_id: worker_id.clone(),
        lease: Duration::from_secs(args.job_lease_secs),
        backoff: Backoff::default(),
        abandon: abandon.clone(),
    });

    let stopping = CancellationToken::new();
    {
        let stopping = stopping.clone();
        let abandon = abandon.clone();
        let grace = Duration::from_secs(args.shutdown_grace_secs);
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!(
                grace_secs = grace.as_secs(),
                "shutting down: no new jobs; running jobs may finish"
            );
            stopping.cancel();
            tokio::time::sleep(grace).await;
            abandon.cancel();
        });
    }

    let running: Arc<Mutex<Option<WorkerContext>>> = Arc::default();
    tokio::spawn(listen_for_work(
        client,
        wake_channel(&args.redis.queue_name),
        imagegen_shared::events::channel(&args.redis.queue_name),
        running.clone(),
        ctx.clone(),
        stopping.clone(),
    ));

    tokio::spawn(vacuum_queue(
        RedisStorage::<JobMessage>::new(redis.clone())
            .with_config(apalis_config(&args.redis.queue_name, 1)),
        stopping.clone(),
    ));

    if args.reconcile_enabled {
        let settings = crate::reconciler::ReconcilerSettings {
            every: Duration::from_secs(args.reconcile_interval_secs),
            queued_after: Duration::from_secs(args.reconcile_queued_after),
        };
        tokio::spawn(crate::reconciler::run(
            ctx.pool.clone(),
            ctx.queue.clone(),
            ctx.storage.clone(),
            settings,
            stopping.clone(),
        ));
    }

    tracing::info!(%worker_id, concurrency, queue = %args.redis.queue_name, "worker started");
    loop {
        let backend = RedisStorage::<JobMessage>::new(redis.clone())
            .with_config(apalis_config(&args.redis.queue_name, concurrency));
        let worker = WorkerBuilder::new(worker_id.as_str())
            .backend(backend)
            .data(ctx.clone())
            .concurrency(concurrency)
            .parallelize(tokio::spawn)
            .on_event({
                let running = running.clone();
                move |ctx, event| {
                    if matches!(event, Event::Start) {
                        *running.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.clone());
                    }
                }
            })
            .build(handle_message);
        let stop = stopping.clone();
        let result = worker
            .run_until(async move {
                stop.cancelled().await;
                Ok::<(), std::io::Error>(())
            })
            .await;
        if stopping.is_cancelled() {
            break;
        }
        match result {
            Ok(()) => tracing::warn!("queue consumer ended; restarting"),
            Err(e) => {
                tracing::warn!(error = %e, "queue consumer failed (is Redis up?); restarting")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESTART_DELAY) => {}
            _ = stopping.cancelled() => break,
        }
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Listens to two channels: the API's "work queued" nudge, which wakes the idle queue consumer so a job starts
/// within milliseconds instead of at the next heartbeat, and job events, so a job canceled by a client stops at once
/// here rather than at its next lease renewal. Reconnects by itself; without it both still happen, only later.
async fn listen_for_work(
    client: redis::Client,
    channel: String,
    events_channel: String,
    running: Arc<Mutex<Option<WorkerContext>>>,
    jobs: Arc<JobContext>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        let subscribed = tokio::time::timeout(Duration::from_secs(3), async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&[&channel, &events_channel]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(pubsub)) = subscribed {
            delay = Duration::from_millis(200);
            let mut messages = pubsub.into_on_message();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    msg = messages.next() => match msg {
                        Some(msg) if msg.get_channel_name() == events_channel => {
                            if let Ok(event) = serde_json::from_slice::<JobEvent>(msg.get_payload_bytes())
                                && event.status == JobStatus::Canceled
                            {
                                jobs.stop_if_running(event.job_id);
                            }
                        }
                        Some(_) => {
                            let ctx = running.lock().unwrap_or_else(|e| e.into_inner()).clone();
                            // apalis offers no public "poll now"; a pause/resume pair wakes the consumer.
                            if let Some(ctx) = ctx.filter(|c| c.is_running()) {
                                let _ = ctx.pause();
                                let _ = ctx.resume();
                            }
                        }
                        None => break,
                    },
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// apalis-redis keeps each finished message's payload and metadata until vacuumed; without this Redis grows with
/// every job ever run. Postgres keeps the real record, so an hour of queue history is plenty.
async fn vacuum_queue(mut storage: RedisStorage<JobMessage>, stop: CancellationToken) {
    use apalis_core::backend::Vacuum;
    let mut tick = tokio::time::interval(VACUUM_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match storage.vacuum_before(VACUUM_AFTER).await {
            Ok(n) if n > 0 => tracing::debug!(removed = n, "vacuumed finished queue messages"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "queue vacuum failed; will retry"),
        }
    }
}

/// One client per configured route, in preference order (DALLE3_BACKEND first), and the failover order.
fn build_routes(args: &WorkerArgs, settings: &ProviderSettings) -> anyhow::Result<Routes> {
    let timeout = settings.timeout;
    let mut routes = Vec::new();
    for (_, name) in settings.routes() {
        let client: Arc<dyn ImageProvider> = match name {
            "dalle3:azure" => match &settings.azure {
                Some(azure) => Arc::new(AzureClient::new(
                    azure.clone(),
                    timeout,
                    args.openai_response_format,
                )?),
                None => continue,
            },
            "dalle3:openai" => match &settings.openai {
                Some(openai) => Arc::new(OpenAiClient::new(
                    openai.clone(),
                    timeout,
                    args.openai_response_format,
                )?),
                None => continue,
            },
            _ => match settings.flux.clone() {
                Some(flux) if flux.protocol == FluxProtocol::Bfl => {
                    Arc::new(BflClient::new(flux, timeout)?)
                }
                Some(flux) => {
                    let inline = args.openai_response_format == ResponseFormat::B64Json;
                    Arc::new(FluxClient::new(flux, timeout, inline)?)
                }
                None => continue,
            },
        };
        routes.push(Route { client });
    }
    Ok(Routes::new(routes, args.fleet.failover_order()?))
}
