//! Retry timing: exponential backoff with full jitter, or the provider's own Retry-After when it gives one.

use rand::Rng;
use reqwest::header::HeaderMap;
use std::time::Duration;

/// Hints above this are not honoured (the SDK gives up rather than wait); the attempt then counts as failed.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(8),
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt + 1` (attempts count from 1). Full jitter spreads a fleet's retries out.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(hint) = retry_after.filter(|d| !d.is_zero() && *d <= MAX_RETRY_AFTER) {
            return hint;
        }
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)));
        let ceiling = exp.min(self.max);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

/// `retry-after-ms` (Azure, OpenAI), then `retry-after` in seconds or as an HTTP date.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = get("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    wait.to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn jittered_delay_stays_under_the_exponential_ceiling() {
        let b = Backoff::default();
        for attempt in 1..=10 {
            let ceiling = (b.base * 2u32.pow(attempt - 1)).min(b.max);
            for _ in 0..50 {
                assert!(b.delay(attempt, None) <= ceiling);
            }
        }
    }

    #[test]
    fn honours_sane_hints_only() {
        let b = Backoff::default();
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert!(b.delay(1, Some(Duration::from_secs(600))) <= b.base);
        assert!(b.delay(1, Some(Duration::ZERO)) <= b.base);
    }

    #[test]
    fn parses_header_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(
            "retry-after",
            HeaderValue::from_str(&later).expect("header"),
        );
        let d = parse_retry_after(&h).expect("date form");
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(25),
            "{d:?}"
        );
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h), None);
    }
}
