//! The open live event streams of this API process (`GET /api/v1/jobs/{id}/events`, `.../batches/{id}/events`),
//! fed by the process's one subscription to job events (see `waiters`): no stream reads the database to learn of
//! a change. A stream whose buffer is full, or that may have missed events while the subscription was down, is
//! told to catch up from the job's event history (`queue::history`) after the last id it sent.

use imagegen_shared::queue::history::Stream;
use imagegen_shared::queue::signals::JobEvent;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Events buffered per stream before it must catch up from the history instead.
const STREAM_BUFFER: usize = 16;

/// One open stream's end of the registry.
struct Listener {
    id: u64,
    events: Arc<Inbox>,
    /// Set when an event could not be buffered or the subscription was re-established: read the history.
    behind: Arc<CatchUp>,
}

/// A stream's buffered events. Not a tokio mpsc channel: that allocates a block of 32 slots per channel up front,
/// a few KiB per open stream; this queue is empty (unallocated) while nothing is pending, which is nearly always.
#[derive(Default)]
pub struct Inbox {
    queue: Mutex<VecDeque<JobEvent>>,
    bell: Notify,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<JobEvent>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Buffers `event`; `false` when the buffer is full.
    fn push(&self, event: &JobEvent) -> bool {
        let mut queue = self.lock();
        if queue.len() >= STREAM_BUFFER {
            return false;
        }
        queue.push_back(event.clone());
        drop(queue);
        self.bell.notify_one();
        true
    }

    /// The next event. Cancel-safe: an event is taken only when it is returned.
    pub async fn recv(&self) -> JobEvent {
        loop {
            if let Some(event) = self.lock().pop_front() {
                return event;
            }
            // A push between the check and here leaves a permit, so this returns at once.
            self.bell.notified().await;
        }
    }
}

/// Whether a stream must catch up from the history, and the bell that says so.
#[derive(Default)]
pub struct CatchUp {
    flag: AtomicBool,
    bell: Notify,
}

impl CatchUp {
    fn raise(&self) {
        self.flag.store(true, Ordering::Release);
        self.bell.notify_one();
    }

    /// Whether a catch-up was asked for since the last call.
    pub fn take(&self) -> bool {
        self.flag.swap(false, Ordering::AcqRel)
    }

    /// Waits until a catch-up is asked for.
    pub async fn asked(&self) {
        self.bell.notified().await;
    }
}

#[derive(Default)]
pub struct EventStreams {
    map: Mutex<HashMap<Stream, Vec<Listener>>>,
    next_id: AtomicU64,
}

/// A stream's registration; dropping it removes the stream.
pub struct Subscription {
    streams: Arc<EventStreams>,
    key: Stream,
    id: u64,
    pub events: Arc<Inbox>,
    pub behind: Arc<CatchUp>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.streams.lock();
        if let Some(list) = map.get_mut(&self.key) {
            list.retain(|l| l.id != self.id);
            if list.is_empty() {
                map.remove(&self.key);
            }
        }
        metrics::gauge!("imagegen_event_streams_open").decrement(1.0);
    }
}

impl EventStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Stream, Vec<Listener>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream of `key`'s events; what is published from now on reaches it.
    pub fn subscribe(self: &Arc<Self>, key: Stream) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let inbox = Arc::new(Inbox::default());
        let behind = Arc::new(CatchUp::default());
        self.lock().entry(key).or_default().push(Listener {
            id,
            events: inbox.clone(),
            behind: behind.clone(),
        });
        metrics::gauge!("imagegen_event_streams_open").increment(1.0);
        Subscription {
            streams: self.clone(),
            key,
            id,
            events: inbox,
            behind,
        }
    }

    /// Hands `event` to the streams of its job and of its batch.
    pub fn dispatch(&self, event: &JobEvent) {
        let map = self.lock();
        let keys =
            std::iter::once(Stream::Job(event.job_id)).chain(event.batch_id.map(Stream::Batch));
        for key in keys {
            for listener in map.get(&key).into_iter().flatten() {
                if !listener.events.push(event) {
                    listener.behind.raise();
                }
            }
        }
    }

    /// Every stream may have missed events (the subscription was re-established): all catch up.
    pub fn catch_up_all(&self) {
        for listener in self.lock().values().flatten() {
            listener.behind.raise();
        }
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagegen_shared::domain::{BatchId, JobId, JobStatus};

    #[tokio::test]
    async fn events_reach_their_job_and_batch_streams_and_a_full_one_catches_up() {
        let streams = Arc::new(EventStreams::default());
        let (job, batch) = (JobId::new(), BatchId::new());
        let by_job = streams.subscribe(Stream::Job(job));
        let by_batch = streams.subscribe(Stream::Batch(batch));
        let other = streams.subscribe(Stream::Job(JobId::new()));
        let event = JobEvent::status(job, Some(batch), JobStatus::Running);
        streams.dispatch(&event);
        assert_eq!(by_job.events.recv().await, event);
        assert_eq!(by_batch.events.recv().await, event);
        for _ in 0..=STREAM_BUFFER {
            streams.dispatch(&event);
        }
        assert!(by_job.behind.take(), "a full buffer asks for a catch-up");
        // What fitted is there, in order, and a recv that waits wakes for the next push.
        for _ in 0..STREAM_BUFFER {
            assert_eq!(by_job.events.recv().await, event);
        }
        let waiting = tokio::spawn({
            let inbox = by_job.events.clone();
            async move { inbox.recv().await }
        });
        tokio::task::yield_now().await;
        let later = JobEvent::status(job, Some(batch), JobStatus::Succeeded);
        streams.dispatch(&later);
        assert_eq!(
            tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
                .await
                .expect("woken")
                .expect("task"),
            later
        );
        assert!(!other.behind.take());
        streams.catch_up_all();
        assert!(other.behind.take());
        assert_eq!(streams.len(), 3);
        drop((by_job, by_batch, other));
        assert!(streams.is_empty());
    }
}
