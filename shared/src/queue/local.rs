//! The standalone mode's queue, inside the process: ready messages in a channel, delayed ones on timers, job
//! events on a broadcast channel. Its consumer is a semaphore loop: up to `concurrency` messages at once, each
//! handled in its own task so a panicking handler ends that task only; a message that could not finish (or
//! panicked) comes back after [`REDELIVER_AFTER`].

use super::message::{ConsumerSettings, Delivery, Handler, JobMessage, QueueError};
use super::message::{panic_text, report_panic};
use super::signals::{self, JobEvent, Signal};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore, broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How soon a message that could not finish is delivered again (apalis-redis waits about as long).
const REDELIVER_AFTER: Duration = Duration::from_secs(1);
/// Job events buffered for a slow in-process subscriber before it must re-read everything.
const EVENT_BUFFER: usize = 4096;

pub(super) struct LocalQueue {
    sender: mpsc::UnboundedSender<JobMessage>,
    receiver: Mutex<mpsc::UnboundedReceiver<JobMessage>>,
    /// Messages pushed and not yet taken (delayed ones included).
    depth: AtomicU64,
    events: broadcast::Sender<JobEvent>,
    pub(super) partials: super::partials::LocalPartials,
    pub(super) history: super::history::LocalHistory,
}

impl LocalQueue {
    pub(super) fn new() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            sender,
            receiver: Mutex::new(receiver),
            depth: AtomicU64::new(0),
            events,
            partials: super::partials::LocalPartials::default(),
            history: super::history::LocalHistory::default(),
        }
    }

    pub(super) fn push(&self, message: JobMessage) -> Result<(), QueueError> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        self.sender.send(message).map_err(|_| {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            QueueError::Push("the in-process queue is closed".into())
        })
    }

    pub(super) fn push_delayed(self: &Arc<Self>, message: JobMessage, delay: Duration) {
        self.depth.fetch_add(1, Ordering::Relaxed);
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.depth.fetch_sub(1, Ordering::Relaxed);
            // Only fails when the consumer is gone (shutdown); the job is taken up again at the next start.
            let _ = queue.push(message);
        });
    }

    pub(super) fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    pub(super) fn publish_event(&self, event: &JobEvent) -> JobEvent {
        let event = self.history.record(event);
        // No subscriber yet is fine: events are hints.
        let _ = self.events.send(event.clone());
        event
    }

    pub(super) fn signals(&self, stop: CancellationToken) -> mpsc::Receiver<Signal> {
        signals::subscribe_local(&self.events, stop)
    }

    /// Takes the next message, waiting for one; `None` once the queue is closed.
    async fn next(&self) -> Option<JobMessage> {
        let message = self.receiver.lock().await.recv().await?;
        self.depth.fetch_sub(1, Ordering::Relaxed);
        Some(message)
    }

    /// Up to `concurrency` messages at once until `stop`; then no new one starts and the running ones finish.
    pub(super) async fn consume(
        self: &Arc<Self>,
        settings: ConsumerSettings,
        handler: Handler,
        stop: CancellationToken,
    ) {
        let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        let mut running = JoinSet::new();
        loop {
            let slot = tokio::select! {
                _ = stop.cancelled() => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            let message = tokio::select! {
                _ = stop.cancelled() => break,
                message = self.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let queue = self.clone();
            let handler = handler.clone();
            running.spawn(async move {
                let _slot = slot;
                if handle(&handler, message.clone()).await == Delivery::Redeliver {
                    queue.push_delayed(message, REDELIVER_AFTER);
                }
            });
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    }
}

/// Runs the handler in a task of its own, so that a panic ends that task alone and comes back here as an error,
/// like apalis' catch-panic layer on Redis: logged and counted, and the message delivered again.
async fn handle(handler: &Handler, message: JobMessage) -> Delivery {
    let run = {
        let (handler, message) = (handler.clone(), message.clone());
        // Called inside the task too, so a handler that panics before its first await is caught as well.
        async move { handler(message).await }
    };
    match tokio::spawn(run).await {
        Ok(delivery) => delivery,
        Err(e) if e.is_panic() => {
            report_panic(&message, &panic_text(e.into_panic().as_ref()));
            Delivery::Redeliver
        }
        // Cancelled: only when the runtime shuts down.
        Err(_) => Delivery::Redeliver,
    }
}
