//! At most SUBMIT_CONCURRENCY submissions are recorded at once. Under a burst (thousands of wait-mode requests
//! within a second) the rest wait here, each a future of a few hundred bytes, instead of each holding a whole
//! submission's state (tens of KiB: the key lookup, budget, insert and queue push) while it queues for one of the
//! pool's few connections. A submission past the gate still waits for the pool, but that queue stays short.

use crate::error::ApiError;
use tokio::sync::{Semaphore, SemaphorePermit};

pub struct SubmitGate {
    permits: Semaphore,
}

impl SubmitGate {
    pub fn new(concurrency: usize) -> Self {
        Self {
            permits: Semaphore::new(concurrency.max(1)),
        }
    }

    /// Waits for a submission's turn (first come, first served); the turn ends when the permit is dropped.
    pub async fn turn(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        let _counted = Waiting::count();
        // The semaphore is never closed.
        self.permits
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("submission gate: {e}")))
    }
}

/// `imagegen_submissions_waiting`, counted down however the wait ends (a client that hangs up drops it).
struct Waiting;

impl Waiting {
    fn count() -> Self {
        metrics::gauge!("imagegen_submissions_waiting").increment(1.0);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!("imagegen_submissions_waiting").decrement(1.0);
    }
}
