//! The job queue: apalis on Redis for deployments, or a channel inside the process for the standalone mode.
//! Either way a message is only a wake-up for a job already recorded in the database, so a lost message costs
//! latency (the reconciler pushes it again), never the job.
//!
//! Callers never learn which backend they hold. The API pushes and publishes; a worker hands
//! [`JobQueue::consume`] an async handler that says per message whether it must come back later
//! ([`Delivery::Redeliver`]) and the queue does the rest its own way (apalis' worker, or a semaphore loop); health
//! checks call [`JobQueue::ping`] and list it under [`JobQueue::health_name`]. Both backends catch a panicking
//! handler, log it with the job's id, count it (`imagegen_job_panics_total`) and treat it as `Redeliver`.
//!
//! Files: `message` (the types both backends share), `redis` (all of apalis), `local` (in process), `signals`
//! (job events and work nudges), `history` (each job's recent events, for resumable event streams).

pub mod history;
mod local;
mod message;
pub mod partials;
mod redis;
pub mod signals;

pub use self::redis::redis_connection;
pub use message::{ConsumerSettings, Delivery, JobMessage, QueueError};

use self::redis::RedisQueue;
use local::LocalQueue;
use signals::{JobEvent, Signal};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The job queue (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Redis(Box<RedisQueue>),
    Local(Arc<LocalQueue>),
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Redis(q) => f
                .debug_struct("JobQueue")
                .field("redis", &q.name())
                .finish(),
            Backend::Local(_) => f.debug_struct("JobQueue").field("local", &true).finish(),
        }
    }
}

impl JobQueue {
    /// A queue on Redis. Without `client` (tests that only push) [`JobQueue::signals`] hears nothing.
    pub fn new(conn: ::redis::aio::ConnectionManager, queue_name: &str) -> Self {
        Self::redis(None, conn, queue_name)
    }

    pub fn redis(
        client: Option<::redis::Client>,
        conn: ::redis::aio::ConnectionManager,
        queue_name: &str,
    ) -> Self {
        Self {
            backend: Backend::Redis(Box::new(RedisQueue::new(client, conn, queue_name))),
        }
    }

    /// A queue inside this process (standalone mode).
    pub fn local() -> Self {
        Self {
            backend: Backend::Local(Arc::new(LocalQueue::new())),
        }
    }

    /// Where the queue lives, for logs: `redis` or `in-process`.
    pub fn describe(&self) -> &'static str {
        match &self.backend {
            Backend::Redis(_) => "redis",
            Backend::Local(_) => "in-process",
        }
    }

    /// The component name under which health reports list [`JobQueue::ping`]: `redis` (the check is Redis
    /// answering), or `queue` for the in-process queue, which is no Redis.
    pub fn health_name(&self) -> &'static str {
        match &self.backend {
            Backend::Redis(_) => "redis",
            Backend::Local(_) => "queue",
        }
    }

    pub async fn push(&self, message: JobMessage) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Redis(q) => q.push(message).await,
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
            Backend::Redis(q) => q.push_delayed(message, delay).await,
            Backend::Local(q) => {
                q.push_delayed(message, delay);
                Ok(())
            }
        }
    }

    /// Jobs waiting for a worker (ready now or scheduled for a retry).
    pub async fn depth(&self) -> Result<u64, QueueError> {
        match &self.backend {
            Backend::Redis(q) => q.depth().await,
            Backend::Local(q) => Ok(q.depth()),
        }
    }

    /// Tells every API process's waiters and event streams (and every worker) that a job changed (see
    /// [`signals`]), keeping the event in the job's history (see [`history`]); returns it with its ids.
    pub async fn publish_event(&self, event: &JobEvent) -> Result<JobEvent, QueueError> {
        match &self.backend {
            Backend::Redis(q) => q.publish_event(event).await,
            Backend::Local(q) => Ok(q.publish_event(event)),
        }
    }

    /// The kept events of a job or batch after `after` (all of them without it), oldest first.
    pub async fn history(
        &self,
        stream: history::Stream,
        after: Option<&str>,
    ) -> Result<Vec<JobEvent>, QueueError> {
        match &self.backend {
            Backend::Redis(q) => q.history(stream, after).await,
            Backend::Local(q) => Ok(q.history.read(stream, after)),
        }
    }

    /// Whether the queue answers (the in-process one always does).
    pub async fn ping(&self) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Redis(q) => q.ping().await,
            Backend::Local(_) => Ok(()),
        }
    }

    /// Publishes a partial picture of a running job (best effort: see `partials`).
    pub async fn publish_partial(&self, frame: &partials::PartialFrame) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Redis(q) => q.publish_partial(frame).await,
            Backend::Local(q) => {
                q.partials.publish(frame);
                Ok(())
            }
        }
    }

    /// Listens to one job's partial pictures until `stop` (or the receiver is dropped); subscribed on return.
    pub async fn partials(
        &self,
        job: crate::domain::JobId,
        stop: CancellationToken,
    ) -> Result<mpsc::Receiver<partials::PartialFrame>, QueueError> {
        match &self.backend {
            Backend::Redis(q) => q.partials(job, stop).await,
            Backend::Local(q) => Ok(q.partials.subscribe(job, stop)),
        }
    }

    /// Job events as a stream that reconnects by itself, until `stop`. Every (re)subscription starts with
    /// [`Signal::Connected`]. Work nudges are not in it: only the queue's own consumer listens for those.
    pub fn signals(&self, stop: CancellationToken) -> mpsc::Receiver<Signal> {
        match &self.backend {
            Backend::Redis(q) => q.signals(stop),
            Backend::Local(q) => q.signals(stop),
        }
    }

    /// Hands messages to `handler`, up to `settings.concurrency` at once, until `stop`; then takes no new one and
    /// returns once the running ones have finished. A message the handler answers [`Delivery::Redeliver`] to, or
    /// panics on, comes back after a delay (in process; on Redis not yet, see `queue::redis` on acknowledgements).
    /// On Redis this also keeps the queue healthy while it runs (wakes on work nudges, promotes pile-ups, vacuums
    /// old messages) and rebuilds the consumer after Redis trouble.
    pub async fn consume<H, F>(
        &self,
        settings: ConsumerSettings,
        handler: H,
        stop: CancellationToken,
    ) where
        H: Fn(JobMessage) -> F + Send + Sync + 'static,
        F: Future<Output = Delivery> + Send + 'static,
    {
        let handler: message::Handler = Arc::new(move |message| Box::pin(handler(message)));
        match &self.backend {
            Backend::Redis(q) => q.consume(settings, handler, stop).await,
            Backend::Local(q) => q.consume(settings, handler, stop).await,
        }
    }
}
