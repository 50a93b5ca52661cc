//! The job queue (apalis-redis). A message only wakes a worker: it carries the job id and the correlation id, never
//! the request itself, which lives in Postgres.

use crate::domain::JobId;
use crate::events::JobEvent;
use apalis::prelude::TaskSink;
use apalis_redis::{ConnectionManager, RedisStorage};
use futures::StreamExt;
use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Bounds on every Redis call, so a dead Redis turns into a quick 503 instead of a hung request.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a worker tells Redis it is alive (an idle worker also looks for due and delayed messages then), and
/// how many beats it may miss before its in-flight jobs go back to the queue: 1 s x 25 = within about 25-30 s.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
pub const MISSED_HEARTBEATS: usize = 25;

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

/// The pub/sub channel on which the API nudges idle workers after queueing work.
pub fn wake_channel(queue_name: &str) -> String {
    format!("{queue_name}:wake")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: JobId,
    pub correlation_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("could not enqueue job: {0}")]
    Push(String),
}

/// A Redis connection that reconnects by itself, created without touching the network so a process can start
/// (and report not-ready) while Redis is down.
pub fn redis_connection(
    url: &str,
) -> Result<(redis::Client, ConnectionManager), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
        .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok((client, manager))
}

/// The apalis-redis settings every process of a deployment must agree on.
pub fn apalis_config(queue_name: &str, batch_size: usize) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(format!("{queue_name}:jobs"))
        .batch_size(batch_size.max(1))
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .missed_heartbeats(MISSED_HEARTBEATS)
        // Results live in Postgres; keeping them in Redis too would only grow memory.
        .persist_results(false)
}

/// The job queue: apalis on Redis for deployments, or an in-process channel for the standalone mode. Either way a
/// message is only a wake-up for a job already recorded in the database, so a lost message costs latency (the
/// reconciler pushes it again), never the job.
#[derive(Clone)]
pub struct JobQueue {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Redis(Box<RedisQueue>),
    Local(Arc<LocalQueue>),
}

#[derive(Clone)]
struct RedisQueue {
    storage: RedisStorage<JobMessage>,
    conn: ConnectionManager,
    client: Option<redis::Client>,
    config: apalis_redis::Config,
    queue_name: String,
}

/// The standalone queue: ready messages in a channel, delayed ones on timers, job events on a broadcast channel.
struct LocalQueue {
    sender: mpsc::UnboundedSender<JobMessage>,
    receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<JobMessage>>,
    /// Messages pushed and not yet taken (delayed ones included).
    depth: AtomicU64,
    events: broadcast::Sender<JobEvent>,
}

/// What a subscriber to the queue's signals hears (see [`JobQueue::signals`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// (Re)subscribed: anything published before may have been missed, so re-read the database.
    Connected,
    /// The subscription is gone and being re-established.
    Disconnected,
    /// A job changed state.
    Event(JobEvent),
    /// Work was queued: an idle consumer should look now.
    Wake,
}

const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// Job events buffered for a slow in-process subscriber before it must re-read everything.
const LOCAL_EVENT_BUFFER: usize = 4096;

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Redis(q) => f
                .debug_struct("JobQueue")
                .field("redis", &q.config.queue)
                .finish(),
            Backend::Local(_) => f.debug_struct("JobQueue").field("local", &true).finish(),
        }
    }
}

impl JobQueue {
    /// A queue on Redis. Without `client` (tests that only push) [`JobQueue::signals`] hears nothing.
    pub fn new(conn: ConnectionManager, queue_name: &str) -> Self {
        Self::redis(None, conn, queue_name)
    }

    pub fn redis(client: Option<redis::Client>, conn: ConnectionManager, queue_name: &str) -> Self {
        let config = apalis_config(queue_name, 1);
        let storage = RedisStorage::new(conn.clone()).with_config(config.clone());
        Self {
            backend: Backend::Redis(Box::new(RedisQueue {
                storage,
                conn,
                client,
                config,
                queue_name: queue_name.to_owned(),
            })),
        }
    }

