//! Limits the whole worker fleet shares, kept in Redis so every process sees the same state:
//! - a concurrency semaphore per route whose permits expire (a dead worker's permits come back by themselves);
//! - a pause per route after a 429 with Retry-After;
//! - a circuit breaker per route (closed -> open after a run of failures -> half-open after a cool-down, when one
//!   probe call decides).
//!
//! A route is one way of reaching a provider: `dalle3:openai`, `dalle3:azure`, `flux_schnell`.

use redis::aio::ConnectionManager;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// ZSET of permit ids scored by expiry: drop expired ones, then take one if there is room.
const ACQUIRE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if tonumber(ARGV[4]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// May this call go ahead? Closed: yes. Open: only after the cool-down, and then as the single half-open probe.
const BREAKER_ALLOW: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return 1 end
local now = tonumber(ARGV[1])
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if now < until_ms then return 0 end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'until', now + tonumber(ARGV[2]))
return 2
";

/// A failure: count it; open the circuit at the threshold (or at once when the probe failed).
const BREAKER_FAIL: &str = r"
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if state == 'half_open' or failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', tonumber(ARGV[1]) + tonumber(ARGV[3]))
  return 1
end
return 0
";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// What a caller may do right now on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (holding a permit, which must be released).
    Granted,
    /// Go ahead as the circuit's single probe.
    Probe,
    /// All permits are taken; try again shortly.
    Saturated,
    /// The provider asked everyone to wait this long.
    Paused(Duration),
    /// The circuit is open.
    Open,
}

#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Most calls in flight per route across the fleet; 0 = unlimited.
    pub concurrency: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// How long a permit lives without renewal.
    pub permit_ttl: Duration,
}

#[derive(Clone)]
pub struct FleetLimits {
    conn: ConnectionManager,
    prefix: String,
}

impl FleetLimits {
    pub fn new(conn: ConnectionManager, queue_name: &str) -> Self {
        Self {
            conn,
            prefix: format!("{queue_name}:limits"),
        }
    }

    fn permits_key(&self, route: &str) -> String {
        format!("{}:permits:{route}", self.prefix)
    }
    fn pause_key(&self, route: &str) -> String {
        format!("{}:pause:{route}", self.prefix)
    }
    fn breaker_key(&self, route: &str) -> String {
        format!("{}:breaker:{route}", self.prefix)
    }

    /// Checks pause and breaker, then takes a permit. `permit_id` identifies this call (renew/release use it).
    pub async fn admit(
        &self,
        route: &str,
        permit_id: &str,
        s: &LimitSettings,
    ) -> Result<Admission, redis::RedisError> {
        let mut conn = self.conn.clone();
        let paused_ms: i64 = redis::cmd("PTTL")
            .arg(self.pause_key(route))
            .query_async(&mut conn)
            .await?;
        if paused_ms > 0 {
            return Ok(Admission::Paused(Duration::from_millis(paused_ms as u64)));
        }
        let now = now_ms();
        let allowed: i64 = redis::Script::new(BREAKER_ALLOW)
            .key(self.breaker_key(route))
            .arg(now)
            .arg(s.permit_ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        if allowed == 0 {
            return Ok(Admission::Open);
        }
        let got: i64 = redis::Script::new(ACQUIRE)
            .key(self.permits_key(route))
            .arg(now)
            .arg(now + s.permit_ttl.as_millis() as u64)
            .arg(permit_id)
            .arg(s.concurrency)
            .arg(s.permit_ttl.as_millis() as u64 * 4)
            .invoke_async(&mut conn)
            .await?;
        Ok(match (got, allowed) {
            (0, _) => Admission::Saturated,
            (_, 2) => Admission::Probe,
            _ => Admission::Granted,
        })
    }

    pub async fn renew(
        &self,
        route: &str,
        permit_id: &str,
        ttl: Duration,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("ZADD")
            .arg(self.permits_key(route))
            .arg("XX")
            .arg(now_ms() + ttl.as_millis() as u64)
            .arg(permit_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn release(&self, route: &str, permit_id: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("ZREM")
            .arg(self.permits_key(route))
            .arg(permit_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// After a 429 with Retry-After: nobody in the fleet calls this route until then.
    pub async fn pause(&self, route: &str, wait: Duration) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let ms = wait.as_millis().max(1) as u64;
        let _: () = redis::cmd("SET")
            .arg(self.pause_key(route))
            .arg(1)
            .arg("PX")
            .arg(ms)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn record_success(&self, route: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.breaker_key(route))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Returns whether this failure opened the circuit.
    pub async fn record_failure(
        &self,
        route: &str,
        s: &LimitSettings,
    ) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        let opened: i64 = redis::Script::new(BREAKER_FAIL)
            .key(self.breaker_key(route))
            .arg(now_ms())
            .arg(s.breaker_failures)
            .arg(s.breaker_cooldown.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(opened == 1)
    }

    /// The breaker as the API shows it.
    pub async fn breaker_state(&self, route: &str) -> Result<BreakerState, redis::RedisError> {
        let mut conn = self.conn.clone();
        let state: Option<String> = redis::cmd("HGET")
            .arg(self.breaker_key(route))
            .arg("state")
            .query_async(&mut conn)
            .await?;
        Ok(match state.as_deref() {
            Some("open") => BreakerState::Open,
            Some("half_open") => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        })
    }

    /// Calls in flight on a route across the fleet (unexpired permits).
    pub async fn in_flight(&self, route: &str) -> Result<u64, redis::RedisError> {
        let mut conn = self.conn.clone();
        let n: u64 = redis::cmd("ZCOUNT")
            .arg(self.permits_key(route))
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        Ok(n)
    }
}
