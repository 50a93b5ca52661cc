//! Failed authentications per client address (AUTH_FAILURES_PER_MINUTE): a request without credentials that is
//! refused, or one with an unknown key or a bad token, counts against its client's minute, fleet-wide through Redis
//! (in process in the standalone mode). Over the limit, the address gets 429 with Retry-After until the minute ends,
//! before any credential is looked up, so a flood of made-up keys costs no database lookup. A key or token already
//! known to be valid (cached) still works from such an address.
//!
//! The client is the connection's peer, or when that peer is one of TRUSTED_PROXIES, the last address in
//! `X-Forwarded-For` that is not a trusted proxy (the rightmost entries are the ones our proxies wrote; a client can
//! put anything on the left). IPv6 clients are counted by their /64, which one subscriber usually holds whole.

use crate::config::TrustedProxies;
use crate::error::ApiError;
use crate::owner_limits::OwnerLimits;
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);
/// Most addresses remembered as blocked in one process (a flood from many addresses cannot grow it further).
const MAX_BLOCKED: usize = 100_000;

/// The address a request's failures are counted against.
pub fn client_address(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    let mut client = peer?.ip().to_canonical();
    if !trusted.trusts(client) {
        return Some(client);
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in forwarded.iter().rev() {
        let Some(address) = parse_forwarded(entry) else {
            // Not an address: whoever wrote it is not to be believed further left.
            break;
        };
        client = address;
        if !trusted.trusts(address) {
            break;
        }
    }
    Some(client)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:5678`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The counter's name for an address: IPv4 whole, IPv6 by its /64.
fn bucket(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", Ipv6Addr::from(masked))
        }
    }
}

pub struct FailedAuth {
    /// AUTH_FAILURES_PER_MINUTE; 0: not limited.
    limit: u64,
    counters: OwnerLimits,
    /// Buckets over the limit in this process, until their window ends.
    blocked: Mutex<HashMap<String, Instant>>,
}

impl FailedAuth {
    pub fn new(limit: u64, counters: OwnerLimits) -> Self {
        Self {
            limit,
            counters,
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for an address over its limit (checked before any credential is looked up).
    pub fn refusal(&self, client: Option<IpAddr>) -> Option<ApiError> {
        let client = client.filter(|_| self.limit > 0)?;
        let key = bucket(client);
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let until = *blocked.get(&key)?;
        if until <= now {
            blocked.remove(&key);
            return None;
        }
        Some(self.too_many(until.duration_since(now).as_secs().max(1)))
    }

    /// Counts a failed authentication of `client`; the 429 to answer instead of the 401 once over the limit.
    pub async fn failed(&self, client: Option<IpAddr>) -> Option<ApiError> {
        let client = client.filter(|_| self.limit > 0)?;
        let key = bucket(client);
        metrics::counter!("imagegen_auth_failures_total").increment(1);
        let window = match self.counters.count("authfail", &key, 1, MINUTE).await {
            Ok(w) => w,
            Err(e) => {
                // The request is refused anyway; the flood goes uncounted while Redis is away.
                tracing::warn!(error = %e, "failed-authentication counter unavailable");
                return None;
            }
        };
        if window.count <= self.limit {
            return None;
        }
        let reset = window.reset_secs.max(1);
        {
            let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if blocked.len() >= MAX_BLOCKED {
                blocked.retain(|_, until| *until > now);
                if blocked.len() >= MAX_BLOCKED {
                    blocked.clear();
                }
            }
            blocked.insert(key.clone(), now + Duration::from_secs(reset));
        }
        if window.count == self.limit + 1 {
            tracing::warn!(client = %key, limit = self.limit,
                "too many failed authentications from one address; refused until the minute ends");
        }
        Some(self.too_many(reset))
    }

    fn too_many(&self, reset_secs: u64) -> ApiError {
        metrics::counter!("imagegen_auth_throttled_total").increment(1);
        ApiError::RateLimited {
            message: format!(
                "Too many failed authentications from this address (limit {} per minute); retry after the reset",
                self.limit
            ),
            limit: self.limit,
            remaining: 0,
            reset_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().expect("ip"), 4000))
    }

    #[test]
    fn the_client_is_the_last_untrusted_forwarded_address() {
        let trusted = TrustedProxies::parse("10.0.0.0/8,127.0.0.1").expect("valid");
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7"),
        );
        headers.append("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        // Through two of our proxies: the address the outer one saw, not what the client claimed.
        assert_eq!(
            client_address(peer("127.0.0.1"), &headers, &trusted),
            ip("203.0.113.7")
        );
        // From an untrusted peer, its headers mean nothing.
        assert_eq!(
            client_address(peer("198.51.100.2"), &headers, &trusted),
            ip("198.51.100.2")
        );
        assert_eq!(
            client_address(peer("::ffff:198.51.100.2"), &HeaderMap::new(), &trusted),
            ip("198.51.100.2")
        );
        // Garbage or ports written by a proxy.
        let mut odd = HeaderMap::new();
        odd.insert(
            "x-forwarded-for",
            HeaderValue::from_static("nonsense, [2001:db8::5]:443"),
        );
        assert_eq!(
            client_address(peer("127.0.0.1"), &odd, &trusted),
            ip("2001:db8::5")
        );
        odd.insert("x-forwarded-for", HeaderValue::from_static("nonsense"));
        assert_eq!(
            client_address(peer("127.0.0.1"), &odd, &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(client_address(None, &headers, &trusted), None);
        assert_eq!(
            bucket("2001:db8:1:2:3:4:5:6".parse().expect("ip")),
            "2001:db8:1:2::/64"
        );
    }

    #[tokio::test]
    async fn over_the_limit_an_address_is_refused_until_the_window_ends() {
        let limiter = FailedAuth::new(3, OwnerLimits::local());
        let a = Some("203.0.113.7".parse().expect("ip"));
        let b = Some("198.51.100.1".parse().expect("ip"));
        for _ in 0..3 {
            assert!(limiter.failed(a).await.is_none());
        }
        assert!(limiter.refusal(a).is_none());
        assert!(matches!(
            limiter.failed(a).await,
            Some(ApiError::RateLimited { limit: 3, .. })
        ));
        assert!(matches!(
            limiter.refusal(a),
            Some(ApiError::RateLimited { reset_secs, .. }) if (1..=60).contains(&reset_secs)
        ));
        assert!(
            limiter.refusal(b).is_none(),
            "another address is unaffected"
        );
        assert!(limiter.refusal(None).is_none());
        let off = FailedAuth::new(0, OwnerLimits::local());
        for _ in 0..10 {
            assert!(off.failed(a).await.is_none());
        }
        assert!(off.refusal(a).is_none());
    }
}
