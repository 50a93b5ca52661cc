//! Turns for work that needs one of the database pool's few connections, so that a burst queues here as small
//! futures rather than as whole states queued for the pool:
//! - submissions: at most SUBMIT_CONCURRENCY are recorded at once. Under a burst (thousands of wait-mode requests
//!   within a second) the rest wait here, each a future of a few hundred bytes, instead of each holding a whole
//!   submission's state (tens of KiB: the key lookup, budget, insert and queue push);
//! - the answer reads of wait mode and of event streams: when a thousand jobs end together, a thousand waiters read
//!   their job at once, and ten thousand streams opening within seconds each read theirs; at most as many as the
//!   pool has connections build their query (8 to 13 KiB of state each) at a time.
//!
//! Past its gate, work still waits for the pool, but that queue stays short.

use crate::error::ApiError;
use imagegen_shared::telemetry::GaugeGuard;
use tokio::sync::{Semaphore, SemaphorePermit};

pub struct Gate {
    permits: Semaphore,
    /// The gauge that counts those waiting for a turn.
    waiting: &'static str,
}

impl Gate {
    pub fn new(concurrency: usize, waiting: &'static str) -> Self {
        Self {
            permits: Semaphore::new(concurrency.max(1)),
            waiting,
        }
    }

    /// Waits for a turn (first come, first served); the turn ends when the permit is dropped.
    pub async fn turn(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        let _waiting = GaugeGuard::count(self.waiting);
        // The semaphore is never closed.
        self.permits
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("{}: {e}", self.waiting)))
    }
}
