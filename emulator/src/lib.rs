//! `imagegen emulator`: faithful local copies of the providers' APIs, so tests, benchmarks and keyless sandboxes
//! exercise the real clients over real HTTP. Today it speaks the OpenAI Images API (dall-e-3); knobs inject latency,
//! errors, 429s, hangs and moderation, and `/emulator/stats` counts what it saw.
//!
//! Control plane: `PUT /emulator/config` `{"openai": {partial knobs}}`, `GET /emulator/config`,
//! `GET /emulator/stats`, `POST /emulator/reset`.

pub mod azure;
pub mod bfl;
pub mod cli;
pub mod files;
pub mod flux;
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
    /// Azure deployment names served; empty serves any.
    deployments: Vec<String>,
    start: BTreeMap<String, Knobs>,
    knobs: Mutex<BTreeMap<String, Knobs>>,
    stats: Mutex<BTreeMap<String, Stats>>,
    pub files: Arc<files::Files>,
    /// BFL's asynchronous tasks, by id.
    pub bfl_tasks: Mutex<std::collections::HashMap<String, bfl::Task>>,
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

    /// An emulator with starting knobs per protocol (protocols not named start from the defaults).
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
            .into_iter()
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .collect();
        let stats = PROTOCOLS
            .iter()
            .map(|p| ((*p).to_owned(), Stats::default()))
            .collect();
        Self(Arc::new(Inner {
            api_keys,
            deployments,
            knobs: Mutex::new(start.clone()),
            start,
            stats: Mutex::new(stats),
            files: Arc::new(files::Files::default()),
            bfl_tasks: Mutex::new(std::collections::HashMap::new()),
        }))
    }

    pub fn accepts_key(&self, key: &str) -> bool {
        self.api_keys.is_empty() || self.api_keys.iter().any(|k| k == key)
    }

    pub fn accepts_deployment(&self, name: &str) -> bool {
        self.deployments.is_empty() || self.deployments.iter().any(|d| d == name)
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
            .route("/bfl/v1/get_result", get(bfl::get_result))
            .route("/bfl/v1/{model}", post(bfl::submit))
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
    let knobs = args.knobs();
    let start: Vec<(&str, Knobs)> = PROTOCOLS.iter().map(|p| (*p, knobs.clone())).collect();
    let emulator = Emulator::with_protocols(
        args.api_keys.clone(),
        args.azure_deployments.clone(),
        &start,
    );
    tracing::info!(%addr, protocols = ?PROTOCOLS, "emulator listening");
    serve(listener, emulator, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn start(keys: &[&str]) -> (String, reqwest::Client) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let emulator = Emulator::new(
            keys.iter().map(|k| (*k).to_owned()).collect(),
            Knobs::default(),
        );
        tokio::spawn(serve(listener, emulator, std::future::pending()));
        (format!("http://{addr}"), reqwest::Client::new())
    }

    async fn generate(
        base: &str,
        http: &reqwest::Client,
        key: Option<&str>,
        body: Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = http
            .post(format!("{base}/v1/images/generations"))
            .json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    fn png_dims(bytes: &[u8]) -> (u32, u32) {
        let reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("png");
        (reader.info().width, reader.info().height)
    }

    #[tokio::test]
    async fn answers_like_openai_with_urls_and_b64() {
        let (base, http) = start(&[]).await;
        let body = json!({"model": "dall-e-3", "prompt": "a red fox", "size": "1792x1024", "response_format": "b64_json"});
        let (status, headers, json) = generate(&base, &http, Some("any-key"), body).await;
        assert_eq!(status, 200, "{json}");
        assert!(headers.get("x-request-id").is_some());
        assert!(json["data"][0]["revised_prompt"].as_str().is_some());
        use base64::Engine;
        let b64 = json["data"][0]["b64_json"].as_str().expect("b64");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        assert_eq!(png_dims(&png), (1792, 1024));
        assert_eq!(
            png,
            render_png("a red fox", 0, 1792, 1024),
            "deterministic from the prompt"
        );

        let body = json!({"model": "dall-e-3", "prompt": "a red fox", "size": "1792x1024"});
        let (status, _, json) = generate(&base, &http, Some("k"), body).await;
        assert_eq!(status, 200);
        let url = json["data"][0]["url"].as_str().expect("url");
        let served = http.get(url).send().await.expect("file");
        assert_eq!(served.status().as_u16(), 200);
        assert_eq!(served.bytes().await.expect("bytes").to_vec(), png);
        let tampered = url.replace("sig=", "sig=00");
        assert_eq!(
            http.get(tampered)
                .send()
                .await
                .expect("file")
                .status()
                .as_u16(),
            403
        );
    }

    #[tokio::test]
    async fn urls_expire() {
        let (base, http) = start(&[]).await;
        http.put(format!("{base}/emulator/config"))
            .json(&json!({"openai": {"url_ttl_s": 0}}))
            .send()
            .await
            .expect("config");
        let (_, _, json) = generate(
            &base,
            &http,
            Some("k"),
            json!({"model": "dall-e-3", "prompt": "x"}),
        )
        .await;
        let url = json["data"][0]["url"].as_str().expect("url");
        let r = http.get(url).send().await.expect("file");
        assert_eq!(r.status().as_u16(), 403);
        assert!(
            r.text()
                .await
                .expect("xml")
                .contains("AuthenticationFailed")
        );
    }

    #[tokio::test]
    async fn auth_and_validation_errors_have_openai_bodies() {
        let (base, http) = start(&["sk-good-key-1234"]).await;
        let ok = json!({"model": "dall-e-3", "prompt": "x"});
        let (s, _, j) = generate(&base, &http, None, ok.clone()).await;
        assert_eq!(
            (s, j["error"]["type"].as_str()),
            (401, Some("invalid_request_error"))
        );
        let (s, _, j) = generate(&base, &http, Some("sk-bad-key-9999"), ok.clone()).await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (401, Some("invalid_api_key"))
        );
        assert!(
            j["error"]["message"]
                .as_str()
                .expect("message")
                .contains("sk-...9999")
        );
        let key = Some("sk-good-key-1234");
        let cases = [
            (
                json!({"model": "dall-e-3", "prompt": "x", "size": "512x512"}),
                Some("size"),
                Some("invalid_size"),
            ),
            (
                json!({"model": "dall-e-3", "prompt": "x", "n": 2}),
                Some("n"),
                None,
            ),
            (
                json!({"model": "dall-e-3", "prompt": "x".repeat(4001)}),
                Some("prompt"),
                Some("string_above_max_length"),
            ),
            (json!({"prompt": "x"}), Some("model"), None),
            (
                json!({"model": "dall-e-3", "prompt": "x", "quality": "ultra"}),
                Some("quality"),
                Some("invalid_value"),
            ),
            (
                json!({"model": "dall-e-3", "prompt": "x", "extra": 1}),
                None,
                None,
            ),
        ];
        for (body, param, code) in cases {
            let (s, _, j) = generate(&base, &http, key, body.clone()).await;
            assert_eq!(s, 400, "{body}");
            assert_eq!(j["error"]["param"].as_str(), param, "{body}: {j}");
            assert_eq!(j["error"]["code"].as_str(), code, "{body}: {j}");
        }
    }

    #[tokio::test]
    async fn knobs_drive_failures_and_stats_count_them() {
        let (base, http) = start(&[]).await;
        let cfg = json!({"openai": {"fail_next": 1, "rate_limit_next": 1, "retry_after_s": 7, "latency_ms": 50}});
        let r = http
            .put(format!("{base}/emulator/config"))
            .json(&cfg)
            .send()
            .await
            .expect("config");
        assert_eq!(r.status().as_u16(), 200);
        let bad = http
            .put(format!("{base}/emulator/config"))
            .json(&json!({"openai": {"latncy": 1}}))
            .send()
            .await
            .expect("config");
        assert_eq!(bad.status().as_u16(), 400, "typos in knobs are refused");
        let body = json!({"model": "dall-e-3", "prompt": "x"});
        let (s, h, j) = generate(&base, &http, Some("k"), body.clone()).await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (429, Some("rate_limit_exceeded"))
        );
        assert_eq!(
            h.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("7")
        );
        let (s, _, j) = generate(&base, &http, Some("k"), body.clone()).await;
        assert_eq!(
            (s, j["error"]["type"].as_str()),
            (500, Some("server_error"))
        );
        let (s, _, j) = generate(
            &base,
            &http,
            Some("k"),
            json!({"model": "dall-e-3", "prompt": "emulator-moderate me"}),
        )
        .await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (400, Some("content_policy_violation"))
        );

        let calls = (0..4).map(|_| generate(&base, &http, Some("k"), body.clone()));
        for (s, _, _) in futures::future::join_all(calls).await {
            assert_eq!(s, 200);
        }
        let stats: Value = http
            .get(format!("{base}/emulator/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        assert_eq!(stats["openai"]["requests"], 7);
        assert_eq!(stats["openai"]["in_flight"], 0);
        assert!(
            stats["openai"]["max_in_flight"].as_u64().expect("max") >= 2,
            "{stats}"
        );
        assert_eq!(stats["openai"]["by_status"]["200"], 4);

        let r = http
            .post(format!("{base}/emulator/reset"))
            .send()
            .await
            .expect("reset");
        assert_eq!(r.status().as_u16(), 204);
        let stats: Value = http
            .get(format!("{base}/emulator/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        assert_eq!(stats["openai"]["requests"], 0);
        let cfg: Value = http
            .get(format!("{base}/emulator/config"))
            .send()
            .await
            .expect("cfg")
            .json()
            .await
            .expect("json");
        assert_eq!(cfg["openai"]["latency_ms"], 0);
    }
}
