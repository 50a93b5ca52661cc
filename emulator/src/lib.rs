//! `imagegen emulator`: faithful local copies of the providers' APIs as they are today, so tests, benchmarks and
//! keyless sandboxes exercise the real clients over real HTTP. It speaks:
//!
//! - the OpenAI Images API for the GPT image models (`POST /v1/images/generations`; `openai`, `gpt_image`),
//! - Azure OpenAI, on the deployments path and the v1 path (`azure`),
//! - Together's OpenAI-compatible FLUX.1 [schnell] on the OpenAI path, told apart by its `model` (`flux`),
//! - Black Forest Labs' asynchronous API, FLUX.2 and FLUX.1 endpoints (`POST /bfl/v1/{model}`, then poll; `bfl`).
//!
//! `models` says which models each serves and until when (compared with today's date, or `--today`). Pictures are
//! deterministic (`picture`: PNG, JPEG or WebP at exactly the answered size); result URLs are served from memory
//! until they expire (`files`). Per-protocol knobs inject latency, errors, 429s, hangs, moderation and corrupt
//! (charged, not-an-image) answers, and `/emulator/stats` counts what each protocol saw.
//!
//! Control plane: `PUT /emulator/config` `{"<protocol>": {partial knobs}}` (a JSON body, whatever its
//! `Content-Type`), `GET /emulator/config`, `GET /emulator/stats`, `GET /emulator/timeline`, `POST /emulator/reset`.
//! Anything else answers OpenAI's 404/405 error bodies.

pub mod azure;
pub mod bfl;
pub mod cli;
pub mod files;
pub mod flux;
pub mod gpt_image;
pub mod gpt_image_edit;
pub mod knobs;
pub mod models;
pub mod openai;
pub mod picture;

pub use cli::EmulatorArgs;
pub use knobs::{Fate, Knobs, Stats};
pub use picture::render_png;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// The protocols the emulator speaks (keys of the config and stats objects).
pub const PROTOCOLS: [&str; 4] = [
    openai::PROTOCOL,
    azure::PROTOCOL,
    flux::PROTOCOL,
    bfl::PROTOCOL,
];

#[derive(Clone)]
pub struct Emulator(Arc<Inner>);

pub struct Inner {
    api_keys: Vec<String>,
    /// Azure deployments and the model each serves (`None`: the model it is named after, else gpt-image-2); empty
    /// serves any name.
    deployments: Vec<(String, Option<String>)>,
    /// The date models' retirement is compared with; `None` is today's (UTC).
    today: Mutex<Option<chrono::NaiveDate>>,
    start: BTreeMap<String, Knobs>,
    knobs: Mutex<BTreeMap<String, Knobs>>,
    stats: Mutex<BTreeMap<String, Stats>>,
    pub files: Arc<files::Files>,
    /// BFL's asynchronous tasks, by id.
    pub bfl_tasks: Mutex<std::collections::HashMap<String, bfl::Task>>,
    /// When each recent request arrived and was answered (benchmarks measure queueing around the provider call).
    timeline: Mutex<std::collections::VecDeque<TimelineEntry>>,
    /// What each edit call received (`GET /emulator/edits`), oldest first.
    edits: Mutex<std::collections::VecDeque<gpt_image_edit::EditRecord>>,
}

/// One request as the emulator saw it: its `X-Correlation-ID` (if any) and wall-clock times in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TimelineEntry {
    pub protocol: &'static str,
    pub correlation_id: Option<String>,
    pub arrived_us: u64,
    pub answered_us: u64,
}

/// Entries kept; older ones are dropped first.
const TIMELINE_CAPACITY: usize = 100_000;
/// The largest edit body taken.
const EDIT_BODY_LIMIT: usize = 256 << 20;
/// Edit records kept; older ones are dropped first.
const EDITS_KEPT: usize = 1_000;

pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
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
        Self::with_protocols(api_keys, Vec::new(), &[(openai::PROTOCOL, openai)])
    }

    /// An emulator with starting knobs per protocol (protocols not named start from the defaults). `deployments`
    /// are Azure deployment entries, `name` or `name=model` (empty: any name is served).
    pub fn with_protocols(
        api_keys: Vec<String>,
        deployments: Vec<String>,
        start: &[(&str, Knobs)],
    ) -> Self {
        let api_keys = api_keys
            .into_iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        let mut knobs: BTreeMap<String, Knobs> = PROTOCOLS
            .iter()
            .map(|p| ((*p).to_owned(), Knobs::default()))
            .collect();
        for (protocol, k) in start {
            knobs.insert((*protocol).to_owned(), k.clone());
        }
        let start = knobs;
        let deployments = deployments
            .iter()
            .filter_map(|d| parse_deployment(d))
            .collect();
        let stats = PROTOCOLS
            .iter()
            .map(|p| ((*p).to_owned(), Stats::default()))
            .collect();
        Self(Arc::new(Inner {
            api_keys,
            deployments,
            today: Mutex::new(None),
            knobs: Mutex::new(start.clone()),
            start,
            stats: Mutex::new(stats),
            files: Arc::new(files::Files::default()),
            bfl_tasks: Mutex::new(std::collections::HashMap::new()),
            timeline: Mutex::new(std::collections::VecDeque::new()),
            edits: Mutex::new(std::collections::VecDeque::new()),
        }))
    }

    /// Notes what an edit call received (the newest `EDITS_KEPT`).
    pub fn record_edit(&self, record: gpt_image_edit::EditRecord) {
        let mut edits = self.edits.lock().unwrap_or_else(|e| e.into_inner());
        if edits.len() >= EDITS_KEPT {
            edits.pop_front();
        }
        edits.push_back(record);
    }

    /// The edit calls received so far, oldest first.
    pub fn edit_records(&self) -> Vec<gpt_image_edit::EditRecord> {
        let edits = self.edits.lock().unwrap_or_else(|e| e.into_inner());
        edits.iter().cloned().collect()
    }

    /// Notes one request on the timeline.
    pub fn record_timeline(&self, entry: TimelineEntry) {
        let mut timeline = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
        if timeline.len() >= TIMELINE_CAPACITY {
            timeline.pop_front();
        }
        timeline.push_back(entry);
    }

    pub fn accepts_key(&self, key: &str) -> bool {
        self.api_keys.is_empty() || self.api_keys.iter().any(|k| k == key)
    }

    pub fn accepts_deployment(&self, name: &str) -> bool {
        self.deployments.is_empty() || self.deployments.iter().any(|(d, _)| d == name)
    }

    /// The model id an Azure deployment serves, or `None` if there is no such deployment. The id may be retired or
    /// unknown to Azure (the request then finds no deployment).
    pub fn deployment_model(&self, name: &str) -> Option<String> {
        let named_after = || {
            if models::AZURE.iter().any(|m| m.id == name) {
                name.to_owned()
            } else {
                models::AZURE_DEFAULT_MODEL.to_owned()
            }
        };
        if self.deployments.is_empty() {
            return Some(named_after());
        }
        self.deployments
            .iter()
            .find(|(d, _)| d == name)
            .map(|(_, model)| model.clone().unwrap_or_else(named_after))
    }

    /// The date models are served on: the one set by `set_today` (`--today`), else today's (UTC).
    pub fn today(&self) -> chrono::NaiveDate {
        self.today
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_else(|| chrono::Utc::now().date_naive())
    }

    /// Pins the date models' retirement is compared with (`None`: the real date again).
    pub fn set_today(&self, today: Option<chrono::NaiveDate>) {
        *self.today.lock().unwrap_or_else(|e| e.into_inner()) = today;
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

    /// For protocols whose work outlives a request (BFL tasks): counts submissions and the unfinished tasks.
    pub fn note_active(&self, protocol: &str, active: usize) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = stats.entry(protocol.to_owned()).or_default();
        s.in_flight = active as u64;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
    }

    /// Counts a request whose in-flight figure is kept some other way (see `note_active`).
    pub fn count_request(&self, protocol: &str) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.entry(protocol.to_owned()).or_default().requests += 1;
    }

    pub fn knobs_of(&self, protocol: &str) -> Knobs {
        self.knobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(protocol)
            .cloned()
            .unwrap_or_default()
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
            .route(
                "/openai/deployments/{deployment}/images/generations",
                post(azure::generations),
            )
            .route("/openai/v1/images/generations", post(azure::generations_v1))
            // Edits carry up to 16 images: OpenAI takes up to 50 MB each.
            .route(
                "/v1/images/edits",
                post(openai::edits).layer(DefaultBodyLimit::max(EDIT_BODY_LIMIT)),
            )
            .route(
                "/openai/deployments/{deployment}/images/edits",
                post(azure::edits).layer(DefaultBodyLimit::max(EDIT_BODY_LIMIT)),
            )
            .route(
                "/openai/v1/images/edits",
                post(azure::edits_v1).layer(DefaultBodyLimit::max(EDIT_BODY_LIMIT)),
            )
            .route("/emulator/edits", get(get_edits))
            .route("/bfl/v1/get_result", get(bfl::get_result))
            .route("/bfl/v1/{model}", post(bfl::submit))
            .route("/emulator/config", get(get_config).put(put_config))
            .route("/emulator/stats", get(get_stats))
            .route("/emulator/timeline", get(get_timeline))
            .route("/emulator/reset", post(reset))
            .route(
                "/health",
                get(|| async { axum::Json(json!({"status": "ok"})) }),
            )
            .fallback(not_found)
            .with_state(self.clone())
            .merge(files)
            .method_not_allowed_fallback(wrong_method)
            .layer(axum::middleware::map_response(identify))
    }
}

