//! The progress display on stderr: a spinner with the job's current state when stderr is a terminal (each change
//! also kept as a line above it), plain timestamped lines otherwise (logs, pipes, CI).

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

pub struct Progress {
    started: Instant,
    /// The spinner's current text; `None` when not on a terminal.
    live: Option<Arc<Mutex<String>>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    last: String,
}

impl Progress {
    pub fn new() -> Progress {
        let started = Instant::now();
        if !std::io::stderr().is_terminal() {
            return Progress {
                started,
                live: None,
                ticker: None,
                last: String::new(),
            };
        }
        let live = Arc::new(Mutex::new(String::new()));
        let text = live.clone();
        let ticker = tokio::spawn(async move {
            let mut frame = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let line = text.lock().map(|t| t.clone()).unwrap_or_default();
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[2K{} {:>5.1}s {line}",
                    FRAMES[frame % FRAMES.len()],
                    started.elapsed().as_secs_f64()
                );
                let _ = err.flush();
                frame += 1;
            }
        });
        Progress {
            started,
            live: Some(live),
            ticker: Some(ticker),
            last: String::new(),
        }
    }

    /// A change of state: a line of its own (repeats of the same text are dropped), and the spinner's text.
    pub fn update(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text == self.last {
            return;
        }
        self.line(&text);
        if let Some(live) = &self.live
            && let Ok(mut t) = live.lock()
        {
            t.clone_from(&text);
        }
        self.last = text;
    }

    /// A line that stays (above the spinner on a terminal).
    pub fn line(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let clear = if self.live.is_some() { "\r\x1b[2K" } else { "" };
        let _ = writeln!(
            err,
            "{clear}[{:>5.1}s] {text}",
            self.started.elapsed().as_secs_f64()
        );
        let _ = err.flush();
    }

    /// Stops the spinner and clears its line.
    pub fn finish(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
        self.live = None;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
