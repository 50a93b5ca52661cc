//! At most SUBMIT_CONCURRENCY submissions are recorded at once. Under a burst (thousands of wait-mode requests
//! within a second) the rest wait here, each a future of a few hundred bytes, instead of each holding a whole
//! submission's state (tens of KiB: the key lookup, budget, insert and queue push) while it queues for one of the
//! pool's few connections. A submission past the gate still waits for the pool, but that queue stays short.

use crate::error::ApiError;
use imagegen_shared::telemetry::GaugeGuard;
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
        let _waiting = GaugeGuard::count("imagegen_submissions_waiting");
        // The semaphore is never closed.
        self.permits
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("submission gate: {e}")))
    }
}
