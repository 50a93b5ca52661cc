//! The deployments' queue: apalis-redis. Everything that knows apalis lives here: the storage settings every
//! process must agree on, pushing (now or after a delay), and the consumer with its chores (the WorkerBuilder with
//! concurrency and catch-panic, rebuilt after Redis trouble; the wake-up on a work nudge; the promotion of a
//! scheduled-set pile-up; the vacuum of finished messages).
//!
//! Acknowledgements: apalis-redis 1.0 only records a task's outcome (and so acknowledges it) when it persists
//! results, which [`apalis_config`] therefore turns on. A message the handler answers `Redeliver` to (or panics on)
//! is rescheduled by apalis with its growing delay; a handled one leaves the worker's in-flight set and is vacuumed
//! an hour later. (Until 2026-11-28 results were off, so neither happened: handled messages piled up in Redis and
//! handed-back jobs waited for the reconciler.)

use super::message::{ConsumerSettings, Delivery, Handler, JobMessage, QueueError};
use super::message::{panic_text, report_panic};
use super::signals::{self, JobEvent, Listen, Signal};
use crate::gather::Gather;
use crate::ticker;
use apalis::layers::catch_panic::{CatchPanicLayer, PanicError};
use apalis::prelude::{BoxDynError, Data, Event, Service, Status, Task, TaskBuilder, TaskSink};
use apalis::prelude::{EventListenerExt, ParallelizeExt, WorkerBuilder, WorkerBuilderExt};
use apalis::prelude::{WorkerContext, WorkerError, layer_fn};
use apalis_redis::{ConnectionManager, RedisStorage};
use futures::future::BoxFuture;
use redis::IntoConnectionInfo;
use redis::aio::ConnectionManagerConfig;
use redis::io::tcp::TcpSettings;
use std::any::Any;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bounds on every Redis call, so a dead Redis turns into a quick 503 instead of a hung request.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a worker tells Redis it is alive (an idle worker also looks for due and delayed messages then), and
/// how many beats it may miss before its in-flight jobs go back to the queue: 1 s x 25 = within about 25-30 s.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const MISSED_HEARTBEATS: usize = 25;

/// Pause before the consumer is rebuilt after Redis went away.
const RESTART_DELAY: Duration = Duration::from_secs(2);
/// How often a consumer checks the scheduled set for a pile-up.
const PROMOTE_EVERY: Duration = Duration::from_millis(250);
/// How often finished messages are vacuumed, and how old they must be.
const VACUUM_EVERY: Duration = Duration::from_secs(600);
const VACUUM_AFTER: Duration = Duration::from_secs(3600);

/// Moves due messages from apalis' scheduled set to its active list, at most ARGV[2] of them. apalis-redis 1.0
/// queues every message through the scheduled set and promotes all due ones inside its fetch script with one
/// `unpack`, which Lua refuses beyond about 8,000 values: a burst that large between two fetches (a backlog while
/// workers are busy or down) would make every fetch fail forever. Promoting in bounded chunks first keeps it small.
/// KEYS: scheduled set, active list, signal list. ARGV: now (seconds), chunk size. Returns how many moved.
const PROMOTE_DUE: &str = r"
local ids = redis.call('zrangebyscore', KEYS[1], 0, ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return 0 end
redis.call('rpush', KEYS[2], unpack(ids))
redis.call('zrem', KEYS[1], unpack(ids))
redis.call('del', KEYS[3])
redis.call('lpush', KEYS[3], 1)
return #ids
";

/// Largest chunk moved by one PROMOTE_DUE call (well under Lua's unpack limit).
const PROMOTE_CHUNK: usize = 1000;

/// A Redis connection that reconnects by itself, created without touching the network so a process can start
/// (and report not-ready) while Redis is down.
///
/// TCP_NODELAY: redis-rs leaves Nagle's algorithm on, so a command sent in more than one piece (a grouped push or a
/// promotion larger than one segment) would send its tail only once Redis acknowledged the head: up to 40 ms. The
/// same stall was measured on Postgres (docs/performance.md, "Nagle"); on Redis it is a precaution.
pub fn redis_connection(
    url: &str,
) -> Result<(redis::Client, ConnectionManager), redis::RedisError> {
    let info = url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
        .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok((client, manager))
}

/// One grouped push: every message in one script call (apalis' batch push), then one nudge. The call is all or
/// nothing, so each caller gets the same outcome. The callers are answered once the push is in; the nudge goes out
/// after it (so a woken worker finds the message) without them waiting for its reply: nobody needs it, and a
/// submission's answer is one Redis round trip sooner.
async fn push_group(
    mut storage: RedisStorage<JobMessage>,
    conn: ConnectionManager,
    wake_channel: String,
    messages: Vec<JobMessage>,
) -> Vec<Result<(), QueueError>> {
    let n = messages.len();
    match storage.push_bulk(messages).await {
        Ok(()) => {
            tokio::spawn(async move { wake(&conn, &wake_channel).await });
            (0..n).map(|_| Ok(())).collect()
        }
        Err(e) => {
            let text = e.to_string();
            (0..n)
                .map(|_| Err(QueueError::Push(text.clone())))
                .collect()
        }
    }
}

/// Idle apalis workers only look at the queue again on their next heartbeat; this nudge makes them look now.
/// Best effort: a lost nudge costs at most one heartbeat interval of latency.
async fn wake(conn: &ConnectionManager, channel: &str) {
    let mut conn = conn.clone();
    let sent: Result<i64, _> = redis::cmd("PUBLISH")
        .arg(channel)
        .arg("1")
        .query_async(&mut conn)
        .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "could not nudge workers");
    }
}

