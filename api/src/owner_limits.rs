//! Per-owner counters in fixed windows (requests per minute, images per day), shared by every API process through
//! Redis, or kept in process in the standalone mode. A counter lives as long as its window.

use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// INCRBY, and set the window's expiry on first use. KEYS: counter. ARGV: amount, window seconds.
const COUNT: &str = r"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return n
";

#[derive(Clone)]
pub struct OwnerLimits {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
    /// Key -> (count, window end, unix seconds).
    Local(Arc<Mutex<HashMap<String, (u64, u64)>>>),
}

/// Where a counter stands after counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The count including this request.
    pub count: u64,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl OwnerLimits {
    pub fn new(conn: ConnectionManager, queue_name: &str) -> Self {
        Self {
            backend: Backend::Redis {
                conn,
                prefix: format!("{queue_name}:owner"),
            },
        }
    }

    pub fn local() -> Self {
        Self {
            backend: Backend::Local(Arc::default()),
        }
    }

    /// Adds `amount` to the owner's `kind` counter of the current `window`; returns the new count.
    pub async fn count(
        &self,
        kind: &str,
        owner: &str,
        amount: u64,
        window: Duration,
    ) -> Result<Window, redis::RedisError> {
        let secs = window.as_secs().max(1);
        let now = now_secs();
        let index = now / secs;
        let reset_secs = (index + 1) * secs - now;
        match &self.backend {
            Backend::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let count: u64 = redis::Script::new(COUNT)
                    .key(format!("{prefix}:{kind}:{owner}:{index}"))
                    .arg(amount)
                    .arg(secs + 1)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(Window { count, reset_secs })
            }
            Backend::Local(map) => {
                let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
                map.retain(|_, (_, end)| *end > now);
                let entry = map
                    .entry(format!("{kind}:{owner}:{index}"))
                    .or_insert((0, (index + 1) * secs));
                entry.0 += amount;
                Ok(Window {
                    count: entry.0,
                    reset_secs,
                })
            }
        }
    }

    /// Takes back `amount` counted for a request that was refused after all.
    pub async fn uncount(&self, kind: &str, owner: &str, amount: u64, window: Duration) {
        let secs = window.as_secs().max(1);
        let index = now_secs() / secs;
        match &self.backend {
            Backend::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let undone: Result<i64, _> = redis::cmd("DECRBY")
                    .arg(format!("{prefix}:{kind}:{owner}:{index}"))
                    .arg(amount)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = undone {
                    tracing::debug!(error = %e, "could not take back a counted quota");
                }
            }
            Backend::Local(map) => {
                let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(entry) = map.get_mut(&format!("{kind}:{owner}:{index}")) {
                    entry.0 = entry.0.saturating_sub(amount);
                }
            }
        }
    }
}
