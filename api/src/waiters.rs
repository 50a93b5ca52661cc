//! Waiting without polling. One subscription per API process (Redis pub/sub, or in process) receives job events and wakes the requests
//! waiting on those jobs (wait mode, long-polls) and feeds the live event streams (`event_streams`). After every (re)subscription all waiters are woken once so they
//! re-read Postgres: an event missed while disconnected costs one read, never a hang.

use crate::event_streams::EventStreams;
use imagegen_shared::db::JobParts;
use imagegen_shared::domain::JobId;
use imagegen_shared::queue::signals::{Answer, Signal};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// The waiters of one job: (waiter id, the waiter).
type JobWaiters = Vec<(u64, Arc<Waiter>)>;

/// One waiting request: woken when its job (or one of its batch's) ends, and handed the job as its success wrote
/// it when the event carried that (a waiter on one job only: a batch reads its jobs together).
pub struct Waiter {
    pub notify: Notify,
    one_job: bool,
    answer: Mutex<Option<Answer>>,
}

impl Waiter {
    /// The job `id` of `owner` as its success's event brought it, if it did since the last look.
    pub fn answer(&self, owner: &str, id: JobId) -> Option<JobParts> {
        let answer = self
            .answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let job = &answer.0.job;
        (job.id == id && job.owner.as_str() == owner).then(|| Arc::unwrap_or_clone(answer.0))
    }
}

#[derive(Default)]
pub struct Waiters {
    /// A waiter on a batch appears under each of its jobs.
    map: Mutex<HashMap<JobId, JobWaiters>>,
    /// Live event streams, fed from the same subscription.
    pub streams: Arc<EventStreams>,
    /// Rung when a job ends or starts: the webhook dispatcher looks for new deliveries at once.
    pub webhook_bell: Arc<Notify>,
    next_id: AtomicU64,
    subscribed: AtomicBool,
}

/// A registration; dropping it removes the waiter.
pub struct WaitGuard {
    waiters: Arc<Waiters>,
    id: u64,
    jobs: Vec<JobId>,
    pub waiter: Arc<Waiter>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock().unwrap_or_else(|e| e.into_inner());
        for job in &self.jobs {
            if let Some(list) = map.get_mut(job) {
                list.retain(|(id, _)| *id != self.id);
                if list.is_empty() {
                    map.remove(job);
                }
            }
        }
    }
}

impl Waiters {
    pub fn register(self: &Arc<Self>, jobs: &[JobId]) -> WaitGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waiter = Arc::new(Waiter {
            notify: Notify::new(),
            one_job: jobs.len() == 1,
            answer: Mutex::new(None),
        });
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for job in jobs {
            map.entry(*job).or_default().push((id, waiter.clone()));
        }
        WaitGuard {
            waiters: self.clone(),
            id,
            jobs: jobs.to_vec(),
            waiter,
        }
    }

    /// Wakes the waiters of `job`, handing `answer` (a success's job as written) to those waiting on it alone.
    pub fn wake(&self, job: JobId, answer: Option<&Answer>) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = map.get(&job) {
            for (_, w) in list {
                if let Some(answer) = answer.filter(|_| w.one_job) {
                    *w.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer.clone());
                }
                w.notify.notify_one();
            }
        }
    }

    pub fn wake_all(&self) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for (_, w) in map.values().flatten() {
            w.notify.notify_one();
        }
    }

    /// Requests currently waiting (for metrics).
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// Wakes waiters from the queue's signals until `stop`. The signals reconnect by themselves; after every
    /// (re)connection every waiter looks again.
    pub async fn listen(
        self: Arc<Self>,
        mut signals: mpsc::Receiver<Signal>,
        stop: CancellationToken,
    ) {
        loop {
            let signal = tokio::select! {
                _ = stop.cancelled() => return,
                signal = signals.recv() => signal,
            };
            match signal {
                Some(Signal::Connected) => {
                    self.subscribed.store(true, Ordering::Relaxed);
                    tracing::info!("subscribed to job events");
                    // Anything published while we were away is lost: have every waiter look again.
                    self.wake_all();
                    self.streams.catch_up_all();
                }
                Some(Signal::Disconnected) => {
                    self.subscribed.store(false, Ordering::Relaxed);
                    tracing::warn!("job event subscription lost; reconnecting");
                }
                Some(Signal::Event(mut event)) => {
                    // Not counted here: imagegen_jobs_finished_total is counted once, by whoever ended the job.
                    // Waiters care only for the end; progress is for event streams, which never see the answer.
                    let answer = event.answer.take();
                    if event.is_terminal() {
                        self.wake(event.job_id, answer.as_ref());
                    }
                    if event.is_terminal() || event.progress.is_none() {
                        self.webhook_bell.notify_one();
                    }
                    self.streams.dispatch(&event);
                }
                Some(Signal::Wake) => {}
                None => {
                    self.subscribed.store(false, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_only_the_jobs_waiters_and_cleans_up() {
        let w = Arc::new(Waiters::default());
        let (a, b) = (JobId::new(), JobId::new());
        let ga = w.register(&[a]);
        let gab = w.register(&[a, b]);
        assert_eq!(w.len(), 3);
        w.wake(b, None);
        tokio::time::timeout(Duration::from_millis(100), gab.waiter.notify.notified())
            .await
            .expect("batch waiter woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), ga.waiter.notify.notified())
                .await
                .is_err()
        );
        drop(ga);
        drop(gab);
        assert!(w.is_empty());
    }
}