/// The apalis-redis settings every process of a deployment must agree on.
fn apalis_config(queue_name: &str, batch_size: usize) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(format!("{queue_name}:jobs"))
        .batch_size(batch_size.max(1))
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .missed_heartbeats(MISSED_HEARTBEATS)
        // In apalis-redis 1.0 this is also what acknowledges a task (`should_ack`): without it every handled
        // message stayed in its worker's in-flight set with its payload for good, and a handed-back one was never
        // rescheduled. The outcome it stores is tiny and the vacuum removes finished messages after an hour.
        .persist_results(true)
}

/// The most messages one grouped push carries (one script call; its arguments are 7 per message).
const MAX_PUSH_GROUP: usize = 256;
/// Grouped pushes running at once (pipelined on the one multiplexed connection).
const PUSH_SLOTS: usize = 4;

#[derive(Clone)]
pub(super) struct RedisQueue {
    storage: RedisStorage<JobMessage>,
    /// Pushes made at the same time go to Redis as one script call and one nudge (see [`crate::gather`]).
    pushes: Arc<Gather<JobMessage, Result<(), QueueError>>>,
    conn: ConnectionManager,
    /// For pub/sub; without it (tests that only push) nothing is heard.
    client: Option<redis::Client>,
    config: apalis_redis::Config,
    queue_name: String,
}

impl RedisQueue {
    pub(super) fn new(
        client: Option<redis::Client>,
        conn: ConnectionManager,
        queue_name: &str,
    ) -> Self {
        let config = apalis_config(queue_name, 1);
        let storage = RedisStorage::new(conn.clone()).with_config(config.clone());
        let pushes = Gather::new(
            "queue_push",
            MAX_PUSH_GROUP,
            PUSH_SLOTS,
            Box::new({
                let storage = storage.clone();
                let conn = conn.clone();
                let wake = signals::wake_channel(queue_name);
                move |messages| {
                    Box::pin(push_group(
                        storage.clone(),
                        conn.clone(),
                        wake.clone(),
                        messages,
                    ))
                }
            }),
        );
        Self {
            storage,
            pushes,
            conn,
            client,
            config,
            queue_name: queue_name.to_owned(),
        }
    }

    /// The deployment's queue name (QUEUE_NAME), for `Debug`.
    pub(super) fn name(&self) -> &str {
        &self.queue_name
    }

    pub(super) async fn push(&self, message: JobMessage) -> Result<(), QueueError> {
        self.pushes
            .call(message)
            .await
            .map_err(|e| QueueError::Push(e.to_string()))?
    }

    pub(super) async fn push_delayed(
        &self,
        message: JobMessage,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let mut storage = self.storage.clone();
        let task = TaskBuilder::new(message).run_after(delay).build();
        storage
            .push_task(task)
            .await
            .map_err(|e| QueueError::Push(e.to_string()))
    }

