//! End-to-end harness: starts the real `imagegen` binary as `emulator`, `api` and `worker` processes on free
//! loopback ports, against a fresh Postgres database (sqlx::test) and a unique Redis queue name, and drives them
//! over HTTP like a client. Set TEST_LOG=1 to see the processes' logs.

#![allow(dead_code)]

use sqlx::PgPool;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub const BIN: &str = env!("CARGO_BIN_EXE_imagegen");
pub const API_KEY: &str = "sk-test-emulator-key";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The suite runs twice (scripts/test.sh): api + worker processes on Postgres and Redis, then with
/// E2E_MODE=standalone, where one `imagegen standalone` process on SQLite and an in-process queue plays both roles
/// (tests that need several processes or Redis itself say so and are skipped there).
pub fn standalone() -> bool {
    std::env::var("E2E_MODE").is_ok_and(|m| m == "standalone")
}

/// Skips the rest of a test in standalone mode, saying why.
#[macro_export]
macro_rules! not_standalone {
    ($why:expr) => {
        if support::standalone() {
            eprintln!("skipped in standalone mode: {}", $why);
            return;
        }
    };
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The URL of the per-test database that sqlx::test created.
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set by scripts/test.sh");
    let base = base.split('?').next().unwrap_or(&base).to_owned();
    let server = base
        .rsplit_once('/')
        .map(|(s, _)| s.to_owned())
        .unwrap_or(base);
    let db = pool
        .connect_options()
        .get_database()
        .expect("test database name")
        .to_owned();
    format!("{server}/{db}")
}

/// A child process whose stdout/stderr lines are kept (and echoed with TEST_LOG).
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    addr: watch::Receiver<Option<String>>,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], env: &[(String, String)]) -> Proc {
        Self::spawn_in(None, name, args, env)
    }

    /// Like `spawn`, in the working directory `dir`.
    pub fn spawn_in(
        dir: Option<&std::path::Path>,
        name: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Proc {
        let mut cmd = Command::new(BIN);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn imagegen");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let echo = std::env::var("TEST_LOG").is_ok();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            let tx = tx.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if echo {
                        eprintln!("[{name}] {line}");
                    }
                    if tx.borrow().is_none()
                        && line.contains("listening")
                        && !line.contains("metrics listening")
                        && let Some(addr) = find_addr(&line)
                    {
                        let _ = tx.send(Some(addr));
                    }
                    lines.lock().expect("log lock").push(line);
                }
            });
        }
        Proc {
            child,
            lines,
            addr: rx,
            name: name.to_owned(),
        }
    }

    /// The `127.0.0.1:PORT` the process said it listens on.
    pub async fn listening_addr(&mut self) -> String {
        let found = {
            let wait = self.addr.wait_for(Option::is_some);
            match tokio::time::timeout(START_TIMEOUT, wait).await {
                Ok(Ok(addr)) => addr.clone(),
                _ => None,
            }
        };
        found.unwrap_or_else(|| {
            panic!(
                "{} did not report a listening address; output:\n{}",
                self.name,
                self.output()
            )
        })
    }

    pub fn output(&self) -> String {
        self.lines.lock().expect("log lock").join("\n")
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running child").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not exit within {within:?}; output:\n{}",
                    self.name,
                    self.output()
                )
            })
            .expect("wait")
    }
}

fn find_addr(line: &str) -> Option<String> {
    let start = line.find("127.0.0.1:")?;
    let rest = &line[start + "127.0.0.1:".len()..];
    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!port.is_empty()).then(|| format!("127.0.0.1:{port}"))
}

/// A port nobody listens on (for a dependency that is down).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub struct Options {
    pub emulator_args: Vec<String>,
    pub api_env: Vec<(String, String)>,
    pub worker_env: Vec<(String, String)>,
    pub start_worker: bool,
    pub redis_url: String,
    /// Point AZURE_OPENAI_ENDPOINT at the emulator (api and worker).
    pub azure_endpoint: bool,
    /// Point FLUX_BASE_URL at the emulator (api and worker).
    pub flux_endpoint: bool,
    /// ... at its Black Forest Labs API instead (FLUX_PROTOCOL=bfl).
    pub flux_bfl: bool,
    /// Point BFL_BASE_URL at the emulator's Black Forest Labs API (BFL_API_KEY is the test's to set).
    pub bfl_endpoint: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            emulator_args: vec!["--api-key".into(), API_KEY.into()],
            api_env: Vec::new(),
            worker_env: Vec::new(),
            start_worker: true,
            redis_url: redis_url(),
            azure_endpoint: false,
            flux_endpoint: false,
            flux_bfl: false,
            bfl_endpoint: false,
        }
    }
}

