//! Adaptive gathering of concurrent calls into one (issue 19): what callers ask for while the flushes in flight are
//! running is done together in a later flush, one statement or one script instead of one round trip each. Each
//! caller still gets its own answer.
//!
//! Without a timer: a call that finds a free flush slot and nobody waiting runs its own flush at once, in its own
//! task (a lone call is neither delayed nor handed to another thread). Calls that find every slot taken wait; when a
//! slot frees, a spawned task flushes them, up to `max` items at a time. A waiting call is only ever flushed by such
//! a task, never by another caller, so a caller that goes away (its client hung up) strands nobody. More than one
//! slot keeps one slow flush (a descheduled connection on a busy machine) from holding up everyone behind it.

use futures::future::BoxFuture;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::oneshot;

/// Does one flush: given the items in arrival order, gives one answer per item in the same order.
pub type FlushFn<I, O> = Box<dyn Fn(Vec<I>) -> BoxFuture<'static, Vec<O>> + Send + Sync>;

/// The flush stopped before answering (it panicked, or gave fewer answers than items).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {0} flush stopped before answering")]
pub struct Unanswered(pub &'static str);

pub struct Gather<I, O> {
    /// Names the histogram's series (`imagegen_gathered_items{gather=...}`) and errors.
    name: &'static str,
    /// Most items in one flush.
    max: usize,
    /// Most flushes running at once.
    slots: usize,
    flush: FlushFn<I, O>,
    state: Mutex<Gathered<I, O>>,
}

struct Gathered<I, O> {
    waiting: Vec<(I, oneshot::Sender<O>)>,
    /// Flushes running now (a caller's own or a task's).
    in_flight: usize,
    /// Flushes so far and items in them (tests and the bench read how well calls were gathered).
    flushes: u64,
    items: u64,
}

impl<I: Send + 'static, O: Send + 'static> Gather<I, O> {
    pub fn new(name: &'static str, max: usize, slots: usize, flush: FlushFn<I, O>) -> Arc<Self> {
        Arc::new(Self {
            name,
            max: max.max(1),
            slots: slots.max(1),
            flush,
            state: Mutex::new(Gathered {
                waiting: Vec::new(),
                in_flight: 0,
                flushes: 0,
                items: 0,
            }),
        })
    }

    /// Does `item` with whatever else is asked for now.
    pub async fn call(self: &Arc<Self>, item: I) -> Result<O, Unanswered> {
        let waiting = {
            let mut state = self.lock();
            if state.in_flight < self.slots && state.waiting.is_empty() {
                state.in_flight += 1;
                Err(item)
            } else {
                let (answer, answered) = oneshot::channel();
                state.waiting.push((item, answer));
                Ok(answered)
            }
        };
        match waiting {
            Ok(answered) => answered.await.map_err(|_| Unanswered(self.name)),
            // Our own flush. The slot goes back however it ends (a caller dropped mid-flush included), and whoever
            // waits meanwhile is flushed by a task then.
            Err(item) => {
                let _slot = Slot(self);
                self.run(vec![item])
                    .await
                    .pop()
                    .ok_or(Unanswered(self.name))
            }
        }
    }

    /// (flushes, items) so far.
    pub fn stats(&self) -> (u64, u64) {
        let state = self.lock();
        (state.flushes, state.items)
    }

    fn lock(&self) -> MutexGuard<'_, Gathered<I, O>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn run(&self, items: Vec<I>) -> Vec<O> {
        {
            let mut state = self.lock();
            state.flushes += 1;
            state.items += items.len() as u64;
        }
        metrics::histogram!("imagegen_gathered_items", "gather" => self.name)
            .record(items.len() as f64);
        (self.flush)(items).await
    }

    /// Takes a slot for the waiting calls if one is free and any wait; the caller holds the lock.
    fn start_task_if_waiting(self: &Arc<Self>, state: &mut Gathered<I, O>) {
        if state.waiting.is_empty() || state.in_flight >= self.slots {
            return;
        }
        // Outside a runtime (a runtime shutting down) nothing can run the flush: the waiting calls are dropped and
        // answered `Unanswered`.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            state.waiting.clear();
            return;
        };
        state.in_flight += 1;
        runtime.spawn(self.clone().flush_waiting());
    }

    /// A task's flushes: the waiting calls, `max` at a time, until none wait.
    async fn flush_waiting(self: Arc<Self>) {
        let _slot = Slot(&self);
        loop {
            let (items, answers): (Vec<I>, Vec<oneshot::Sender<O>>) = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    return;
                }
                let n = state.waiting.len().min(self.max);
                state.waiting.drain(..n).unzip()
            };
            let outcomes = self.run(items).await;
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(outcome);
            }
        }
    }
}

/// For each item, whether it is the first in `items` with its key: a flush that writes one row per key takes the
/// first and leaves the others to be done alone, after it.
pub fn first_of_each<T, K: std::hash::Hash + Eq>(items: &[T], key: impl Fn(&T) -> K) -> Vec<bool> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items.iter().map(|item| seen.insert(key(item))).collect()
}