    /// Messages ready now plus those scheduled for later.
    pub(super) async fn depth(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let (active, scheduled): (u64, u64) = redis::pipe()
            .llen(self.config.active_jobs_list())
            .zcard(self.config.scheduled_jobs_set())
            .query_async(&mut conn)
            .await?;
        Ok(active + scheduled)
    }

    pub(super) async fn publish_event(&self, event: &JobEvent) -> Result<JobEvent, QueueError> {
        Ok(signals::publish(&self.conn, &self.queue_name, event).await?)
    }

    pub(super) async fn history(
        &self,
        stream: super::history::Stream,
        after: Option<&str>,
    ) -> Result<Vec<JobEvent>, QueueError> {
        Ok(super::history::read_redis(&self.conn, &self.queue_name, stream, after).await?)
    }

    pub(super) async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    pub(super) async fn publish_partial(
        &self,
        frame: &super::partials::PartialFrame,
    ) -> Result<(), QueueError> {
        super::partials::publish_redis(&self.conn, &self.queue_name, frame).await?;
        Ok(())
    }

    pub(super) async fn partials(
        &self,
        job: crate::domain::JobId,
        stop: CancellationToken,
    ) -> Result<mpsc::Receiver<super::partials::PartialFrame>, QueueError> {
        match self.client.clone() {
            Some(client) => {
                Ok(super::partials::subscribe_redis(client, &self.queue_name, job, stop).await?)
            }
            None => Ok(mpsc::channel(1).1),
        }
    }

    pub(super) fn signals(&self, stop: CancellationToken) -> mpsc::Receiver<Signal> {
        match self.client.clone() {
            Some(client) => {
                signals::subscribe_redis(client, &self.queue_name, Listen::Events, stop)
            }
            // Nothing to listen with: the subscriber sees the stream end at once.
            None => mpsc::channel(1).1,
        }
    }

    /// Promotes due messages in bounded chunks (see PROMOTE_DUE) while more than one chunk is due; returns how many
    /// moved.
    async fn promote_due(&self) -> Result<u64, QueueError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut conn = self.conn.clone();
        let script = redis::Script::new(PROMOTE_DUE);
        let mut moved = 0u64;
        // Small numbers are apalis' own business; only a pile-up is promoted here, in chunks.
        loop {
            let due: u64 = redis::cmd("ZCOUNT")
                .arg(self.config.scheduled_jobs_set())
                .arg(0)
                .arg(now)
                .query_async(&mut conn)
                .await?;
            if due <= PROMOTE_CHUNK as u64 {
                return Ok(moved);
            }
            let n: u64 = script
                .key(self.config.scheduled_jobs_set())
                .key(self.config.active_jobs_list())
                .key(self.config.signal_list())
                .arg(now)
                .arg(PROMOTE_CHUNK)
                .invoke_async(&mut conn)
                .await?;
            moved += n;
            if n == 0 {
                return Ok(moved);
            }
        }
    }

    /// An apalis worker on this queue until `stop`, rebuilt whenever it ends early (Redis went away). Alongside it
    /// run the chores a Redis consumer needs: the wake-up on a work nudge, the pile-up promotion and the vacuum.
    pub(super) async fn consume(
        &self,
        settings: ConsumerSettings,
        handler: Handler,
        stop: CancellationToken,
    ) {
        let started: Arc<Mutex<Option<WorkerContext>>> = Arc::default();
        if let Some(client) = self.client.clone() {
            let nudges =
                signals::subscribe_redis(client, &self.queue_name, Listen::Wake, stop.clone());
            tokio::spawn(wake_on_nudge(nudges, started.clone()));
        }
        tokio::spawn(promote_due_loop(self.clone(), stop.clone()));
        tokio::spawn(vacuum_loop(self.storage.clone(), stop.clone()));
        loop {
            let backend = RedisStorage::<JobMessage>::new(self.conn.clone())
                .with_config(apalis_config(&self.queue_name, settings.concurrency));
            let worker = WorkerBuilder::new(settings.worker_id.as_str())
                .backend(backend)
                .data(handler.clone())
                .concurrency(settings.concurrency)
                .parallelize(tokio::spawn)
                // Inside `parallelize`, so they run in the job's own task: a panic outside them would end that task
                // and reach apalis as an error that no longer says it was a panic.
                .layer(layer_fn(ReportPanics))
                // A panicking job becomes an error result instead of a task that dies with its message in flight.
                // Not apalis' default handler: its AbortError would bury the message in the dead set.
                .layer(CatchPanicLayer::with_panic_handler(
                    to_panic_error as fn(&Box<dyn Any + Send + 'static>) -> PanicError,
                ))
                .on_event({
                    let started = started.clone();
                    move |ctx, event| {
                        if matches!(event, Event::Start) {
                            *started.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.clone());
                        }
                    }
                })
                .build(run_message);
            let until = stop.clone();
            // Boxed here, where every type is concrete: left to the caller's future, the compiler cannot prove
            // that apalis' worker is `Send` for all lifetimes, and `consume` could not be spawned.
            let run: BoxFuture<'static, Result<(), WorkerError>> =
                Box::pin(worker.run_until(async move {
                    until.cancelled().await;
                    Ok::<(), std::io::Error>(())
                }));
            let result = run.await;
            if stop.is_cancelled() {
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
                _ = stop.cancelled() => break,
            }
        }
    }
}

