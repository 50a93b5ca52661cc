//! A closed-loop load generator: `concurrency` clients each send their next request as soon as the previous one
//! is answered, for a fixed time; latencies are kept whole (no histogram buckets) and summarised at the end.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub latencies_us: Vec<u64>,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Sample {
    pub fn ok(&self) -> usize {
        self.latencies_us.len()
    }

    pub fn rps(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile (0..=100) in milliseconds.
    pub fn pct_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies_us, p)
    }
}

pub fn percentile_ms(values_us: &[u64], p: f64) -> f64 {
    if values_us.is_empty() {
        return f64::NAN;
    }
    let mut v = values_us.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[rank.min(v.len() - 1)] as f64 / 1000.0
}

/// Runs `request(n)` from `concurrency` clients for `duration`; `request` answers whether it succeeded.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, request: F) -> Sample
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (request, counter, errors, latencies) = (
            request.clone(),
            counter.clone(),
            errors.clone(),
            latencies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                if request(n).await {
                    mine.push(t0.elapsed().as_micros() as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies.lock().await.extend(mine);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let latencies_us = std::mem::take(&mut *latencies.lock().await);
    Sample {
        latencies_us,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
    }
}

/// Awaits every client task and counts their outcomes: how many answered `"ok"`, and the others by kind.
pub async fn tally(
    tasks: Vec<tokio::task::JoinHandle<String>>,
) -> (usize, std::collections::BTreeMap<String, usize>) {
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    for t in tasks {
        let outcome = t.await.unwrap_or_else(|_| "panicked".to_owned());
        *outcomes.entry(outcome).or_default() += 1;
    }
    (outcomes.remove("ok").unwrap_or(0), outcomes)
}

/// Connections opened per wave by the scenarios that open thousands (3 and 8), and the pause between waves: 5,000 a
/// second. Larger waves (250 every 50 ms) overflowed the kernel's per-CPU packet queue on loopback
/// (net.core.netdev_max_backlog, 1,000 by default): SYNs and requests were dropped, and the clients saw connection
/// timeouts that were the load generator's, not the service's (`loopback_drops` counts them).
const WAVE: usize = 50;
const WAVE_PAUSE: Duration = Duration::from_millis(10);

/// Before opening the `i`-th connection of a burst: pauses between waves.
pub async fn pace(i: usize) {
    if i > 0 && i.is_multiple_of(WAVE) {
        tokio::time::sleep(WAVE_PAUSE).await;
    }
}

/// Packets the kernel has dropped because a CPU's input queue was full (`/proc/net/softnet_stat`, second column,
/// summed over CPUs); on this machine's loopback traffic, a burst's lost SYNs and requests. `None` off Linux.
pub fn loopback_drops() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/net/softnet_stat").ok()?;
    stat.lines()
        .map(|line| {
            let dropped = line.split_whitespace().nth(1)?;
            u64::from_str_radix(dropped, 16).ok()
        })
        .sum()
}