pub struct Stack {
    pub api: String,
    pub emulator: String,
    pub http: reqwest::Client,
    pub storage_dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub api_proc: Proc,
    pub worker_proc: Option<Proc>,
    pub emulator_proc: Proc,
    /// The API process's whole environment (it is restarted with it).
    api_env: Vec<(String, String)>,
    /// Standalone mode: the process's whole environment (it is restarted with it) and its SQLite URL.
    standalone_env: Option<Vec<(String, String)>>,
    sqlite_url: Option<String>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.storage_dir);
        if self.sqlite_url.is_some() {
            let mut db_dir = self.storage_dir.clone().into_os_string();
            db_dir.push("-db");
            let _ = std::fs::remove_dir_all(db_dir);
        }
    }
}

pub fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_owned(), v.into())
}

pub async fn start(pool: &PgPool, options: Options) -> Stack {
    start_on(database_url(pool), options).await
}

/// A stack on a database given by URL (a test's own Postgres server).
pub async fn start_on(database_url: String, options: Options) -> Stack {
    let mut emu_args: Vec<&str> = vec!["emulator", "--host", "127.0.0.1", "--port", "0"];
    emu_args.extend(options.emulator_args.iter().map(String::as_str));
    let mut emulator_proc = Proc::spawn("emulator", &emu_args, &[]);
    let emulator = format!("http://{}", emulator_proc.listening_addr().await);

    let storage_dir = std::env::temp_dir().join(format!("imagegen-e2e-{}", uuid::Uuid::new_v4()));
    let queue = format!("imagegen-test-{}", uuid::Uuid::new_v4().simple());
    let mut env = vec![
        kv("DATABASE_URL", database_url),
        kv("REDIS_URL", options.redis_url.clone()),
        kv("QUEUE_NAME", queue),
        kv("OPENAI_API_KEY", API_KEY),
        kv("OPENAI_BASE_URL", format!("{emulator}/v1")),
        kv(
            "LOCAL_STORAGE_PATH",
            storage_dir.to_string_lossy().to_string(),
        ),
        kv("LOG_LEVEL", "info"),
        kv("ENVIRONMENT", "test"),
    ];
    if options.azure_endpoint {
        env.push(kv("AZURE_OPENAI_ENDPOINT", emulator.clone()));
    }
    if options.flux_bfl {
        env.extend([
            kv("FLUX_BASE_URL", format!("{emulator}/bfl/v1")),
            kv("FLUX_PROTOCOL", "bfl"),
        ]);
    } else if options.flux_endpoint {
        env.push(kv("FLUX_BASE_URL", format!("{emulator}/v1")));
    }
    if options.bfl_endpoint {
        env.push(kv("BFL_BASE_URL", format!("{emulator}/bfl/v1")));
    }

    let worker_defaults = [kv("WORKER_CONCURRENCY", "4"), kv("JOB_LEASE_SECS", "10")];
    if standalone() {
        // Beside the storage directory, not in it: tests look for stray objects there.
        let sqlite_url = format!("sqlite:{}-db/imagegen.db", storage_dir.to_string_lossy());
        let mut all: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k != "REDIS_URL" && k != "DATABASE_URL")
            .cloned()
            .collect();
        all.push(kv("DATABASE_URL", sqlite_url.clone()));
        // Providers the test did not point at its emulator stay unconfigured, as in the other mode.
        all.push(kv("SANDBOX", "false"));
        // A fixed port, so a restart keeps the address.
        all.extend([
            kv("API_HOST", "127.0.0.1"),
            kv("API_PORT", free_port().to_string()),
        ]);
        all.extend(worker_defaults);
        all.extend(options.api_env.iter().cloned());
        all.extend(options.worker_env.iter().cloned());
        if !options.start_worker {
            all.push(kv("STANDALONE_WORKER", "false"));
        }
        let mut proc = Proc::spawn("standalone", &["standalone"], &all);
        let api = format!("http://{}", proc.listening_addr().await);
        return Stack {
            api,
            emulator,
            http: http_client(),
            storage_dir,
            env,
            api_proc: proc,
            worker_proc: None,
            emulator_proc,
            api_env: Vec::new(),
            standalone_env: Some(all),
            sqlite_url: Some(sqlite_url),
        };
    }

    let mut api_env = env.clone();
    api_env.extend([kv("API_HOST", "127.0.0.1"), kv("API_PORT", "0")]);
    api_env.extend(options.api_env.iter().cloned());
    let mut api_proc = Proc::spawn("api", &["api"], &api_env);
    let api = format!("http://{}", api_proc.listening_addr().await);

    let worker_proc = options.start_worker.then(|| {
        let mut worker_env = env.clone();
        worker_env.extend(worker_defaults);
        worker_env.extend(options.worker_env.iter().cloned());
        Proc::spawn("worker", &["worker"], &worker_env)
    });

    Stack {
        api,
        emulator,
        http: http_client(),
        storage_dir,
        env,
        api_proc,
        worker_proc,
        emulator_proc,
        api_env,
        standalone_env: None,
        sqlite_url: None,
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

impl Stack {
    /// Starts the workers of a stack started without them: a worker process, or in standalone mode a restart of
    /// the process with its workers on (the jobs it recorded are taken up at start).
    pub async fn start_workers(&mut self) {
        let Some(env) = self.standalone_env.as_mut() else {
            let mut env = self.env.clone();
            env.extend([kv("WORKER_CONCURRENCY", "4"), kv("JOB_LEASE_SECS", "10")]);
            self.worker_proc = Some(Proc::spawn("worker", &["worker"], &env));
            return;
        };
        env.retain(|(k, _)| k != "STANDALONE_WORKER");
        let env = env.clone();
        self.restart_standalone(&env).await;
    }

    /// Restarts the API (in standalone mode, the process) with `extra` added to its environment; the database and
    /// storage stay.
    pub async fn restart_api_with(&mut self, extra: &[(String, String)]) {
        if let Some(env) = self.standalone_env.as_mut() {
            env.extend(extra.iter().cloned());
            let env = env.clone();
            self.restart_standalone(&env).await;
            return;
        }
        self.api_env.extend(extra.iter().cloned());
        self.api_proc.signal("TERM");
        self.api_proc.wait_exit(Duration::from_secs(30)).await;
        self.api_proc = Proc::spawn("api", &["api"], &self.api_env);
        self.api = format!("http://{}", self.api_proc.listening_addr().await);
    }

    /// Standalone mode: stops the process (SIGTERM) and starts it again with `env`.
    pub async fn restart_standalone(&mut self, env: &[(String, String)]) {
        self.api_proc.signal("TERM");
        self.api_proc.wait_exit(Duration::from_secs(30)).await;
        self.api_proc = Proc::spawn("standalone", &["standalone"], env);
        self.api = format!("http://{}", self.api_proc.listening_addr().await);
    }

    /// The DATABASE_URL a CLI command (`imagegen keys`) uses to reach this stack's database: the SQLite file in
    /// standalone mode, `None` otherwise (the stack's own URL).
    fn database_url_for_cli(&self) -> Option<String> {
        self.sqlite_url.clone()
    }

    /// Runs `imagegen keys <args>` on this stack's database (as an operator would) and returns what it printed:
    /// the new key for `create`, the table for `list`.
    pub async fn keys(&self, args: &[&str]) -> String {
        let database_url = self.database_url_for_cli().unwrap_or_else(|| {
            self.env
                .iter()
                .find(|(k, _)| k == "DATABASE_URL")
                .map(|(_, v)| v.clone())
                .expect("database url")
        });
        let out = Command::new(BIN)
            .arg("keys")
            .args(args)
            .env_clear()
            .env("DATABASE_URL", database_url)
            .env("LOG_LEVEL", "warn")
            .output()
            .await
            .expect("imagegen keys");
        assert!(
            out.status.success(),
            "imagegen keys {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A `SELECT count(*) ...` (SQL both databases accept) on this stack's database.
    pub async fn count(&self, pool: &PgPool, sql: &str) -> i64 {
        match &self.sqlite_url {
            Some(url) => {
                let sqlite = sqlx::SqlitePool::connect(url).await.expect("open sqlite");
                let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_one(&sqlite)
                    .await
                    .expect("count");
                sqlite.close().await;
                n
            }
            None => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(pool)
                .await
                .expect("count"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    pub async fn emulator_config(&self, openai: serde_json::Value) {
        self.emulator_config_for("openai", openai).await;
    }

    pub async fn emulator_config_for(&self, protocol: &str, knobs: serde_json::Value) {
        let r = self
            .http
            .put(format!("{}/emulator/config", self.emulator))
            .json(&serde_json::json!({ protocol: knobs }))
            .send()
            .await
            .expect("emulator config");
        assert!(r.status().is_success(), "emulator config: {}", r.status());
    }

    pub async fn emulator_stats(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/emulator/stats", self.emulator))
            .send()
            .await
            .expect("emulator stats")
            .json()
            .await
            .expect("stats json")
    }

    /// Waits (bounded) until the emulator has a call of `protocol` in flight.
    pub async fn until_provider_busy(&self, protocol: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.emulator_stats().await[protocol]["in_flight"] != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {protocol} call started"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn emulator_requests(&self) -> u64 {
        self.emulator_stats().await["openai"]["requests"]
            .as_u64()
            .expect("requests count")
    }

    /// POST JSON with optional extra headers; returns status, headers and JSON body (Null if not JSON).
    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.http.post(self.url(path)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::from(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::from(self.http.get(self.url(path)).send().await.expect("request")).await
    }

    /// Polls a job (with long-polls, not sleeps) until it is terminal.
    pub async fn wait_terminal(&self, job_id: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.get(&format!("/api/v1/jobs/{job_id}?wait=10")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let status = r.body["status"].as_str().unwrap_or_default().to_owned();
            if !["queued", "running"].contains(&status.as_str()) {
                return r.body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job_id} never finished: {}",
                r.body
            );
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Reply {
    pub async fn from(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the seed's error shape, and that the body's correlation id is the one in the header.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "unexpected status, body: {}",
            self.body
        );
        assert_eq!(self.body["success"], false, "{}", self.body);
        assert_eq!(self.body["error"], code, "{}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        let corr = self.body["correlation_id"]
            .as_str()
            .expect("correlation_id in error body");
        assert_eq!(Some(corr), self.header("x-correlation-id"), "{}", self.body);
    }
}

/// Decodes a PNG and returns its dimensions.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().expect("a valid PNG");
    let info = reader.info();
    (info.width, info.height)
}

pub fn generate_body(prompt: &str) -> serde_json::Value {
    serde_json::json!({ "prompt": prompt, "provider": "dalle3", "size": "1024x1024", "quality": "hd", "style": "vivid" })
}

/// A Redis of our own on a free port, which a test may flush, stop and start again.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "imagegen-redis-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let redis = PrivateRedis { port, dir };
        redis.up();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn up(&self) {
        let status = std::process::Command::new("redis-server")
            .args([
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &self.dir.to_string_lossy(),
            ])
            .status()
            .expect("redis-server");
        assert!(status.success(), "redis-server did not start");
        for _ in 0..100 {
            if self.cli(&["ping"]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis did not come up");
    }

    pub fn down(&self) {
        let _ = self.cli(&["shutdown", "nosave"]);
    }

    pub fn flush(&self) {
        assert!(self.cli(&["flushall"]), "flushall");
    }

    fn cli(&self, args: &[&str]) -> bool {
        std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("ERR"))
            .unwrap_or(false)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Postgres server of our own (initdb in a temp dir, trust auth, a free port), which a test may stop and start.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries (scripts/services.sh installs them)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "imagegen-pg-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("pg dir");
        let pg = PrivatePostgres { port, dir, bin };
        pg.as_postgres(&format!("chown postgres {0}", pg.dir.display()), true);
        pg.as_postgres(
            &format!(
                "{}/initdb -D {}/data -A trust -U postgres >/dev/null",
                pg.bin.display(),
                pg.dir.display()
            ),
            false,
        );
        pg.up();
        pg
    }

    /// Runs a shell command as the postgres user (Postgres refuses to run as root), or as ourselves.
    fn as_postgres(&self, command: &str, as_self: bool) {
        let status = if as_self || !is_root() {
            std::process::Command::new("sh")
                .args(["-c", command])
                .status()
        } else {
            std::process::Command::new("su")
                .args(["postgres", "-c", command])
                .status()
        }
        .expect("shell");
        assert!(status.success(), "failed: {command}");
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn up(&self) {
        self.as_postgres(
            &format!(
                "{}/pg_ctl -D {1}/data -l {1}/log -w -o \"-c listen_addresses=127.0.0.1 -p {2} -k {1}\" start >/dev/null",
                self.bin.display(),
                self.dir.display(),
                self.port
            ),
            false,
        );
    }

    pub fn down(&self) {
        self.as_postgres(
            &format!(
                "{}/pg_ctl -D {}/data -m fast -w stop >/dev/null",
                self.bin.display(),
                self.dir.display()
            ),
            false,
        );
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("su")
            .args([
                "postgres",
                "-c",
                &format!(
                    "{}/pg_ctl -D {}/data -m immediate stop",
                    self.bin.display(),
                    self.dir.display()
                ),
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
