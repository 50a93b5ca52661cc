//! Wires the job handler to the apalis-redis queue and owns the process lifecycle (restart on Redis trouble,
//! graceful shutdown).

use crate::WorkerArgs;
use crate::download::Downloader;
use crate::process::{self, JobContext, ProcessError};
use crate::providers::ImageProvider;
use crate::providers::azure::AzureClient;
use crate::providers::bfl::BflClient;
use crate::providers::flux::FluxClient;
use crate::providers::images_api::ResponseFormat;
use crate::providers::openai::OpenAiClient;
use crate::retry::Backoff;
use crate::routing::Routes;
use anyhow::Context;
use apalis::prelude::{BoxDynError, Data, WorkerBuilder, WorkerBuilderExt};
use apalis::prelude::{Event, WorkerContext};
use apalis_core::worker::ext::event_listener::EventListenerExt;
use apalis_core::worker::ext::parallelize::ParallelizeExt;
use apalis_redis::ConnectionManager;
use apalis_redis::RedisStorage;
use imagegen_shared::backends::Backends;
use imagegen_shared::config::ProviderSettings;
use imagegen_shared::domain::JobStatus;
use imagegen_shared::domain::ProviderId;
use imagegen_shared::limits::LimitSettings;
use imagegen_shared::queue::{JobMessage, apalis_config};
use imagegen_shared::queue::{JobQueue, Signal};
use imagegen_shared::storage::ImageStorage;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pause before the queue consumer is rebuilt after Redis went away.
const RESTART_DELAY: Duration = Duration::from_secs(2);
/// How soon the in-process queue delivers again a job that could not finish (apalis-redis waits about as long).
const LOCAL_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often a worker checks the queue's scheduled set for a pile-up.
const PROMOTE_EVERY: Duration = Duration::from_millis(250);
/// How often the retention pass looks for expired jobs (the first pass runs at start).
const RETENTION_EVERY: Duration = Duration::from_secs(600);
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
    let backends = Backends::connect(
        &args.database.database_url,
        args.database.database_max_connections,
        Some(&args.redis.redis_url),
        &args.redis.queue_name,
    )?;
    run_with(args, backends, shutdown).await
}

/// Consumes the queue of `backends` until `shutdown` resolves (the standalone mode shares them with its API).
pub async fn run_with(
    args: WorkerArgs,
    backends: Backends,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let provider_settings = args.providers.settings()?;
    let storage = ImageStorage::from_settings(&args.storage.settings()?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    storage.verify().await.map_err(|e| anyhow::anyhow!("{e}"))?;

    let timeout = provider_settings.timeout;
    let routes = build_routes(&args, &provider_settings)?;
    let concurrency_limits = args.fleet.concurrency(&provider_settings.catalogue)?;
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
    let require_https = args.core.environment.is_production();
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
        pool: backends.db.clone(),
        storage,
        routes,
        downloader,
        queue: backends.queue.clone(),
        limits: backends.limits.clone(),
        limit_settings,
        in_progress: Mutex::new(std::collections::HashMap::new()),
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
        ctx.queue.signals(stopping.clone()),
        running.clone(),
        ctx.clone(),
        stopping.clone(),
    ));

    if let Some(days) = args.storage.image_retention_days {
        let settings = crate::retention::RetentionSettings {
            age: Duration::from_secs(u64::from(days) * 86_400),
            every: RETENTION_EVERY,
        };
        tracing::info!(
            days,
            "image retention on: finished jobs and their images are deleted after that age"
        );
        tokio::spawn(crate::retention::run(
            ctx.pool.clone(),
            ctx.storage.clone(),
            settings,
            stopping.clone(),
        ));
    }

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

    tracing::info!(%worker_id, concurrency, queue = %args.redis.queue_name, stores = %backends.describe(), "worker started");
    match backends.redis_connection() {
        Some(redis) => {
            tokio::spawn(vacuum_queue(
                RedisStorage::<JobMessage>::new(redis.clone())
                    .with_config(apalis_config(&args.redis.queue_name, 1)),
                stopping.clone(),
            ));
            tokio::spawn(promote_due_loop(ctx.queue.clone(), stopping.clone()));
            consume_redis(&args, redis, ctx, concurrency, running, stopping).await;
        }
        None => consume_local(ctx, concurrency, stopping).await,
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Keeps apalis' scheduled set from piling up past what its fetch script can promote (see `JobQueue::promote_due`).
async fn promote_due_loop(queue: JobQueue, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROMOTE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match queue.promote_due().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(moved = n, "promoted a pile-up of due queue messages"),
            Err(e) => tracing::debug!(error = %e, "could not promote due messages; will retry"),
        }
    }
}

