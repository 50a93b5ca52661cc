//! Which events a webhook hears and where it is sent: the event types, and the webhook a single request names
//! (`webhook_url`, `webhook_events`), stored with the job's request so the database's outbox trigger can read it.

use serde::{Deserialize, Serialize};

/// Every event type, in the order a job's life goes.
pub const EVENT_TYPES: [&str; 6] = [
    "job.started",
    "job.succeeded",
    "job.failed",
    "job.canceled",
    "job.moderated",
    "batch.completed",
];

/// What a webhook hears when it names no events: the ends.
pub const DEFAULT_EVENTS: [&str; 5] = [
    "job.succeeded",
    "job.failed",
    "job.canceled",
    "job.moderated",
    "batch.completed",
];

/// The longest webhook URL accepted.
pub const MAX_URL_CHARS: usize = 2048;

/// A request's own webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookTarget {
    pub url: String,
    pub events: Vec<String>,
    /// Where the payload's image links point when PUBLIC_BASE_URL is unset (the host the request came through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_base: Option<String>,
}

/// Checks a webhook URL's form (absolute http(s), a host, no credentials, no fragment). Whether http is allowed and
/// where it may point are the service's settings, checked at submission and at delivery.
pub fn check_url(url: &str) -> Result<url::Url, String> {
    if url.chars().count() > MAX_URL_CHARS {
        return Err(format!("must be at most {MAX_URL_CHARS} characters"));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err("must be an https URL".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if parsed.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    Ok(parsed)
}

/// Checks event types (known, no repeats); `None` gives the default.
pub fn check_events(events: Option<&[String]>) -> Result<Vec<String>, String> {
    let Some(events) = events else {
        return Ok(DEFAULT_EVENTS.iter().map(|e| (*e).to_owned()).collect());
    };
    if events.is_empty() {
        return Err(format!(
            "must name at least one of {}",
            EVENT_TYPES.join(", ")
        ));
    }
    let mut checked: Vec<String> = Vec::with_capacity(events.len());
    for event in events {
        if !EVENT_TYPES.contains(&event.as_str()) {
            return Err(format!(
                "unknown event type {event:?}; one of {}",
                EVENT_TYPES.join(", ")
            ));
        }
        if !checked.contains(event) {
            checked.push(event.clone());
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_events_are_checked() {
        assert!(check_url("https://hooks.example.com/imagegen?x=1").is_ok());
        assert!(
            check_url("http://127.0.0.1:9000/").is_ok(),
            "http is the settings' call"
        );
        for bad in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "not a url",
            "https://example.com/#f",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert_eq!(check_events(None).expect("default").len(), 5);
        let both = vec!["job.started".to_owned(), "job.started".to_owned()];
        assert_eq!(check_events(Some(&both)).expect("ok"), ["job.started"]);
        assert!(check_events(Some(&["job.done".to_owned()])).is_err());
        assert!(check_events(Some(&[])).is_err());
    }
}
