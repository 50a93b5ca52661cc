//! The periodic chores (the Redis queue's promotion and vacuum, the worker's reconciler and retention) share one
//! loop shape: run now, then every `period`, until the stop token is cancelled. Each chore is a `while` over
//! [`every`]:
//!
//! ```ignore
//! let mut ticks = ticker::every(PERIOD, &stop);
//! while ticks.next().await {
//!     chore().await; // logs its own errors; the next tick tries again
//! }
//! ```
//!
//! (A loop rather than a callback: the chores borrow their state across awaits, and a future spawned onto the
//! runtime cannot yet say that an async closure's borrows are `Send`.)

use std::time::Duration;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Ticks at once, then every `period`, until `stop`. A chore that overruns its period delays the next tick instead
/// of being followed by a burst of catch-up runs. A chore in progress when `stop` fires runs to its end (a
/// reconciler pass is one transaction); `next` then says stop.
pub fn every(period: Duration, stop: &CancellationToken) -> Ticks {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Ticks {
        interval,
        stop: stop.clone(),
    }
}

pub struct Ticks {
    interval: Interval,
    stop: CancellationToken,
}

impl Ticks {
    /// Waits for the next tick: `true` to run the chore, `false` once stopped.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::every;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn ticks_at_once_then_every_period_until_stopped() {
        let period = Duration::from_millis(30);
        let stop = CancellationToken::new();
        let mut ticks = every(period, &stop);
        let start = tokio::time::Instant::now();
        assert!(ticks.next().await);
        assert!(start.elapsed() < period, "the first tick is immediate");
        assert!(ticks.next().await);
        assert!(start.elapsed() >= period);
        stop.cancel();
        assert!(!ticks.next().await);
    }
}