/// The apalis task: the handler's verdict as apalis understands it (an error is to be delivered again later, with
/// a growing delay, once acknowledgements are on: see the module doc).
async fn run_message(message: JobMessage, handler: Data<Handler>) -> Result<(), BoxDynError> {
    match (handler.0)(message).await {
        Delivery::Done => Ok(()),
        Delivery::Redeliver => Err(NotFinished.into()),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("job not finished; deliver it again later")]
struct NotFinished;

/// The catch-panic layer's panic handler (a `Box` because that is the layer's signature).
#[allow(clippy::borrowed_box)]
fn to_panic_error(panic: &Box<dyn Any + Send + 'static>) -> PanicError {
    PanicError(panic_text(panic.as_ref()))
}

/// The API's "work queued" nudge wakes the idle consumer so a job starts within milliseconds instead of at the
/// next heartbeat.
async fn wake_on_nudge(
    mut nudges: mpsc::Receiver<Signal>,
    started: Arc<Mutex<Option<WorkerContext>>>,
) {
    while let Some(signal) = nudges.recv().await {
        if signal != Signal::Wake {
            continue;
        }
        let worker = started.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // apalis offers no public "poll now"; a pause/resume pair wakes the consumer.
        if let Some(worker) = worker.filter(|w| w.is_running()) {
            let _ = worker.pause();
            let _ = worker.resume();
        }
    }
}

/// Keeps apalis' scheduled set from piling up past what its fetch script can promote (see PROMOTE_DUE).
async fn promote_due_loop(queue: RedisQueue, stop: CancellationToken) {
    let mut ticks = ticker::every(PROMOTE_EVERY, &stop);
    while ticks.next().await {
        match queue.promote_due().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(moved = n, "promoted a pile-up of due queue messages"),
            Err(e) => tracing::debug!(error = %e, "could not promote due messages; will retry"),
        }
    }
}

/// apalis-redis keeps each finished message's payload and metadata until vacuumed; without this Redis grows with
/// every job ever run. The database keeps the real record, so an hour of queue history is plenty.
async fn vacuum_loop(mut storage: RedisStorage<JobMessage>, stop: CancellationToken) {
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

/// Reports a panic that the catch-panic layer inside it turned into an error, naming the job (the layer's own
/// handler sees only the panic), and marks the task failed so that apalis-redis, once it acknowledges (see the
/// module doc), delivers it again later. Without that mark the panic would bury the message: apalis-redis
/// acknowledges with the status its lifecycle service records, which sits inside every layer, so a task that
/// panicked past it is left `Running`, and the ack script sends any status but `Done`, `Failed` or `Pending` to
/// the dead set.
#[derive(Clone)]
struct ReportPanics<S>(S);

impl<S> Service<Task<JobMessage>> for ReportPanics<S>
where
    S: Service<Task<JobMessage>, Error = BoxDynError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, task: Task<JobMessage>) -> Self::Future {
        let message = task.args.clone();
        let execution = task.ctx().clone();
        let result = self.0.call(task);
        Box::pin(async move {
            let result = result.await;
            if let Err(e) = &result
                && let Some(panic) = e.downcast_ref::<PanicError>()
            {
                report_panic(&message, &panic.0);
                execution.raw_status().store(Status::Failed);
            }
            result
        })
    }
}

#[cfg(test)]
#[path = "redis_tests.rs"]
mod tests;
