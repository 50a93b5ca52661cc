//! Budgets the whole API fleet enforces: per owner and per API key, per UTC day and month, in micro-dollars.
//!
//! At submission the API reserves the request's most possible cost in every counter that applies, refusing when
//! one is already at or over its limit; all counters are checked and charged in one atomic step (a Lua script in
//! Redis, a mutex in process for the standalone mode), so concurrent submissions from any number of API processes
//! overshoot a limit by at most one request's reservation. When the job ends, its reservation is settled to what
//! it really cost (`settle`). A missing counter (a new window, a Redis restart) is rebuilt from the database: the
//! charges of settled jobs plus the reservations of the others.

use crate::db::costs::{self, Settlement, Spender};
use crate::db::{Db, DbError};
use chrono::{DateTime, Datelike, Duration as Days, NaiveDate, TimeZone, Utc};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Checks every counter exists (else names the first missing), then that none is at or over its limit (else names
/// it and its value), then adds the amount to all. KEYS: counters. ARGV: amount, then one limit per counter.
/// Returns {1, 0, 0} reserved, {0, i, spent} over the limit at counter i, {-1, i, 0} counter i missing.
const RESERVE: &str = r"
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return {-1, i, 0} end
end
for i = 1, #KEYS do
  local spent = tonumber(redis.call('GET', KEYS[i]))
  if spent >= tonumber(ARGV[i + 1]) then return {0, i, spent} end
end
for i = 1, #KEYS do redis.call('INCRBY', KEYS[i], ARGV[1]) end
return {1, 0, 0}
";

/// Adds a (possibly negative) amount to the counters that exist; a missing one is rebuilt from the database when
/// next needed, which already counts this. KEYS: counters. ARGV: amount.
const ADJUST: &str = r"
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[1]) end
end
return 0
";

/// How long a counter outlives its window (so a settle just after midnight still finds yesterday's).
const COUNTER_GRACE_SECS: i64 = 2 * 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Month,
}

/// One limit that applies to a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub spender: Spender,
    pub period: Period,
    pub usd_micros: i64,
}