    /// A queue inside this process (standalone mode).
    pub fn local() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(LOCAL_EVENT_BUFFER);
        Self {
            backend: Backend::Local(Arc::new(LocalQueue {
                sender,
                receiver: tokio::sync::Mutex::new(receiver),
                depth: AtomicU64::new(0),
                events,
            })),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self.backend, Backend::Local(_))
    }

    pub async fn push(&self, message: JobMessage) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Redis(q) => {
                let mut storage = q.storage.clone();
                storage
                    .push(message)
                    .await
                    .map_err(|e| QueueError::Push(e.to_string()))?;
                self.wake_workers().await;
                Ok(())
            }
            Backend::Local(q) => q.push(message),
        }
    }

    /// Queues a message to be taken no earlier than `delay` from now (a job waiting for a busy or paused provider).
    pub async fn push_delayed(
        &self,
        message: JobMessage,
        delay: Duration,
    ) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Redis(q) => {
                let mut storage = q.storage.clone();
                let task = apalis::prelude::TaskBuilder::new(message)
                    .run_after(delay)
                    .build();
                storage
                    .push_task(task)
                    .await
                    .map_err(|e| QueueError::Push(e.to_string()))
            }
            Backend::Local(q) => {
                q.depth.fetch_add(1, Ordering::Relaxed);
                let q = q.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    q.depth.fetch_sub(1, Ordering::Relaxed);
                    // Only fails when the consumer is gone (shutdown); the job is taken up again at the next start.
                    let _ = q.push(message);
                });
                Ok(())
            }
        }
    }

    /// Idle apalis workers only look at the queue again on their next heartbeat; this nudge makes them look now.
    /// Best effort: a lost nudge costs at most one heartbeat interval of latency.
    pub async fn wake_workers(&self) {
        let Backend::Redis(q) = &self.backend else {
            return;
        };
        let mut conn = q.conn.clone();
        let sent: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(wake_channel(&q.queue_name))
            .arg("1")
            .query_async(&mut conn)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "could not nudge workers");
        }
    }

    /// Jobs waiting for a worker (ready now or scheduled for a retry).
    pub async fn depth(&self) -> Result<u64, QueueError> {
        match &self.backend {
            Backend::Redis(q) => {
                let mut conn = q.conn.clone();
                let (active, scheduled): (u64, u64) = redis::pipe()
                    .llen(q.config.active_jobs_list())
                    .zcard(q.config.scheduled_jobs_set())
                    .query_async(&mut conn)
                    .await?;
                Ok(active + scheduled)
            }
            Backend::Local(q) => Ok(q.depth.load(Ordering::Relaxed)),
        }
    }

    /// Tells every API process's waiters (and every worker) that a job changed (see `events`).
    pub async fn publish_event(&self, event: &JobEvent) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Redis(q) => {
                crate::events::publish(&q.conn, &q.queue_name, event).await?;
            }
            Backend::Local(q) => {
                // No subscriber yet is fine: events are hints.
                let _ = q.events.send(event.clone());
            }
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Redis(q) => {
                let mut conn = q.conn.clone();
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                Ok(())
            }
            Backend::Local(_) => Ok(()),
        }
    }

    /// Promotes due messages in bounded chunks (see PROMOTE_DUE) while more than one chunk is due; returns how many
    /// moved. Nothing to do in process.
    pub async fn promote_due(&self) -> Result<u64, QueueError> {
        let Backend::Redis(q) = &self.backend else {
            return Ok(0);
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut conn = q.conn.clone();
        let script = redis::Script::new(PROMOTE_DUE);
        let mut moved = 0u64;
        // Small numbers are apalis' own business; only a pile-up is promoted here, in chunks.
        loop {
            let due: u64 = redis::cmd("ZCOUNT")
                .arg(q.config.scheduled_jobs_set())
                .arg(0)
                .arg(now)
                .query_async(&mut conn)
                .await?;
            if due <= PROMOTE_CHUNK as u64 {
                return Ok(moved);
            }
            let n: u64 = script
                .key(q.config.scheduled_jobs_set())
                .key(q.config.active_jobs_list())
                .key(q.config.signal_list())
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

    /// The Redis connection of a Redis queue (`None` in process).
    pub fn redis_connection(&self) -> Option<ConnectionManager> {
        match &self.backend {
            Backend::Redis(q) => Some(q.conn.clone()),
            Backend::Local(_) => None,
        }
    }

    /// The apalis settings of a Redis queue (`None` in process).
    pub fn config(&self) -> Option<&apalis_redis::Config> {
        match &self.backend {
            Backend::Redis(q) => Some(&q.config),
            Backend::Local(_) => None,
        }
    }

    /// Takes the next message of an in-process queue, waiting for one; `None` on a Redis queue (apalis consumes
    /// those) or once the queue is closed.
    pub async fn next_local(&self) -> Option<JobMessage> {
        let Backend::Local(q) = &self.backend else {
            return None;
        };
        let message = q.receiver.lock().await.recv().await?;
        q.depth.fetch_sub(1, Ordering::Relaxed);
        Some(message)
    }

    /// Job events and work nudges as a stream that reconnects by itself, until `stop`. Every (re)subscription
    /// starts with [`Signal::Connected`].
    pub fn signals(&self, stop: CancellationToken) -> mpsc::Receiver<Signal> {
        let (tx, rx) = mpsc::channel(1024);
        match &self.backend {
            Backend::Redis(q) => {
                if let Some(client) = q.client.clone() {
                    tokio::spawn(redis_signals(client, q.queue_name.clone(), tx, stop));
                }
            }
            Backend::Local(q) => {
                let mut events = q.events.subscribe();
                tokio::spawn(async move {
                    if tx.send(Signal::Connected).await.is_err() {
                        return;
                    }
                    loop {
                        let signal = tokio::select! {
                            _ = stop.cancelled() => return,
                            event = events.recv() => match event {
                                Ok(event) => Signal::Event(event),
                                // Fell behind: some events are gone, so have everyone look again.
                                Err(broadcast::error::RecvError::Lagged(_)) => Signal::Connected,
                                Err(broadcast::error::RecvError::Closed) => return,
                            },
                        };
                        if tx.send(signal).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
        rx
    }
}

impl LocalQueue {
    fn push(&self, message: JobMessage) -> Result<(), QueueError> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        self.sender.send(message).map_err(|_| {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            QueueError::Push("the in-process queue is closed".into())
        })
    }
}

/// The Redis side of [`JobQueue::signals`]: one pub/sub connection on the events and wake channels.
async fn redis_signals(
    client: redis::Client,
    queue_name: String,
    tx: mpsc::Sender<Signal>,
    stop: CancellationToken,
) {
    let events_channel = crate::events::channel(&queue_name);
    let wake = wake_channel(&queue_name);
    let mut delay = Duration::from_millis(200);
    loop {
        let connected = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&[&events_channel, &wake]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        match connected {
            Ok(Ok(pubsub)) => {
                delay = Duration::from_millis(200);
                if tx.send(Signal::Connected).await.is_err() {
                    return;
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    let signal = tokio::select! {
                        _ = stop.cancelled() => return,
                        msg = messages.next() => match msg {
                            Some(msg) if msg.get_channel_name() == events_channel => {
                                match serde_json::from_slice::<JobEvent>(msg.get_payload_bytes()) {
                                    Ok(event) => Signal::Event(event),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "ignoring malformed job event");
                                        continue;
                                    }
                                }
                            }
                            Some(_) => Signal::Wake,
                            None => break,
                        },
                    };
                    if tx.send(signal).await.is_err() {
                        return;
                    }
                }
                if tx.send(Signal::Disconnected).await.is_err() {
                    return;
                }
                tracing::warn!("queue subscription lost; reconnecting");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot subscribe to queue signals"),
            Err(_) => tracing::warn!("timed out subscribing to queue signals"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}