/// apalis on Redis: rebuilt whenever Redis goes away, until `stopping`.
async fn consume_redis(
    args: &WorkerArgs,
    redis: ConnectionManager,
    ctx: Arc<JobContext>,
    concurrency: usize,
    running: Arc<Mutex<Option<WorkerContext>>>,
    stopping: CancellationToken,
) {
    loop {
        let backend = RedisStorage::<JobMessage>::new(redis.clone())
            .with_config(apalis_config(&args.redis.queue_name, concurrency));
        let worker = WorkerBuilder::new(ctx.worker_id.as_str())
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
}

/// The in-process queue (standalone mode): up to `concurrency` jobs at once; a job that could not finish now
/// (held elsewhere, database trouble) comes back after a short delay, like apalis' reschedule. At `stopping` no new
/// job starts and the running ones finish (or hand themselves back at the end of the grace period).
async fn consume_local(ctx: Arc<JobContext>, concurrency: usize, stopping: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut running = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = stopping.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let message = tokio::select! {
            _ = stopping.cancelled() => break,
            message = ctx.queue.next_local() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let ctx = ctx.clone();
        running.spawn(async move {
            let _slot = slot;
            if let Err(e) = process::handle(ctx.clone(), message.clone()).await {
                if matches!(e, ProcessError::Released(_)) {
                    return;
                }
                tracing::warn!(error = %e, "job not finished; it will be delivered again");
                if let Err(e) = ctx.queue.push_delayed(message, LOCAL_RETRY_DELAY).await {
                    tracing::warn!(error = %e, "could not re-queue a job; the reconciler will");
                }
            }
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

/// Listens to the queue's signals: the API's "work queued" nudge wakes the idle apalis consumer so a job starts
/// within milliseconds instead of at the next heartbeat, and a job canceled by a client stops at once here rather
/// than at its next lease renewal. Without them both still happen, only later.
async fn listen_for_work(
    mut signals: tokio::sync::mpsc::Receiver<Signal>,
    running: Arc<Mutex<Option<WorkerContext>>>,
    jobs: Arc<JobContext>,
    stop: CancellationToken,
) {
    loop {
        let signal = tokio::select! {
            _ = stop.cancelled() => return,
            signal = signals.recv() => signal,
        };
        match signal {
            Some(Signal::Event(event)) if event.status == JobStatus::Canceled => {
                jobs.stop_if_running(event.job_id);
            }
            Some(Signal::Wake) => {
                let ctx = running.lock().unwrap_or_else(|e| e.into_inner()).clone();
                // apalis offers no public "poll now"; a pause/resume pair wakes the consumer.
                if let Some(ctx) = ctx.filter(|c| c.is_running()) {
                    let _ = ctx.pause();
                    let _ = ctx.resume();
                }
            }
            Some(_) => {}
            None => return,
        }
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

/// One client per configured provider; the routes are built per job from the offer (`Routes::chain`).
fn build_routes(args: &WorkerArgs, settings: &ProviderSettings) -> anyhow::Result<Routes> {
    let timeout = settings.timeout;
    let mut clients: Vec<Arc<dyn ImageProvider>> = Vec::new();
    for provider in settings.configured() {
        let client: Arc<dyn ImageProvider> = match provider {
            ProviderId::OpenAi => match &settings.openai {
                Some(openai) => Arc::new(OpenAiClient::new(
                    openai.clone(),
                    timeout,
                    args.openai_response_format,
                )?),
                None => continue,
            },
            ProviderId::AzureOpenAi => match &settings.azure {
                Some(azure) => Arc::new(AzureClient::new(
                    azure.clone(),
                    timeout,
                    args.openai_response_format,
                )?),
                None => continue,
            },
            ProviderId::Flux => match &settings.flux {
                Some(flux) => {
                    let inline = args.openai_response_format == ResponseFormat::B64Json;
                    Arc::new(FluxClient::new(flux.clone(), timeout, inline)?)
                }
                None => continue,
            },
            ProviderId::Bfl => match &settings.bfl {
                Some(bfl) => Arc::new(BflClient::new(bfl.clone(), timeout)?),
                None => continue,
            },
        };
        clients.push(client);
    }
    // The worker checks no request sizes: MAX_IMAGES_PER_REQUEST is the API's business.
    Ok(Routes::new(clients, settings.offer(u8::MAX)))
}
