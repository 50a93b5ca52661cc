//! The queue's signals beside its messages: job events (a job changed state) and work nudges (work was queued).
//! Workers publish an event when a job reaches a terminal state (the API when a client cancels); each API process
//! holds one subscription and wakes its waiters, each worker stops a canceled job it runs. Events are hints: a
//! waiter re-reads the database, so a lost event costs a read, never a wrong answer. The one exception is what a
//! success's event carries ([`Answer`]): the job as that success committed it, which a read would find unchanged.
//!
//! On Redis they travel over pub/sub (`{queue}:events`, `{queue}:wake`); in process over a broadcast channel.
//! Subscribe with [`super::JobQueue::signals`], publish with [`super::JobQueue::publish_event`].

use crate::db::JobParts;
use crate::domain::{BatchId, JobId, JobStatus};
use futures::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// Signals buffered for a slow subscriber.
const SIGNAL_BUFFER: usize = 1024;

/// A job changed: its status now, and (for live event streams) what happened. Ids are given on publish, from the
/// job's (and its batch's) event history (see `history`), so a stream can resume after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<BatchId>,
    /// What happened beyond the status (absent: a bare status change, such as the end of the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// This event's id in the job's history (`<ms>-<seq>`); absent when it was published without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// This event's id in its batch's history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_event_id: Option<String>,
    /// A success's end event: the job as the worker's success wrote it, so the API's waiters answer without reading
    /// it back. Travels beside the event on publish only: never kept in a history nor shown to event streams.
    #[serde(skip)]
    pub answer: Option<Answer>,
}

/// A succeeded job with its images and charges, exactly as `db::jobs::complete_succeeded` wrote them (the same
/// parts `db::job_parts::get_job_parts` would read back). Shared by every waiter of the job; equal only to itself.
#[derive(Debug, Clone)]
pub struct Answer(pub Arc<JobParts>);

impl Answer {
    pub fn new(parts: JobParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl PartialEq for Answer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Answer {}

/// An event as published on Redis: the event's fields, and a success's answer beside them.
#[derive(Deserialize)]
struct Published {
    #[serde(flatten)]
    event: JobEvent,
    #[serde(default)]
    answer: Option<JobParts>,
}

/// The event a published message carries, with its answer; an answer this process cannot read (written by another
/// version) is dropped and the event kept: its waiters read the job instead.
fn parse_published(payload: &[u8]) -> Result<JobEvent, serde_json::Error> {
    match serde_json::from_slice::<Published>(payload) {
        Ok(Published { mut event, answer }) => {
            event.answer = answer.map(Answer::new);
            Ok(event)
        }
        Err(e) => {
            let event = serde_json::from_slice::<JobEvent>(payload)?;
            tracing::debug!(error = %e, "job event's answer not readable; its waiters read the job");
            Ok(event)
        }
    }
}

impl JobEvent {
    /// A bare status change of `job_id` (of batch `batch_id`, if any).
    pub fn status(job_id: JobId, batch_id: Option<BatchId>, status: JobStatus) -> Self {
        Self {
            job_id,
            status,
            batch_id,
            progress: None,
            id: None,
            batch_event_id: None,
            answer: None,
        }
    }

    /// A job's progress: running, or back in the queue when it was requeued.
    pub fn progress(job_id: JobId, batch_id: Option<BatchId>, progress: Progress) -> Self {
        let status = match progress {
            Progress::Requeued { .. } => JobStatus::Queued,
            _ => JobStatus::Running,
        };
        Self {
            progress: Some(progress),
            ..Self::status(job_id, batch_id, status)
        }
    }

    /// Whether this event ends the job (what waiters wake for).
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

/// What a running (or requeued) job is doing, for live event streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Progress {
    /// A provider call starts: `route` is `provider:model`, `attempt` the job's call count.
    Attempt { route: String, attempt: i32 },
    /// That call failed and the same route is tried again after `retry_in_ms`.
    Retrying {
        route: String,
        attempt: i32,
        code: String,
        message: String,
        retry_in_ms: u64,
    },
    /// The job moves on to another route.
    Failover { from: String, to: String },
    /// The job went back to the queue (a busy or paused provider, a worker stopping) for about `retry_in_ms`.
    Requeued { reason: String, retry_in_ms: u64 },
}

/// What a subscriber to the queue's signals hears (see [`super::JobQueue::signals`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// (Re)subscribed: anything published before may have been missed, so re-read the database.
    Connected,
    /// The subscription is gone and being re-established.
    Disconnected,
    /// A job changed state.
    Event(JobEvent),
    /// Work was queued: an idle consumer should look now (heard only by the consumer's own subscription).
    Wake,
}

/// The pub/sub channel of job events.
pub(super) fn channel(queue_name: &str) -> String {
    format!("{queue_name}:events")
}

/// The pub/sub channel on which the API nudges idle workers after queueing work.
pub(super) fn wake_channel(queue_name: &str) -> String {
    format!("{queue_name}:wake")
}

/// Records a job event in its history and publishes it on Redis (see `history`); returns it with its ids.
pub(super) async fn publish(
    conn: &ConnectionManager,
    queue_name: &str,
    event: &JobEvent,
) -> Result<JobEvent, redis::RedisError> {
    super::history::publish_redis(conn, queue_name, &channel(queue_name), event).await
}

/// Which channels a Redis subscription listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listen {
    /// Job events only (API waiters, a worker's cancels): nobody there acts on a nudge, and each one heard would
    /// wake the process for nothing, once per job queued.
    Events,
    /// Work nudges only (the Redis consumer's wake-up).
    Wake,
}

/// Signals from Redis pub/sub, reconnecting by itself, until `stop`.
pub(super) fn subscribe_redis(
    client: redis::Client,
    queue_name: &str,
    listen: Listen,
    stop: CancellationToken,
) -> mpsc::Receiver<Signal> {
    let (tx, rx) = mpsc::channel(SIGNAL_BUFFER);
    tokio::spawn(redis_signals(
        client,
        queue_name.to_owned(),
        listen,
        tx,
        stop,
    ));
    rx
}

/// Signals of the in-process queue (job events only: its consumer needs no nudge), until `stop`.
pub(super) fn subscribe_local(
    events: &broadcast::Sender<JobEvent>,
    stop: CancellationToken,
) -> mpsc::Receiver<Signal> {
    let (tx, rx) = mpsc::channel(SIGNAL_BUFFER);
    let mut events = events.subscribe();
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
    rx
}

/// One pub/sub connection on the events and/or wake channels; every (re)subscription starts with
/// [`Signal::Connected`].
async fn redis_signals(
    client: redis::Client,
    queue_name: String,
    listen: Listen,
    tx: mpsc::Sender<Signal>,
    stop: CancellationToken,
) {
    let events_channel = channel(&queue_name);
    let wake = wake_channel(&queue_name);
    let channels: Vec<&String> = match listen {
        Listen::Events => vec![&events_channel],
        Listen::Wake => vec![&wake],
    };
    let mut delay = Duration::from_millis(200);
    loop {
        let connected = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channels).await?;
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
                                match parse_published(msg.get_payload_bytes()) {
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