/// A flush slot taken; given back on drop (a flush that ended, panicked or was dropped), starting a task for the
/// calls that wait.
struct Slot<'a, I: Send + 'static, O: Send + 'static>(&'a Arc<Gather<I, O>>);

impl<I: Send + 'static, O: Send + 'static> Drop for Slot<'_, I, O> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        self.0.start_task_if_waiting(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    /// Doubles each item; each flush first takes a permit from `gate`, so the test decides when flushes end, and
    /// the flush numbered `panic_on` (from 0) panics instead.
    fn doubling(
        max: usize,
        slots: usize,
        sizes: Arc<Mutex<Vec<usize>>>,
        gate: Arc<Semaphore>,
        panic_on: Option<usize>,
    ) -> Arc<Gather<u32, u32>> {
        let flushes = AtomicUsize::new(0);
        Gather::new(
            "test",
            max,
            slots,
            Box::new(move |items: Vec<u32>| {
                sizes.lock().expect("sizes").push(items.len());
                let panics = panic_on == Some(flushes.fetch_add(1, Ordering::SeqCst));
                let gate = gate.clone();
                Box::pin(async move {
                    gate.acquire().await.expect("open").forget();
                    assert!(!panics, "this flush fails");
                    items.into_iter().map(|i| i * 2).collect()
                })
            }),
        )
    }

    fn spawn_call(
        gather: &Arc<Gather<u32, u32>>,
        i: u32,
    ) -> tokio::task::JoinHandle<Result<u32, Unanswered>> {
        let gather = gather.clone();
        tokio::spawn(async move { gather.call(i).await })
    }

    async fn until(mut done: impl FnMut() -> bool) {
        while !done() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_lone_call_is_flushed_at_once_and_gets_its_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gather = doubling(8, 1, sizes.clone(), Arc::new(Semaphore::new(1)), None);
        assert_eq!(gather.call(21).await, Ok(42));
        assert_eq!(*sizes.lock().expect("sizes"), vec![1]);
    }

    #[tokio::test]
    async fn calls_made_while_every_slot_is_busy_share_the_next_flush_up_to_the_maximum() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let gather = doubling(4, 1, sizes.clone(), gate.clone(), None);
        let first = spawn_call(&gather, 0);
        until(|| !sizes.lock().expect("sizes").is_empty()).await;
        let rest: Vec<_> = (1..=6).map(|i| spawn_call(&gather, i)).collect();
        until(|| gather.lock().waiting.len() == 6).await;
        gate.add_permits(3);
        assert_eq!(first.await.expect("joined"), Ok(0));
        for (i, call) in rest.into_iter().enumerate() {
            assert_eq!(call.await.expect("joined"), Ok(2 * (i as u32 + 1)));
        }
        assert_eq!(*sizes.lock().expect("sizes"), vec![1, 4, 2]);
        assert_eq!(gather.stats(), (3, 7));
    }

    #[tokio::test]
    async fn with_two_slots_a_second_call_does_not_wait_for_the_first_flush() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let gather = doubling(8, 2, sizes.clone(), gate.clone(), None);
        let first = spawn_call(&gather, 1);
        let second = spawn_call(&gather, 2);
        until(|| sizes.lock().expect("sizes").len() == 2).await;
        let third = spawn_call(&gather, 3);
        until(|| gather.lock().waiting.len() == 1).await;
        gate.add_permits(3);
        assert_eq!(first.await.expect("joined"), Ok(2));
        assert_eq!(second.await.expect("joined"), Ok(4));
        assert_eq!(third.await.expect("joined"), Ok(6));
        assert_eq!(*sizes.lock().expect("sizes"), vec![1, 1, 1]);
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_mid_flush_strands_nobody() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let gather = doubling(8, 1, sizes.clone(), gate.clone(), None);
        let gone = spawn_call(&gather, 1);
        until(|| sizes.lock().expect("sizes").len() == 1).await;
        let waiting = spawn_call(&gather, 2);
        until(|| gather.lock().waiting.len() == 1).await;
        gone.abort();
        assert!(gone.await.expect_err("aborted").is_cancelled());
        gate.add_permits(1);
        assert_eq!(waiting.await.expect("joined"), Ok(4));
    }

    #[tokio::test]
    async fn a_flush_that_panics_answers_its_waiting_calls_unanswered_and_the_next_call_starts_anew()
     {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let gather = doubling(8, 1, sizes.clone(), gate.clone(), Some(1));
        let first = spawn_call(&gather, 1);
        until(|| sizes.lock().expect("sizes").len() == 1).await;
        let waiting: Vec<_> = (2..=3).map(|i| spawn_call(&gather, i)).collect();
        until(|| gather.lock().waiting.len() == 2).await;
        gate.add_permits(3);
        assert_eq!(first.await.expect("joined"), Ok(2));
        for call in waiting {
            assert_eq!(call.await.expect("joined"), Err(Unanswered("test")));
        }
        assert_eq!(gather.call(5).await, Ok(10));
        assert_eq!(*sizes.lock().expect("sizes"), vec![1, 2, 1]);
    }
}