/// A window of one spender: the counter a limit is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    spender: Spender,
    period: Period,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl Window {
    fn of(spender: Spender, period: Period, at: DateTime<Utc>) -> Window {
        let day = at.date_naive();
        let (start, end) = match period {
            Period::Day => (day, day + Days::days(1)),
            Period::Month => {
                let first = NaiveDate::from_ymd_opt(day.year(), day.month(), 1).unwrap_or(day);
                let next = if day.month() == 12 {
                    NaiveDate::from_ymd_opt(day.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(day.year(), day.month() + 1, 1)
                }
                .unwrap_or(first + Days::days(31));
                (first, next)
            }
        };
        let midnight = |d: NaiveDate| Utc.from_utc_datetime(&d.and_time(chrono::NaiveTime::MIN));
        Window {
            spender,
            period,
            start: midnight(start),
            end: midnight(end),
        }
    }

    /// The counter's key: the window first, the spender last (an owner name may hold any character).
    fn key(&self, prefix: &str) -> String {
        let period = match self.period {
            Period::Day => self.start.format("d:%Y-%m-%d"),
            Period::Month => self.start.format("m:%Y-%m"),
        };
        match &self.spender {
            Spender::Owner(o) => format!("{prefix}:budget:{period}:owner:{o}"),
            Spender::Key(k) => format!("{prefix}:budget:{period}:key:{k}"),
        }
    }

    fn ttl_secs(&self, now: DateTime<Utc>) -> i64 {
        (self.end - now).num_seconds().max(0) + COUNTER_GRACE_SECS
    }
}

/// A submission refused by a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub limit: Limit,
    /// Spent and reserved in the window when the request came.
    pub spent_usd_micros: i64,
    pub resets_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("budget store unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("budget store answered unexpectedly: {0}")]
    Protocol(String),
}

/// The budget counters, shared by every API process and worker (Redis) or kept in process (standalone).
#[derive(Clone)]
pub struct BudgetLedger {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
    Local(Arc<Mutex<LocalCounters>>),
}

/// Counter key -> (micro-dollars, expiry).
type LocalCounters = HashMap<String, (i64, DateTime<Utc>)>;

impl BudgetLedger {
    pub fn redis(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            backend: Backend::Redis {
                conn,
                prefix: prefix.to_owned(),
            },
        }
    }

    pub fn local() -> Self {
        Self {
            backend: Backend::Local(Arc::default()),
        }
    }

    fn prefix(&self) -> &str {
        match &self.backend {
            Backend::Redis { prefix, .. } => prefix,
            Backend::Local(_) => "local",
        }
    }

    /// Reserves `amount` against every limit, or says which is exceeded (nothing reserved then).
    pub async fn reserve(
        &self,
        db: &Db,
        limits: &[Limit],
        amount: i64,
        now: DateTime<Utc>,
    ) -> Result<Result<(), Exceeded>, BudgetError> {
        if limits.is_empty() {
            return Ok(Ok(()));
        }
        let windows: Vec<Window> = limits
            .iter()
            .map(|l| Window::of(l.spender.clone(), l.period, now))
            .collect();
        let keys: Vec<String> = windows.iter().map(|w| w.key(self.prefix())).collect();
        // A missing counter is rebuilt and the reservation tried again; one rebuild per counter at most.
        for _ in 0..=keys.len() {
            let answer = self
                .try_reserve(&keys, limits, amount, &windows, now)
                .await?;
            match answer {
                Reserve::Done => return Ok(Ok(())),
                Reserve::Over { index, spent } => {
                    let (limit, window) = (&limits[index], &windows[index]);
                    return Ok(Err(Exceeded {
                        limit: limit.clone(),
                        spent_usd_micros: spent,
                        resets_at: window.end,
                    }));
                }
                Reserve::Missing { index } => {
                    let w = &windows[index];
                    let spent = costs::spent_in(db, &w.spender, w.start, w.end).await?;
                    self.seed(&keys[index], spent, w.ttl_secs(now), now).await?;
                }
            }
        }
        Err(BudgetError::Protocol(
            "budget counters kept disappearing".into(),
        ))
    }

    async fn try_reserve(
        &self,
        keys: &[String],
        limits: &[Limit],
        amount: i64,
        windows: &[Window],
        now: DateTime<Utc>,
    ) -> Result<Reserve, BudgetError> {
        match &self.backend {
            Backend::Redis { conn, .. } => {
                let reserve = redis::Script::new(RESERVE);
                let mut script = reserve.prepare_invoke();
                for k in keys {
                    script.key(k);
                }
                script.arg(amount);
                for l in limits {
                    script.arg(l.usd_micros);
                }
                let (code, index, spent): (i64, i64, i64) =
                    script.invoke_async(&mut conn.clone()).await?;
                let index = usize::try_from(index - 1).unwrap_or(0);
                match code {
                    1 => Ok(Reserve::Done),
                    0 if index < keys.len() => Ok(Reserve::Over { index, spent }),
                    -1 if index < keys.len() => Ok(Reserve::Missing { index }),
                    _ => Err(BudgetError::Protocol(format!("reserve returned {code}"))),
                }
            }
            Backend::Local(counters) => {
                let mut counters = counters
                    .lock()
                    .map_err(|_| BudgetError::Protocol("budget counters poisoned".into()))?;
                counters.retain(|_, (_, expires)| *expires > now);
                if let Some(index) = keys.iter().position(|k| !counters.contains_key(k)) {
                    return Ok(Reserve::Missing { index });
                }
                for (index, (k, l)) in keys.iter().zip(limits).enumerate() {
                    let spent = counters.get(k).map_or(0, |c| c.0);
                    if spent >= l.usd_micros {
                        return Ok(Reserve::Over { index, spent });
                    }
                }
                for (k, w) in keys.iter().zip(windows) {
                    let entry = counters.entry(k.clone()).or_insert((0, w.end));
                    entry.0 = entry.0.saturating_add(amount);
                }
                Ok(Reserve::Done)
            }
        }
    }

    /// Creates a counter at `spent` unless another process made it meanwhile.
    async fn seed(
        &self,
        key: &str,
        spent: i64,
        ttl_secs: i64,
        now: DateTime<Utc>,
    ) -> Result<(), BudgetError> {
        match &self.backend {
            Backend::Redis { conn, .. } => {
                let _: Option<String> = redis::cmd("SET")
                    .arg(key)
                    .arg(spent)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl_secs.max(1))
                    .query_async(&mut conn.clone())
                    .await?;
            }
            Backend::Local(counters) => {
                let mut counters = counters
                    .lock()
                    .map_err(|_| BudgetError::Protocol("budget counters poisoned".into()))?;
                counters
                    .entry(key.to_owned())
                    .or_insert((spent, now + Days::seconds(ttl_secs)));
            }
        }
        Ok(())
    }

    /// Gives back a reservation whose job was never recorded.
    pub async fn release(
        &self,
        limits: &[Limit],
        amount: i64,
        reserved_at: DateTime<Utc>,
    ) -> Result<(), BudgetError> {
        let keys: Vec<String> = limits
            .iter()
            .map(|l| Window::of(l.spender.clone(), l.period, reserved_at).key(self.prefix()))
            .collect();
        self.adjust(&keys, -amount).await
    }

    /// Replaces a finished job's reservation by its cost in every counter of its owner and key.
    pub async fn settle(&self, s: &Settlement) -> Result<(), BudgetError> {
        let delta = s.cost_usd_micros - s.reserved_usd_micros;
        if delta == 0 {
            return Ok(());
        }
        let mut spenders = vec![Spender::Owner(s.owner.clone())];
        spenders.extend(s.api_key_id.map(Spender::Key));
        let keys: Vec<String> = spenders
            .into_iter()
            .flat_map(|who| {
                [Period::Day, Period::Month]
                    .map(|p| Window::of(who.clone(), p, s.created_at).key(self.prefix()))
            })
            .collect();
        self.adjust(&keys, delta).await
    }

    async fn adjust(&self, keys: &[String], delta: i64) -> Result<(), BudgetError> {
        if keys.is_empty() || delta == 0 {
            return Ok(());
        }
        match &self.backend {
            Backend::Redis { conn, .. } => {
                let adjust = redis::Script::new(ADJUST);
                let mut script = adjust.prepare_invoke();
                for k in keys {
                    script.key(k);
                }
                script.arg(delta);
                let _: i64 = script.invoke_async(&mut conn.clone()).await?;
            }
            Backend::Local(counters) => {
                let mut counters = counters
                    .lock()
                    .map_err(|_| BudgetError::Protocol("budget counters poisoned".into()))?;
                for k in keys {
                    if let Some(c) = counters.get_mut(k) {
                        c.0 = c.0.saturating_add(delta);
                    }
                }
            }
        }
        Ok(())
    }
}

