//! Adaptive gathering of concurrent calls into one (issue 19): what callers ask for while a flush is running is
//! done together in the next flush, one statement or one script instead of one round trip each. Each caller still
//! gets its own answer.
//!
//! Without a timer: a lone call starts a flush at once (it is never delayed); what arrives while a flush runs waits
//! for the next one (at most `max` items). The flush runs in a task of its own, so a caller that goes away (its
//! client hung up) does not strand the others.

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
    max: usize,
    flush: FlushFn<I, O>,
    state: Mutex<Gathered<I, O>>,
}

struct Gathered<I, O> {
    waiting: Vec<(I, oneshot::Sender<O>)>,
    /// A flush task is running; it takes what is waiting when it is done.
    flushing: bool,
    /// Flushes so far and items in them (tests and the bench read how well calls were gathered).
    flushes: u64,
    items: u64,
}

impl<I: Send + 'static, O: Send + 'static> Gather<I, O> {
    pub fn new(name: &'static str, max: usize, flush: FlushFn<I, O>) -> Arc<Self> {
        Arc::new(Self {
            name,
            max: max.max(1),
            flush,
            state: Mutex::new(Gathered {
                waiting: Vec::new(),
                flushing: false,
                flushes: 0,
                items: 0,
            }),
        })
    }

    /// Does `item` with whatever else is asked for now.
    pub async fn call(self: &Arc<Self>, item: I) -> Result<O, Unanswered> {
        let (answer, answered) = oneshot::channel();
        let start_flush = {
            let mut state = self.lock();
            state.waiting.push((item, answer));
            !std::mem::replace(&mut state.flushing, true)
        };
        if start_flush {
            tokio::spawn(self.clone().flush_while_waiting());
        }
        answered.await.map_err(|_| Unanswered(self.name))
    }

    /// (flushes, items) so far.
    pub fn stats(&self) -> (u64, u64) {
        let state = self.lock();
        (state.flushes, state.items)
    }

    fn lock(&self) -> MutexGuard<'_, Gathered<I, O>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn flush_while_waiting(self: Arc<Self>) {
        // Should a flush panic, the guard still lets the next call start one (and the stranded callers get
        // `Unanswered` when their senders are dropped).
        let reset = ResetOnPanic(&self);
        loop {
            let (items, answers): (Vec<I>, Vec<oneshot::Sender<O>>) = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    state.flushing = false;
                    break;
                }
                let n = state.waiting.len().min(self.max);
                state.flushes += 1;
                state.items += n as u64;
                state.waiting.drain(..n).unzip()
            };
            metrics::histogram!("imagegen_gathered_items", "gather" => self.name)
                .record(items.len() as f64);
            let outcomes = (self.flush)(items).await;
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(outcome);
            }
        }
        drop(reset);
    }
}

struct ResetOnPanic<'a, I, O>(&'a Gather<I, O>);

impl<I, O> Drop for ResetOnPanic<'_, I, O> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.flushing = false;
            state.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    /// Doubles each item; each flush first takes a permit from `gate`, so the test decides when flushes end.
    fn doubling(
        max: usize,
        sizes: Arc<Mutex<Vec<usize>>>,
        gate: Arc<Semaphore>,
    ) -> Arc<Gather<u32, u32>> {
        Gather::new(
            "test",
            max,
            Box::new(move |items: Vec<u32>| {
                sizes.lock().unwrap().push(items.len());
                let gate = gate.clone();
                Box::pin(async move {
                    gate.acquire().await.expect("open").forget();
                    items.into_iter().map(|i| i * 2).collect()
                })
            }),
        )
    }

    #[tokio::test]
    async fn a_lone_call_is_flushed_at_once_and_gets_its_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gather = doubling(8, sizes.clone(), Arc::new(Semaphore::new(1)));
        assert_eq!(gather.call(21).await, Ok(42));
        assert_eq!(*sizes.lock().unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn calls_made_during_a_flush_share_the_next_one_up_to_the_maximum() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let gather = doubling(4, sizes.clone(), gate.clone());
        let call = |i: u32| {
            let gather = gather.clone();
            tokio::spawn(async move { gather.call(i).await })
        };
        let first = call(0);
        while sizes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (1..=6).map(call).collect();
        while gather.lock().waiting.len() < 6 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(3);
        assert_eq!(first.await.unwrap(), Ok(0));
        for (i, call) in rest.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), Ok(2 * (i as u32 + 1)));
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 4, 2]);
        assert_eq!(gather.stats(), (3, 7));
    }

    #[tokio::test]
    async fn a_flush_that_panics_answers_unanswered_and_the_next_call_starts_anew() {
        let calls = Arc::new(AtomicUsize::new(0));
        let gather: Arc<Gather<u32, u32>> = Gather::new(
            "test",
            8,
            Box::new({
                let calls = calls.clone();
                move |items: Vec<u32>| {
                    let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                    Box::pin(async move {
                        assert!(!first, "the first flush fails");
                        items
                    })
                }
            }),
        );
        assert_eq!(gather.call(1).await, Err(Unanswered("test")));
        assert_eq!(gather.call(2).await, Ok(2));
    }
}
