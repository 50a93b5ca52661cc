//! Limits the whole worker fleet shares, kept in Redis so every process sees the same state:
//! - a concurrency semaphore per route whose permits expire (a dead worker's permits come back by themselves);
//! - a pause per route after a 429 with Retry-After;
//! - a circuit breaker per route (closed -> open after a run of failures -> half-open after a cool-down, when one
//!   probe call decides).
//!
//! A route here is a provider account, keyed by its id (`openai`, `azure_openai`, `flux`, `bfl`): its models share it.

use redis::aio::ConnectionManager;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Admission in one round trip. KEYS: pause, breaker, permits. ARGV: now_ms, probe window ms, permit id, permit
/// expiry ms, concurrency (0 = unlimited), permits key lifetime ms, plain only ('1': take no probe).
/// Returns {code, pause_ms}: 0 granted, 1 probe, 2 saturated, 3 paused, 4 open, 5 a probe is due but plain only
/// was asked (nothing changed).
const ADMIT: &str = r"
local paused = redis.call('PTTL', KEYS[1])
if paused > 0 then return {3, paused} end
local now = tonumber(ARGV[1])
local probe = 0
local state = redis.call('HGET', KEYS[2], 'state')
if state and state ~= 'closed' then
  local until_ms = tonumber(redis.call('HGET', KEYS[2], 'until') or '0')
  if now < until_ms then return {4, 0} end
  if ARGV[7] == '1' then return {5, 0} end
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

/// What a limit does when its store (Redis) cannot be reached (LIMITS_ON_REDIS_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FailMode {
    /// Let the request or call through, uncounted: availability first. Without Redis the queue is down as well,
    /// so nothing new is accepted meanwhile; what is already running goes on.
    #[default]
    Open,
    /// Refuse it: the limit first.
    Closed,
}

