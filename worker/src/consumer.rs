//! Wires the job handler to the queue and owns the process lifecycle: builds the job context from
//! `WorkerSettings`, starts the periodic chores (reconciler, retention), hands the queue `handle_message` until
//! shutdown (`JobQueue::consume`: whichever backend it is, it brings its own chores and restarts), then drains.
//! `run(settings, shutdown)` connects the stores the settings name; `run_with` takes stores shared with the API.

use crate::config::WorkerSettings;
use crate::download::Downloader;
use crate::job::{
    self, AheadGuess, GatheredWrites, InputFetcher, JobContext, ProcessError, RunningJobs,
};
use crate::picture_memory::PictureMemory;
use crate::providers::ImageProvider;
use crate::providers::azure::AzureClient;
use crate::providers::bfl::BflClient;
use crate::providers::flux::FluxClient;
use crate::providers::images_api::ResponseFormat;
use crate::providers::openai::OpenAiClient;
use crate::retry::Backoff;
use crate::routing::Routes;
use anyhow::Context;
use imagegen_shared::backends::Backends;
use imagegen_shared::config::ProviderSettings;
use imagegen_shared::db::Db;
use imagegen_shared::domain::JobStatus;
use imagegen_shared::domain::ProviderId;
use imagegen_shared::queue::signals::Signal;
use imagegen_shared::queue::{ConsumerSettings, Delivery, JobMessage};
use imagegen_shared::storage::ImageStorage;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the retention pass looks for expired jobs (the first pass runs at start).
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Runs the job a message names and tells the queue whether the message must come back.
async fn handle_message(ctx: Arc<JobContext>, message: JobMessage) -> Delivery {
    let job_id = message.job_id;
    match job::handle(ctx, message).await {
        Ok(_) => Delivery::Done,
        // Not acknowledged: the in-process queue delivers it again after a second (apalis-redis does not while its
        // acknowledgements are off; see `queue::redis`), and the reconciler finds the job in the database anyway.
        // Released: the job was handed back with a fresh message already.
        Err(
            e @ (ProcessError::Busy(_)
            | ProcessError::Db(_)
            | ProcessError::Inputs(..)
            | ProcessError::Released(_)),
        ) => {
            tracing::warn!(%job_id, error = %e, "job not finished; the queue will deliver it again");
            Delivery::Redeliver
        }
    }
}

/// Connects to the stores `settings` name, then consumes the queue until `shutdown` resolves.
pub async fn run(
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_forceable(settings, shutdown, std::future::pending()).await
}

/// `run`, with `force` cutting the shutdown grace period short (a second signal): the jobs still running are
/// handed back to the queue at once, as at the end of the grace period, and the worker stops.
pub async fn run_forceable(
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    force: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let backends = Backends::connect(
        &settings.database.database_url,
        settings.database.database_max_connections,
        Some(&settings.redis.redis_url),
        &settings.redis.queue_name,
    )?;
    run_with_forceable(settings, backends, shutdown, force).await
}

/// Consumes the queue of `backends` until `shutdown` resolves (the standalone mode shares them with its API).
pub async fn run_with(
    settings: WorkerSettings,
    backends: Backends,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_forceable(settings, backends, shutdown, std::future::pending()).await
}

