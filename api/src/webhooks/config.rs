//! The webhooks' settings (WEBHOOK_*).

use imagegen_shared::config::ConfigError;
use imagegen_shared::net_guard::{AllowList, Policy, Purpose};
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Allow http webhook URLs, to loopback addresses only (tests and local development).
    #[arg(long, env = "WEBHOOK_ALLOW_INSECURE", value_name = "WEBHOOK_ALLOW_INSECURE", default_value_t = false,
        action = clap::ArgAction::Set)]
    pub webhook_allow_insecure: bool,
    /// Private networks webhooks may reach anyway: comma-separated CIDRs, e.g. 10.1.0.0/16 (default: none).
    #[arg(
        long,
        env = "WEBHOOK_ALLOWED_NETWORKS",
        value_name = "WEBHOOK_ALLOWED_NETWORKS",
        default_value = ""
    )]
    pub webhook_allowed_networks: String,
    /// Delays before each attempt, comma-separated (`0`, `5s`, `5m`, `2h`): the first attempt's, then each retry's.
    #[arg(
        long,
        env = "WEBHOOK_RETRY_SCHEDULE",
        value_name = "WEBHOOK_RETRY_SCHEDULE",
        default_value = "0,5s,5m,30m,2h,5h,10h,14h,20h,24h"
    )]
    pub webhook_retry_schedule: String,
    /// Seconds a receiver has to answer.
    #[arg(
        long,
        env = "WEBHOOK_TIMEOUT_SECS",
        value_name = "WEBHOOK_TIMEOUT_SECS",
        default_value_t = 15
    )]
    pub webhook_timeout_secs: u64,
    /// Deliveries in flight at once per API process.
    #[arg(
        long,
        env = "WEBHOOK_CONCURRENCY",
        value_name = "WEBHOOK_CONCURRENCY",
        default_value_t = 32
    )]
    pub webhook_concurrency: usize,
    /// Seconds an old secret still signs after a rotation (two signatures meanwhile).
    #[arg(
        long,
        env = "WEBHOOK_SECRET_OVERLAP_SECS",
        value_name = "WEBHOOK_SECRET_OVERLAP_SECS",
        default_value_t = 86_400
    )]
    pub webhook_secret_overlap_secs: u64,
}

/// The webhooks' settings, checked.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub policy: Policy,
    /// The delay before attempt n (0-based); its length is the number of attempts.
    pub schedule: Vec<Duration>,
    pub timeout: Duration,
    pub concurrency: usize,
    pub secret_overlap: Duration,
}

impl WebhookArgs {
    pub fn settings(&self) -> Result<WebhookSettings, ConfigError> {
        let allow = AllowList::parse(&self.webhook_allowed_networks)
            .map_err(|e| ConfigError::new("WEBHOOK_ALLOWED_NETWORKS", e.0))?;
        let schedule = parse_schedule(&self.webhook_retry_schedule)
            .map_err(|e| ConfigError::new("WEBHOOK_RETRY_SCHEDULE", e))?;
        if !(1..=300).contains(&self.webhook_timeout_secs) {
            return Err(ConfigError::new(
                "WEBHOOK_TIMEOUT_SECS",
                "must be 1 to 300 seconds",
            ));
        }
        if !(1..=1024).contains(&self.webhook_concurrency) {
            return Err(ConfigError::new("WEBHOOK_CONCURRENCY", "must be 1 to 1024"));
        }
        Ok(WebhookSettings {
            policy: Policy::new(
                Purpose::WEBHOOKS,
                self.webhook_allow_insecure,
                allow.networks,
            ),
            schedule,
            timeout: Duration::from_secs(self.webhook_timeout_secs),
            concurrency: self.webhook_concurrency,
            secret_overlap: Duration::from_secs(self.webhook_secret_overlap_secs),
        })
    }
}

/// `0,5s,5m,30m,2h` as durations: 1 to 50 entries, each at most a week.
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    let mut schedule = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (digits, unit) = part.split_at(
            part.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len()),
        );
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{part:?} is not a delay such as 0, 5s, 5m or 2h"))?;
        let secs = match unit {
            "" | "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => return Err(format!("{part:?}: the unit must be s, m or h")),
        };
        if secs > 7 * 86_400 {
            return Err(format!("{part:?} is over a week"));
        }
        schedule.push(Duration::from_secs(secs));
    }
    if schedule.is_empty() || schedule.len() > 50 {
        return Err("must list 1 to 50 delays".into());
    }
    Ok(schedule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_is_the_specs() {
        let s = parse_schedule("0,5s,5m,30m,2h,5h,10h,14h,20h,24h").expect("valid");
        assert_eq!(s.len(), 10);
        assert_eq!(s[2], Duration::from_secs(300));
        assert_eq!(s[9], Duration::from_secs(86_400));
        assert!(parse_schedule("5x").is_err());
        assert!(parse_schedule("").is_err());
        assert!(parse_schedule("9999h").is_err());
    }
}
