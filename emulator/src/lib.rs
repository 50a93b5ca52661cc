//! `imagegen emulator`: faithful local copies of the providers' APIs, so tests, benchmarks and keyless sandboxes
//! exercise the real clients over real HTTP. Today it speaks the OpenAI Images API (dall-e-3); knobs inject latency,
//! errors, 429s, hangs and moderation, and `/emulator/stats` counts what it saw.
//!
//! Control plane: `PUT /emulator/config` `{"openai": {partial knobs}}`, `GET /emulator/config`,
//! `GET /emulator/stats`, `POST /emulator/reset`.

pub mod cli;
pub mod files;
pub mod knobs;
pub mod openai;
pub mod picture;

pub use cli::EmulatorArgs;
pub use knobs::{Fate, Knobs, Stats};
pub use picture::render_png;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// The protocols the emulator speaks (keys of the config and stats objects).
pub const PROTOCOLS: [&str; 1] = [openai::PROTOCOL];

#[derive(Clone)]
pub struct Emulator(Arc<Inner>);

pub struct Inner {
    api_keys: Vec<String>,
    start: BTreeMap<String, Knobs>,
    knobs: Mutex<BTreeMap<String, Knobs>>,
    stats: Mutex<BTreeMap<String, Stats>>,
    pub files: Arc<files::Files>,
}

impl std::ops::Deref for Emulator {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Counts a request as in flight until dropped (also when the client goes away mid-request).
pub struct InFlight {
    emulator: Emulator,
    protocol: &'static str,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut stats = self
            .emulator
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = stats.get_mut(self.protocol) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

impl Emulator {
    pub fn new(api_keys: Vec<String>, openai: Knobs) -> Self {
        let api_keys = api_keys
            .into_iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        let start: BTreeMap<String, Knobs> = [(openai::PROTOCOL.to_owned(), openai)].into();
        let stats = PROTOCOLS
            .iter()
            .map(|p| ((*p).to_owned(), Stats::default()))
            .collect();
        Self(Arc::new(Inner {
            api_keys,
            knobs: Mutex::new(start.clone()),
            start,
            stats: Mutex::new(stats),
            files: Arc::new(files::Files::default()),
        }))
    }

    pub fn accepts_key(&self, key: &str) -> bool {
        self.api_keys.is_empty() || self.api_keys.iter().any(|k| k == key)
    }

    pub fn begin(&self, protocol: &'static str) -> InFlight {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = stats.entry(protocol.to_owned()).or_default();
        s.requests += 1;
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        InFlight {
            emulator: self.clone(),
            protocol,
        }
    }

    pub fn record_status(&self, protocol: &str, status: u16) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        *stats
            .entry(protocol.to_owned())
            .or_default()
            .by_status
            .entry(status.to_string())
            .or_default() += 1;
    }

    /// The fate of one request, and the knobs in force when it arrived.
    pub fn draw(&self, protocol: &str) -> (Fate, Knobs) {
        let mut knobs = self.knobs.lock().unwrap_or_else(|e| e.into_inner());
        let k = knobs.entry(protocol.to_owned()).or_default();
        let fate = k.draw();
        (fate, k.clone())
    }

    fn config_json(&self) -> Value {
        let knobs = self.knobs.lock().unwrap_or_else(|e| e.into_inner());
        json!(*knobs)
    }

    pub fn router(&self) -> Router {
        let files = Router::new()
            .route("/files/{name}", get(files::serve))
            .with_state(self.files.clone());
        Router::new()
            .route("/v1/images/generations", post(openai::generations))
            .route("/emulator/config", get(get_config).put(put_config))
            .route("/emulator/stats", get(get_stats))
            .route("/emulator/reset", post(reset))
            .route(
                "/health",
                get(|| async { axum::Json(json!({"status": "ok"})) }),
            )
            .fallback(|| async {
                openai::error(
                    StatusCode::NOT_FOUND,
                    "Invalid URL",
                    "invalid_request_error",
                    None,
                    None,
                )
            })
            .with_state(self.clone())
            .merge(files)
    }
}

async fn get_config(State(emu): State<Emulator>) -> axum::Json<Value> {
    axum::Json(emu.config_json())
}

/// Merges the given fields into the current knobs; unknown protocols or fields are refused (400).
async fn put_config(State(emu): State<Emulator>, axum::Json(body): axum::Json<Value>) -> Response {
    let Some(patch) = body.as_object() else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "expected an object keyed by protocol"})),
        )
            .into_response();
    };
    let mut knobs = emu.knobs.lock().unwrap_or_else(|e| e.into_inner());
    let mut updated = knobs.clone();
    for (protocol, fields) in patch {
        let Some(current) = updated.get(protocol) else {
            let msg = format!(
                "unknown protocol '{protocol}' (known: {})",
                PROTOCOLS.join(", ")
            );
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": msg}))).into_response();
        };
        let mut merged = json!(current);
        if let (Some(m), Some(f)) = (merged.as_object_mut(), fields.as_object()) {
            for (k, v) in f {
                m.insert(k.clone(), v.clone());
            }
        }
        match serde_json::from_value::<Knobs>(merged) {
            Ok(k) => {
                updated.insert(protocol.clone(), k);
            }
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": format!("{protocol}: {e}")})),
                )
                    .into_response();
            }
        }
    }
    *knobs = updated;
    axum::Json(json!(*knobs)).into_response()
}

async fn get_stats(State(emu): State<Emulator>) -> axum::Json<Value> {
    let stats = emu.stats.lock().unwrap_or_else(|e| e.into_inner());
    axum::Json(json!(*stats))
}

async fn reset(State(emu): State<Emulator>) -> StatusCode {
    *emu.knobs.lock().unwrap_or_else(|e| e.into_inner()) = emu.start.clone();
    let mut stats = emu.stats.lock().unwrap_or_else(|e| e.into_inner());
    for s in stats.values_mut() {
        // In-flight requests are still running; they keep being counted until they end.
        *s = Stats {
            in_flight: s.in_flight,
            ..Stats::default()
        };
    }
    StatusCode::NO_CONTENT
}

/// Serves an emulator on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    emulator: Emulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, emulator.router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// `imagegen emulator`: binds, logs the address it listens on, serves until `shutdown`.
pub async fn run(
    args: EmulatorArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let addr = listener.local_addr()?;
    let emulator = Emulator::new(args.api_keys.clone(), args.knobs());
    tracing::info!(%addr, protocols = ?PROTOCOLS, "emulator listening");
    serve(listener, emulator, shutdown).await
}
