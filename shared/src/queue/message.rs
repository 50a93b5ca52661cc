//! What crosses the queue, whichever backend carries it: the message, the handler's verdict on it, the consumer's
//! settings and the queue's error. Both backends (`redis`, `local`) and [`super::JobQueue`] build on these; this
//! file imports none of them.

use crate::domain::JobId;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::sync::Arc;

/// Counts jobs whose handler panicked (caught; the message comes back later).
const PANICS_METRIC: &str = "imagegen_job_panics_total";

/// A wake-up for one job. It carries the job id and the correlation id, never the request itself, which lives in
/// the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: JobId,
    pub correlation_id: String,
}

/// What a consumer's handler says about a message it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Finished with it (the job ended, was not ours to run, or was handed back with a fresh message).
    Done,
    /// Not finished (database trouble, held by another worker, released at shutdown): deliver it again later.
    Redeliver,
}

/// How one process consumes the queue (see [`super::JobQueue::consume`]).
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// This process's name in the queue (apalis registers it and tracks its heartbeats).
    pub worker_id: String,
    /// Messages handled at once.
    pub concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("could not enqueue job: {0}")]
    Push(String),
}

/// The handler a consumer runs per message, type-erased so both backends take the same one.
pub(super) type Handler = Arc<dyn Fn(JobMessage) -> BoxFuture<'static, Delivery> + Send + Sync>;

/// What a caught panic said, for the log.
pub(super) fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Logs and counts a handler that panicked on `message` (both backends catch the panic and deliver the message
/// again later).
pub(super) fn report_panic(message: &JobMessage, panic: &str) {
    metrics::counter!(PANICS_METRIC).increment(1);
    tracing::error!(job_id = %message.job_id, correlation_id = %message.correlation_id, panic,
        "job handler panicked; the queue will deliver the job again");
}
