//! Wires the job handler to the queue (apalis-redis, or the standalone mode's in-process queue) and owns the
//! process lifecycle: builds the job context from `WorkerSettings`, starts the periodic chores (reconciler,
//! retention, queue promotion and vacuum), consumes until shutdown (restarting on Redis trouble), then drains.
//! `run(settings, shutdown)` connects the stores the settings name; `run_with` takes stores shared with the API.

use crate::config::WorkerSettings;
use crate::download::Downloader;
use crate::job::{self, JobContext, ProcessError, RunningJobs};
use crate::providers::ImageProvider;
use crate::providers::azure::AzureClient;
use crate::providers::bfl::BflClient;
use crate::providers::flux::FluxClient;
use crate::providers::images_api::ResponseFormat;
use crate::providers::openai::OpenAiClient;
use crate::retry::Backoff;
use crate::routing::Routes;
use crate::ticker;
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

async fn handle_message(
    message: JobMessage,
    ctx: Data<Arc<JobContext>>,
) -> Result<(), BoxDynError> {
    match job::handle(ctx.0.clone(), message).await {
        Ok(_) => Ok(()),
        // Returned to apalis so the message comes back later (it reschedules failed tasks with a growing delay).
        Err(e @ (ProcessError::Busy(_) | ProcessError::Db(_) | ProcessError::Released(_))) => {
            tracing::warn!(error = %e, "job not finished; the queue will deliver it again");
            Err(e.into())
        }
    }
}

/// Connects to the stores `settings` name, then consumes the queue until `shutdown` resolves.
pub async fn run(
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let backends = Backends::connect(
        &settings.database.database_url,
        settings.database.database_max_connections,
        Some(&settings.redis.redis_url),
        &settings.redis.queue_name,
    )?;
    run_with(settings, backends, shutdown).await
}

/// Consumes the queue of `backends` until `shutdown` resolves (the standalone mode shares them with its API).
pub async fn run_with(
    settings: WorkerSettings,
    backends: Backends,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let storage =
        ImageStorage::from_settings(&settings.storage).map_err(|e| anyhow::anyhow!("{e}"))?;
    storage.verify().await.map_err(|e| anyhow::anyhow!("{e}"))?;

    let routes = build_routes(&settings.providers, settings.download.response_format)?;
    let mut allowed = settings.download.allowed_hosts.clone();
    allowed.extend(routes.download_hosts());
    // Production downloads must be encrypted; plain http is for emulators and tests.
    let require_https = settings.environment.is_production();
    let downloader = Downloader::new(
        allowed,
        settings.download.max_image_bytes,
        settings.providers.timeout,
    )?
    .require_https(require_https);

    if let Some(port) = settings.metrics_port {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(SocketAddr::from(([0, 0, 0, 0], port)))
            .install()
            .context("WORKER_METRICS_PORT: could not serve metrics")?;
    }

    let worker_id = settings.worker_id.clone();
    let concurrency = settings.concurrency;
    let abandon = CancellationToken::new();
    let ctx = Arc::new(JobContext {
        pool: backends.db.clone(),
        storage,
        routes,
        downloader,
        queue: backends.queue.clone(),
        limits: backends.limits.clone(),
        limit_settings: settings.limits.clone(),
        running: RunningJobs::default(),
        worker_id: worker_id.clone(),
        lease: settings.lease,
        backoff: Backoff::default(),
        abandon: abandon.clone(),
    });

    let stopping = CancellationToken::new();
    {
        let stopping = stopping.clone();
        let abandon = abandon.clone();
        let grace = settings.shutdown_grace;
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

    if let Some(age) = settings.storage.retention {
        let retention = crate::retention::RetentionSettings {
            age,
            every: RETENTION_EVERY,
        };
        tracing::info!(
            days = age.as_secs() / 86_400,
            "image retention on: finished jobs and their images are deleted after that age"
        );
        tokio::spawn(crate::retention::run(
            ctx.pool.clone(),
            ctx.storage.clone(),
            retention,
            stopping.clone(),
        ));
    }

    if let Some(reconcile) = settings.reconcile.clone() {
        tokio::spawn(crate::reconciler::run(
            ctx.pool.clone(),
            ctx.queue.clone(),
            ctx.storage.clone(),
            reconcile,
            stopping.clone(),
        ));
    }

    let queue_name = settings.redis.queue_name.as_str();
    tracing::info!(%worker_id, concurrency, queue = %queue_name, stores = %backends.describe(), "worker started");
    match backends.redis_connection() {
        Some(redis) => {
            tokio::spawn(vacuum_queue(
                RedisStorage::<JobMessage>::new(redis.clone())
                    .with_config(apalis_config(queue_name, 1)),
                stopping.clone(),
            ));
            tokio::spawn(promote_due_loop(ctx.queue.clone(), stopping.clone()));
            consume_redis(queue_name, redis, ctx, concurrency, running, stopping).await;
        }
        None => consume_local(ctx, concurrency, stopping).await,
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Keeps apalis' scheduled set from piling up past what its fetch script can promote (see `JobQueue::promote_due`).
async fn promote_due_loop(queue: JobQueue, stop: CancellationToken) {
    let mut ticks = ticker::every(PROMOTE_EVERY, &stop);
    while ticks.next().await {
        match queue.promote_due().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(moved = n, "promoted a pile-up of due queue messages"),
            Err(e) => tracing::debug!(error = %e, "could not promote due messages; will retry"),
        }
    }
}

/// apalis on Redis: rebuilt whenever Redis goes away, until `stopping`.
async fn consume_redis(
    queue_name: &str,
    redis: ConnectionManager,
    ctx: Arc<JobContext>,
    concurrency: usize,
    running: Arc<Mutex<Option<WorkerContext>>>,
    stopping: CancellationToken,
) {
    loop {
        let backend = RedisStorage::<JobMessage>::new(redis.clone())
            .with_config(apalis_config(queue_name, concurrency));
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
            if let Err(e) = job::handle(ctx.clone(), message.clone()).await {
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
    let mut ticks = ticker::every(VACUUM_EVERY, &stop);
    while ticks.next().await {
        match storage.vacuum_before(VACUUM_AFTER).await {
            Ok(n) if n > 0 => tracing::debug!(removed = n, "vacuumed finished queue messages"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "queue vacuum failed; will retry"),
        }
    }
}

/// One client per configured provider; the routes are built per job from the offer (`Routes::chain`).
fn build_routes(
    settings: &ProviderSettings,
    response_format: ResponseFormat,
) -> anyhow::Result<Routes> {
    let timeout = settings.timeout;
    let mut clients: Vec<Arc<dyn ImageProvider>> = Vec::new();
    for provider in settings.configured() {
        let client: Arc<dyn ImageProvider> = match provider {
            ProviderId::OpenAi => match &settings.openai {
                Some(openai) => {
                    Arc::new(OpenAiClient::new(openai.clone(), timeout, response_format)?)
                }
                None => continue,
            },
            ProviderId::AzureOpenAi => match &settings.azure {
                Some(azure) => Arc::new(AzureClient::new(azure.clone(), timeout, response_format)?),
                None => continue,
            },
            ProviderId::Flux => match &settings.flux {
                Some(flux) => {
                    let inline = response_format == ResponseFormat::B64Json;
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