impl FailMode {
    pub fn is_closed(self) -> bool {
        self == FailMode::Closed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    #[default]
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

/// The fleet's limits: in Redis when processes share them, in memory for the single-process standalone mode.
#[derive(Clone)]
pub struct FleetLimits {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
    Local(Arc<Mutex<HashMap<String, LocalRoute>>>),
}

/// One route's limits in memory, with the same rules as the Redis scripts above.
#[derive(Debug, Default)]
struct LocalRoute {
    paused_until_ms: u64,
    breaker: BreakerState,
    breaker_until_ms: u64,
    failures: u32,
    /// Permit id -> expiry (ms).
    permits: HashMap<String, u64>,
}

impl LocalRoute {
    fn admit(&mut self, now: u64, permit_id: &str, s: &LimitSettings) -> Admission {
        if self.paused_until_ms > now {
            return Admission::Paused(Duration::from_millis(self.paused_until_ms - now));
        }
        let mut probe = false;
        if self.breaker != BreakerState::Closed {
            if now < self.breaker_until_ms {
                return Admission::Open;
            }
            probe = true;
        }
        self.permits.retain(|_, expiry| *expiry > now);
        if s.concurrency > 0 && self.permits.len() >= s.concurrency as usize {
            return Admission::Saturated;
        }
        if probe {
            self.breaker = BreakerState::HalfOpen;
            self.breaker_until_ms = now + s.permit_ttl.as_millis() as u64;
        }
        self.permits
            .insert(permit_id.to_owned(), now + s.permit_ttl.as_millis() as u64);
        if probe {
            Admission::Probe
        } else {
            Admission::Granted
        }
    }

    fn fail(&mut self, now: u64, s: &LimitSettings) -> bool {
        self.failures += 1;
        if self.breaker == BreakerState::HalfOpen || self.failures >= s.breaker_failures {
            self.breaker = BreakerState::Open;
            self.breaker_until_ms = now + s.breaker_cooldown.as_millis() as u64;
            return true;
        }
        false
    }
}

impl FleetLimits {
    pub fn new(conn: ConnectionManager, queue_name: &str) -> Self {
        Self {
            backend: Backend::Redis {
                conn,
                prefix: format!("{queue_name}:limits"),
            },
        }
    }

    /// Limits kept in this process (standalone mode: the process is the whole fleet).
    pub fn local() -> Self {
        Self {
            backend: Backend::Local(Arc::default()),
        }
    }

    /// Runs `f` on a route's in-memory state; `None` on the Redis backend.
    fn local_route<T>(&self, route: &str, f: impl FnOnce(&mut LocalRoute) -> T) -> Option<T> {
        match &self.backend {
            Backend::Local(routes) => {
                let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
                Some(f(routes.entry(route.to_owned()).or_default()))
            }
            Backend::Redis { .. } => None,
        }
    }

    fn redis(&self) -> (ConnectionManager, &str) {
        match &self.backend {
            Backend::Redis { conn, prefix } => (conn.clone(), prefix.as_str()),
            Backend::Local(_) => unreachable!("local limits answered before reaching Redis"),
        }
    }

    fn permits_key(prefix: &str, route: &str) -> String {
        format!("{prefix}:permits:{route}")
    }
    fn pause_key(prefix: &str, route: &str) -> String {
        format!("{prefix}:pause:{route}")
    }
    fn breaker_key(prefix: &str, route: &str) -> String {
        format!("{prefix}:breaker:{route}")
    }

    /// Checks pause and breaker, then takes a permit, in one round trip. `permit_id` identifies this call
    /// (renew/release use it).
    pub async fn admit(
        &self,
        route: &str,
        permit_id: &str,
        s: &LimitSettings,
    ) -> Result<Admission, redis::RedisError> {
        if let Some(admission) = self.local_route(route, |r| r.admit(now_ms(), permit_id, s)) {
            return Ok(admission);
        }
        Ok(self
            .ask(route, permit_id, s, false)
            .await?
            .unwrap_or(Admission::Open))
    }

    /// Takes a permit ahead of knowing that the call will be made (the worker asks beside its claim, before it has
    /// read the job): `true` only when it was granted plainly, the route neither paused nor saturated and its
    /// circuit closed. Anything else is left untouched for [`FleetLimits::admit`] to decide, so a half-open circuit's
    /// single probe is never spent on a guess. In-memory limits answer without a round trip, so nothing is asked
    /// ahead there (`false`). A permit taken must be used or released.
    pub async fn admit_ahead(
        &self,
        route: &str,
        permit_id: &str,
        s: &LimitSettings,
    ) -> Result<bool, redis::RedisError> {
        if let Backend::Local(_) = self.backend {
            return Ok(false);
        }
        Ok(self.ask(route, permit_id, s, true).await? == Some(Admission::Granted))
    }

    /// Runs ADMIT; `None` when a probe was due and `plain_only` took nothing.
    async fn ask(
        &self,
        route: &str,
        permit_id: &str,
        s: &LimitSettings,
        plain_only: bool,
    ) -> Result<Option<Admission>, redis::RedisError> {
        let (mut conn, prefix) = self.redis();
        let ttl_ms = s.permit_ttl.as_millis() as u64;
        let (code, pause_ms): (i64, i64) = redis::Script::new(ADMIT)
            .key(Self::pause_key(prefix, route))
            .key(Self::breaker_key(prefix, route))
            .key(Self::permits_key(prefix, route))
            .arg(now_ms())
            .arg(ttl_ms)
            .arg(permit_id)
            .arg(ttl_ms)
            .arg(s.concurrency)
            .arg(ttl_ms * 4)
            .arg(if plain_only { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(match code {
            0 => Some(Admission::Granted),
            1 => Some(Admission::Probe),
            2 => Some(Admission::Saturated),
            3 => Some(Admission::Paused(Duration::from_millis(
                pause_ms.max(1) as u64
            ))),
            5 => None,
            _ => Some(Admission::Open),
        })
    }

    pub async fn renew(
        &self,
        route: &str,
        permit_id: &str,
        ttl: Duration,
    ) -> Result<(), redis::RedisError> {
        let expiry = now_ms() + ttl.as_millis() as u64;
        let renewed = self.local_route(route, |r| {
            if let Some(e) = r.permits.get_mut(permit_id) {
                *e = expiry;
            }
        });
        if renewed.is_some() {
            return Ok(());
        }
        let (mut conn, prefix) = self.redis();
        let _: i64 = redis::cmd("ZADD")
            .arg(Self::permits_key(prefix, route))
            .arg("XX")
            .arg(expiry)
            .arg(permit_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn release(&self, route: &str, permit_id: &str) -> Result<(), redis::RedisError> {
        if self
            .local_route(route, |r| r.permits.remove(permit_id))
            .is_some()
        {
            return Ok(());
        }
        let (mut conn, prefix) = self.redis();
        let _: i64 = redis::cmd("ZREM")
            .arg(Self::permits_key(prefix, route))
            .arg(permit_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// A permit given back after a call that succeeded, closing the route's breaker too, in one round trip.
    pub async fn release_succeeded(
        &self,
        route: &str,
        permit_id: &str,
    ) -> Result<(), redis::RedisError> {
        let local = self.local_route(route, |r| {
            r.permits.remove(permit_id);
            r.breaker = BreakerState::Closed;
            r.failures = 0;
        });
        if local.is_some() {
            return Ok(());
        }
        let (mut conn, prefix) = self.redis();
        let _: (i64, i64) = redis::pipe()
            .cmd("ZREM")
            .arg(Self::permits_key(prefix, route))
            .arg(permit_id)
            .cmd("DEL")
            .arg(Self::breaker_key(prefix, route))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// After a 429 with Retry-After: nobody in the fleet calls this route until then.
    pub async fn pause(&self, route: &str, wait: Duration) -> Result<(), redis::RedisError> {
        let ms = wait.as_millis().max(1) as u64;
        if self
            .local_route(route, |r| r.paused_until_ms = now_ms() + ms)
            .is_some()
        {
            return Ok(());
        }
        let (mut conn, prefix) = self.redis();
        let _: () = redis::cmd("SET")
            .arg(Self::pause_key(prefix, route))
            .arg(1)
            .arg("PX")
            .arg(ms)
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
        if let Some(opened) = self.local_route(route, |r| r.fail(now_ms(), s)) {
            return Ok(opened);
        }
        let (mut conn, prefix) = self.redis();
        let opened: i64 = redis::Script::new(BREAKER_FAIL)
            .key(Self::breaker_key(prefix, route))
            .arg(now_ms())
            .arg(s.breaker_failures)
            .arg(s.breaker_cooldown.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(opened == 1)
    }

    /// The breaker as the API shows it.
    pub async fn breaker_state(&self, route: &str) -> Result<BreakerState, redis::RedisError> {
        if let Some(state) = self.local_route(route, |r| r.breaker) {
            return Ok(state);
        }
        let (mut conn, prefix) = self.redis();
        let state: Option<String> = redis::cmd("HGET")
            .arg(Self::breaker_key(prefix, route))
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
        let now = now_ms();
        if let Some(n) = self.local_route(route, |r| {
            r.permits.values().filter(|e| **e > now).count() as u64
        }) {
            return Ok(n);
        }
        let (mut conn, prefix) = self.redis();
        let n: u64 = redis::cmd("ZCOUNT")
            .arg(Self::permits_key(prefix, route))
            .arg(now)
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        Ok(n)
    }
}