/// Every answer names the emulator, so the service can tell a provider it points at is a sandbox (no real
/// provider sends this header). The API looks for it at start-up (`imagegen_api::sandbox`).
pub const IDENTITY_HEADER: &str = "x-imagegen-emulator";

async fn identify(mut response: Response) -> Response {
    response.headers_mut().insert(
        IDENTITY_HEADER,
        axum::http::HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
    );
    response
}

/// OpenAI's answer to a path it does not serve.
async fn not_found(method: Method, uri: Uri) -> Response {
    openai::error(
        StatusCode::NOT_FOUND,
        &format!("Invalid URL ({method} {})", uri.path()),
        "invalid_request_error",
        None,
        None,
    )
}

/// OpenAI's answer to a known path with the wrong method.
async fn wrong_method(method: Method, uri: Uri) -> Response {
    openai::error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("Invalid method for URL ({method} {})", uri.path()),
        "invalid_request_error",
        None,
        None,
    )
}

async fn get_config(State(emu): State<Emulator>) -> axum::Json<Value> {
    axum::Json(emu.config_json())
}

/// Merges the given fields into the current knobs; unknown protocols or fields are refused (400). The body is read
/// as JSON whatever its `Content-Type` (curl's `-d` sends `application/x-www-form-urlencoded`).
async fn put_config(State(emu): State<Emulator>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "the body is not JSON"})),
        )
            .into_response();
    };
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

/// The recent requests' arrival and answer times, oldest first.
async fn get_timeline(State(emu): State<Emulator>) -> axum::Json<Value> {
    let timeline = emu.timeline.lock().unwrap_or_else(|e| e.into_inner());
    axum::Json(json!(*timeline))
}

async fn get_edits(State(emu): State<Emulator>) -> axum::Json<Value> {
    axum::Json(json!(emu.edit_records()))
}

async fn reset(State(emu): State<Emulator>) -> StatusCode {
    emu.edits.lock().unwrap_or_else(|e| e.into_inner()).clear();
    emu.timeline
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    *emu.knobs.lock().unwrap_or_else(|e| e.into_inner()) = emu.start.clone();
    emu.bfl_tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
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

/// One `--azure-deployment` entry: `name` or `name=model`.
fn parse_deployment(entry: &str) -> Option<(String, Option<String>)> {
    let (name, model) = match entry.split_once('=') {
        Some((name, model)) => (name.trim(), Some(model.trim()).filter(|m| !m.is_empty())),
        None => (entry.trim(), None),
    };
    (!name.is_empty()).then(|| (name.to_owned(), model.map(str::to_owned)))
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

/// Serves an emulator on `listener` for as long as the task runs: `tokio::spawn(spawn_on(listener, emulator))` in
/// tests, then abort or drop the runtime to stop it.
pub async fn spawn_on(
    listener: tokio::net::TcpListener,
    emulator: Emulator,
) -> std::io::Result<()> {
    serve(listener, emulator, std::future::pending()).await
}

/// `imagegen emulator`: binds, logs the address it listens on, serves until `shutdown`.
pub async fn run(
    args: EmulatorArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let addr = listener.local_addr()?;
    let knobs = args.knobs();
    let start: Vec<(&str, Knobs)> = PROTOCOLS.iter().map(|p| (*p, knobs.clone())).collect();
    let emulator = Emulator::with_protocols(
        args.api_keys.clone(),
        args.azure_deployments.clone(),
        &start,
    );
    emulator.set_today(args.today);
    tracing::info!(%addr, protocols = ?PROTOCOLS, today = %emulator.today(), "emulator listening");
    serve(listener, emulator, shutdown).await
}

#[cfg(test)]
mod tests;
