//! A bound on the picture bytes one worker process holds at once (WORKER_PICTURE_MEMORY_MB). A picture is in
//! memory from the moment its answer starts to arrive until it is stored, so WORKER_CONCURRENCY jobs whose answers
//! come in together would hold concurrency x picture size, whatever the machine has. Each answer (or download)
//! reserves what its pictures will take before its body is read (from Content-Length when the provider sends one,
//! else the most its pictures can be); one that does not fit waits, unread, until stored pictures give memory
//! back. The provider's bytes meanwhile wait in the socket, not in our memory.
//!
//! An answer never waits for more than the whole budget (it is given all of it), so a large picture is never
//! refused, only read alone. A reservation is taken once, before reading, and never grown, so two answers can never
//! each hold part of the budget while waiting for the other's.

use imagegen_shared::telemetry::GaugeGuard;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations are counted in KiB, so that a u32 permit count covers any budget.
const UNIT: u64 = 1024;

#[derive(Clone)]
pub struct PictureMemory {
    permits: Arc<Semaphore>,
    units: u32,
}

/// A reservation, given back when the last picture holding it is dropped (an answer's pictures share one).
#[derive(Clone)]
pub struct PictureHold(Arc<Reserved>);

struct Reserved {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        metrics::gauge!("imagegen_worker_picture_memory_bytes").decrement(self.bytes as f64);
    }
}

impl std::fmt::Debug for PictureHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PictureHold({} bytes)", self.0.bytes)
    }
}

impl PictureMemory {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: u64) -> Self {
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Waits until `bytes` (at most the whole budget) are free, first come first served, and reserves them.
    pub async fn reserve(&self, bytes: u64) -> PictureHold {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.units);
        let permit = match self.permits.clone().try_acquire_many_owned(units) {
            Ok(permit) => Some(permit),
            Err(_) => {
                let _waiting = GaugeGuard::count("imagegen_worker_picture_memory_waiting");
                // Only a closed semaphore fails, and this one is never closed.
                self.permits.clone().acquire_many_owned(units).await.ok()
            }
        };
        let bytes = if permit.is_some() {
            u64::from(units) * UNIT
        } else {
            0
        };
        metrics::gauge!("imagegen_worker_picture_memory_bytes").increment(bytes as f64);
        PictureHold(Arc::new(Reserved {
            _permit: permit,
            bytes,
        }))
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> u64 {
        u64::from(self.units).saturating_sub(self.permits.available_permits() as u64) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_answer_that_does_not_fit_waits_until_a_stored_picture_gives_memory_back() {
        let memory = PictureMemory::new(10 * 1024 * 1024);
        let first = memory.reserve(6 * 1024 * 1024).await;
        let copy = first.clone();
        assert_eq!(memory.reserved(), 6 * 1024 * 1024);
        let waiting = tokio::spawn({
            let memory = memory.clone();
            async move { memory.reserve(6 * 1024 * 1024).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "12 MiB do not fit in 10");
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a picture still holds the reservation"
        );
        drop(copy);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("admitted once the memory is back")
            .expect("task");
        assert_eq!(memory.reserved(), 6 * 1024 * 1024);
        drop(second);
        assert_eq!(memory.reserved(), 0);
    }

    #[tokio::test]
    async fn a_picture_larger_than_the_budget_is_read_alone_not_refused() {
        let memory = PictureMemory::new(4 * 1024 * 1024);
        let big = tokio::time::timeout(Duration::from_secs(5), memory.reserve(32 * 1024 * 1024))
            .await
            .expect("given the whole budget");
        assert_eq!(memory.reserved(), 4 * 1024 * 1024);
        let next = tokio::spawn({
            let memory = memory.clone();
            async move { memory.reserve(1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!next.is_finished(), "nothing else is read beside it");
        drop(big);
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("admitted")
            .expect("task");
    }
}