enum Reserve {
    Done,
    Over { index: usize, spent: i64 },
    Missing { index: usize },
}

/// Settles a job that ended, if nobody has: flips its flag in the database, then moves its counters. Safe to call
/// from every place a job can end; only the first call does anything. `settles`: a worker's gathered settlements,
/// which flip the flag together with the other jobs it settles now (`None`: this job's flag alone).
pub async fn settle_job(
    db: &Db,
    ledger: &BudgetLedger,
    job: crate::domain::JobId,
    settles: Option<&crate::db::group_settle::GroupSettles>,
) -> Result<(), BudgetError> {
    let settled = match settles {
        Some(settles) => settles.settle(db, job).await?,
        None => costs::settle(db, job).await?,
    };
    if let Some(s) = settled {
        ledger.settle(&s).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("timestamp")
    }

    #[test]
    fn windows_are_utc_days_and_months() {
        let w = Window::of(
            Spender::Owner("a:b".into()),
            Period::Month,
            at("2026-12-31T23:59:59Z"),
        );
        assert_eq!(w.start, at("2026-12-01T00:00:00Z"));
        assert_eq!(w.end, at("2027-01-01T00:00:00Z"));
        assert_eq!(w.key("q"), "q:budget:m:2026-12:owner:a:b");
        let d = Window::of(
            Spender::Owner("x".into()),
            Period::Day,
            at("2026-11-28T12:00:00Z"),
        );
        assert_eq!(d.end, at("2026-11-29T00:00:00Z"));
        assert_eq!(d.key("q"), "q:budget:d:2026-11-28:owner:x");
    }
}
