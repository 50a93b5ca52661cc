//! Logging: JSON lines on stdout, one per event, carrying the fields of the enclosing spans (the API's request span
//! holds the correlation id, the worker's job span holds job id and correlation id), so every line is traceable.
//! Lines are written by a thread of their own, not by the task that logs: a slow stdout (a full pipe to a log
//! collector) then costs that thread, not the runtime's workers, and only holds them up once 128,000 lines wait.

use crate::config::ConfigError;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Turns LOG_LEVEL (the seed writes `INFO`) into a filter; noisy dependencies stay at warn unless named.
pub fn filter_from_level(level: &str) -> Result<EnvFilter, ConfigError> {
    let level = level.trim().to_ascii_lowercase();
    let directives = if level.contains('=') || level.contains(',') {
        level
    } else {
        format!(
            "{level},sqlx=warn,hyper=warn,h2=warn,rustls=warn,apalis=warn,apalis_core=warn,apalis_redis=warn"
        )
    };
    EnvFilter::try_new(&directives)
        .map_err(|e| ConfigError::new("LOG_LEVEL", format!("'{directives}': {e}")))
}

/// Keeps the log writer's thread; dropping it writes out the lines still waiting. Hold it until the process ends.
#[must_use = "the log lines still waiting are written when this is dropped"]
pub struct LogGuard {
    _writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the global subscriber once; later calls (tests) are ignored.
pub fn init(level: &str) -> Result<LogGuard, ConfigError> {
    let filter = filter_from_level(level)?;
    // Not lossy: when the writer falls that far behind, logging waits rather than dropping lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("imagegen-log")
        .finish(std::io::stdout());
    let installed = tracing_subscriber::fmt()
        .with_writer(writer)
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_span_list(true)
        .flatten_event(true)
        .with_span_events(FmtSpan::NONE)
        .with_target(true)
        .try_init();
    Ok(LogGuard {
        _writer: installed.is_ok().then_some(guard),
    })
}

/// One more on the gauge `name` while it lives: counted down however the thing it counts ends (a future dropped
/// while it waited included).
pub struct GaugeGuard(&'static str);

impl GaugeGuard {
    pub fn count(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        GaugeGuard(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_seed_style_levels() {
        for l in ["INFO", "debug", "Warn", "info,imagegen=debug"] {
            assert!(filter_from_level(l).is_ok(), "{l}");
        }
        assert_eq!(
            filter_from_level("info,[{")
                .map(|_| ())
                .map_err(|e| e.variable),
            Err("LOG_LEVEL")
        );
    }
}
