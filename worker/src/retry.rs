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

/// The longest wait a provider's header is read as: anything longer (a huge number, infinity, a far date) is read
/// as this. Above `MAX_RETRY_AFTER`, so such a hint still means "not waiting that long".
pub const MAX_HINT: Duration = Duration::from_secs(86_400);

/// A provider's wait of `secs` seconds, never panicking: NaN and negative waits are no hint; anything from
/// `MAX_HINT` up (infinity included) is `MAX_HINT`.
fn clamped_secs(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    if secs >= MAX_HINT.as_secs_f64() {
        return Some(MAX_HINT);
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// `retry-after-ms` (Azure, OpenAI), then `retry-after` in seconds or as an HTTP date. Every form is clamped to
/// `MAX_HINT`; a value that is no usable wait (NaN, negative, a past date, text) is no hint.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(wait) = get("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| clamped_secs(ms / 1000.0))
    {
        return Some(wait);
    }
    let value = get("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return clamped_secs(secs);
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    wait.to_std().ok().map(|w| w.min(MAX_HINT))
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

    fn hint(pairs: &[(&'static str, &str)]) -> Option<Duration> {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).expect("header"));
        }
        parse_retry_after(&h)
    }

    /// Hostile or broken hints never panic; huge ones are clamped and, being above MAX_RETRY_AFTER, not honoured.
    #[test]
    fn hostile_hints_are_clamped_without_panicking() {
        for value in [
            "1e20",
            "1e300",
            "18446744073709551616",
            "inf",
            "+Infinity",
            "86400",
        ] {
            assert_eq!(hint(&[("retry-after", value)]), Some(MAX_HINT), "{value}");
        }
        for value in ["1e30", "1e23", "inf", "18446744073709551615000"] {
            assert_eq!(
                hint(&[("retry-after-ms", value)]),
                Some(MAX_HINT),
                "{value}"
            );
        }
        for value in ["-5", "-inf", "NaN", "nan", "-0.5", "soon", ""] {
            assert_eq!(hint(&[("retry-after", value)]), None, "{value}");
            assert_eq!(hint(&[("retry-after-ms", value)]), None, "{value}");
        }
        // A broken retry-after-ms falls back to retry-after.
        assert_eq!(
            hint(&[("retry-after-ms", "NaN"), ("retry-after", "4")]),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            hint(&[("retry-after", "0.25")]),
            Some(Duration::from_millis(250))
        );
        // Dates: far in the future is clamped, in the past is no hint.
        assert_eq!(
            hint(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]),
            Some(MAX_HINT)
        );
        assert_eq!(
            hint(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            None
        );
        let b = Backoff::default();
        for value in ["1e20", "inf", "-5", "NaN"] {
            let delay = b.delay(1, hint(&[("retry-after", value)]));
            assert!(delay <= b.base, "{value}: {delay:?}");
        }
    }
}
