//! The queue's signals beside its messages: job events (a job changed state) and work nudges (work was queued).
//! Workers publish an event when a job reaches a terminal state (the API when a client cancels); each API process
//! holds one subscription and wakes its waiters, each worker stops a canceled job it runs. Events are hints: a
//! waiter always re-reads the database, so a lost event costs a read, never a wrong answer.
//!
//! On Redis they travel over pub/sub (`{queue}:events`, `{queue}:wake`); in process over a broadcast channel.
//! Subscribe with [`super::JobQueue::signals`], publish with [`super::JobQueue::publish_event`].

use crate::domain::{JobId, JobStatus};
use futures::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// Signals buffered for a slow subscriber.
const SIGNAL_BUFFER: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub status: JobStatus,
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
    /// Work was queued: an idle consumer should look now.
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

/// Publishes a job event on Redis.
pub(super) async fn publish(
    conn: &ConnectionManager,
    queue_name: &str,
    event: &JobEvent,
) -> Result<(), redis::RedisError> {
    let payload = serde_json::to_string(event).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::Client,
            "serialise job event",
            e.to_string(),
        ))
    })?;
    let mut conn = conn.clone();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel(queue_name))
        .arg(payload)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Which channels a Redis subscription listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listen {
    /// Job events and work nudges (API waiters, a worker's cancels).
    All,
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
        Listen::All => vec![&events_channel, &wake],
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
