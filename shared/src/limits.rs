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

/// Admission in one round trip. KEYS: pause, breaker, permits. ARGV: now_ms, probe window ms, permit id, permit
/// expiry ms, concurrency (0 = unlimited), permits key lifetime ms.
/// Returns {code, pause_ms}: 0 granted, 1 probe, 2 saturated, 3 paused, 4 open.
const ADMIT: &str = r"
local paused = redis.call('PTTL', KEYS[1])
if paused > 0 then return {3, paused} end
local now = tonumber(ARGV[1])
local probe = 0
local state = redis.call('HGET', KEYS[2], 'state')
if state and state ~= 'closed' then
  local until_ms = tonumber(redis.call('HGET', KEYS[2], 'until') or '0')
  if now < until_ms then return {4, 0} end
  probe = 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if tonumber(ARGV[5]) > 0 and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then
  return {2, 0}
end
if probe == 1 then
  redis.call('HSET', KEYS[2], 'state', 'half_open', 'until', now + tonumber(ARGV[2]))
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return {probe, 0}
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

    /// Checks pause and breaker, then takes a permit, in one round trip. `permit_id` identifies this call
    /// (renew/release use it).
    pub async fn admit(
        &self,
        route: &str,
        permit_id: &str,
        s: &LimitSettings,
    ) -> Result<Admission, redis::RedisError> {
        let mut conn = self.conn.clone();
        let ttl_ms = s.permit_ttl.as_millis() as u64;
        let (code, pause_ms): (i64, i64) = redis::Script::new(ADMIT)
            .key(self.pause_key(route))
            .key(self.breaker_key(route))
            .key(self.permits_key(route))
            .arg(now_ms())
            .arg(ttl_ms)
            .arg(permit_id)
            .arg(ttl_ms)
            .arg(s.concurrency)
            .arg(ttl_ms * 4)
            .invoke_async(&mut conn)
            .await?;
        Ok(match code {
            0 => Admission::Granted,
            1 => Admission::Probe,
            2 => Admission::Saturated,
            3 => Admission::Paused(Duration::from_millis(pause_ms.max(1) as u64)),
            _ => Admission::Open,
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