/// `run_with`, with `force` cutting the shutdown grace period short (see `run_forceable`).
pub async fn run_with_forceable(
    settings: WorkerSettings,
    backends: Backends,
    shutdown: impl Future<Output = ()> + Send + 'static,
    force: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let storage =
        ImageStorage::from_settings(&settings.storage).map_err(|e| anyhow::anyhow!("{e}"))?;
    storage.verify().await.map_err(|e| anyhow::anyhow!("{e}"))?;

    // One budget for the whole process: inline answers and downloads alike.
    let memory = PictureMemory::new(settings.download.picture_memory_bytes);
    let routes = build_routes(
        &settings.providers,
        settings.download.response_format,
        settings.download.max_image_bytes,
        &memory,
    )?;
    let mut allowed = settings.download.allowed_hosts.clone();
    allowed.extend(routes.download_hosts());
    // Production downloads must be encrypted; plain http is for emulators and tests.
    let require_https = settings.environment.is_production();
    let downloader = Downloader::new(
        allowed,
        settings.download.max_image_bytes,
        settings.providers.timeout,
    )?
    .require_https(require_https)
    .picture_memory(memory);

    if let Some(port) = settings.metrics_port {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(SocketAddr::from(([0, 0, 0, 0], port)))
            .install()
            .context("WORKER_METRICS_PORT: could not serve metrics")?;
    }

    let worker_id = settings.worker_id.clone();
    let concurrency = settings.concurrency;
    let abandon = CancellationToken::new();
    // Writes gathered across jobs on Postgres; SQLite, one process alone, does them one by one.
    let gathered = match &backends.db {
        Db::Postgres(pool) => Some(GatheredWrites::new(pool, &worker_id, settings.lease)),
        Db::Sqlite(_) => None,
    };
    let ctx = Arc::new(JobContext {
        pool: backends.db.clone(),
        gathered,
        storage,
        routes,
        downloader,
        queue: backends.queue.clone(),
        limits: backends.limits.clone(),
        budgets: backends.budgets.clone(),
        limit_settings: settings.limits.clone(),
        limits_fail: settings.redis.limits_on_redis_error,
        running: RunningJobs::default(),
        worker_id: worker_id.clone(),
        lease: settings.lease,
        backoff: Backoff::default(),
        abandon: abandon.clone(),
        inputs: InputFetcher::new(&settings.edits).context("the edit input client")?,
        ahead: AheadGuess::default(),
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
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = force => tracing::warn!(
                    "second shutdown signal: not waiting out the grace period; running jobs handed back to the \
                     queue now"
                ),
            }
            abandon.cancel();
        });
    }

    tokio::spawn(listen_for_cancels(
        ctx.queue.signals(stopping.clone()),
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
            ctx.budgets.clone(),
            reconcile,
            stopping.clone(),
        ));
    }

    let queue_name = settings.redis.queue_name.as_str();
    tracing::info!(%worker_id, concurrency, queue = %queue_name, stores = %backends.describe(),
        storage = %ctx.storage.location(), "worker started");
    let consumer = ConsumerSettings {
        worker_id,
        concurrency,
    };
    let queue = ctx.queue.clone();
    queue
        .consume(
            consumer,
            move |message| handle_message(ctx.clone(), message),
            stopping,
        )
        .await;
    tracing::info!("worker stopped");
    Ok(())
}

/// A job canceled by a client stops at once here rather than at its next lease renewal (without the event it
/// still stops then, only later).
async fn listen_for_cancels(
    mut signals: tokio::sync::mpsc::Receiver<Signal>,
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
            Some(_) => {}
            None => return,
        }
    }
}

/// One client per configured provider; the routes are built per job from the offer (`Routes::chain`).
fn build_routes(
    settings: &ProviderSettings,
    response_format: ResponseFormat,
    max_image_bytes: u64,
    memory: &PictureMemory,
) -> anyhow::Result<Routes> {
    let timeout = settings.timeout;
    let mut clients: Vec<Arc<dyn ImageProvider>> = Vec::new();
    for provider in settings.configured() {
        let client: Arc<dyn ImageProvider> = match provider {
            ProviderId::OpenAi => match &settings.openai {
                Some(openai) => Arc::new(OpenAiClient::new(
                    openai.clone(),
                    timeout,
                    response_format,
                    max_image_bytes,
                    memory.clone(),
                )?),
                None => continue,
            },
            ProviderId::AzureOpenAi => match &settings.azure {
                Some(azure) => Arc::new(AzureClient::new(
                    azure.clone(),
                    timeout,
                    response_format,
                    max_image_bytes,
                    memory.clone(),
                )?),
                None => continue,
            },
            ProviderId::Flux => match &settings.flux {
                Some(flux) => {
                    let inline = response_format == ResponseFormat::B64Json;
                    Arc::new(FluxClient::new(
                        flux.clone(),
                        timeout,
                        inline,
                        max_image_bytes,
                        memory.clone(),
                    )?)
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
