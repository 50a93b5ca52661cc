//! A whole stack on free loopback ports: the emulator, then `api` and `worker` processes on a Postgres database and
//! a unique Redis queue name, or (E2E_MODE=standalone) one `imagegen standalone` process on SQLite and its
//! in-process queue; restarting parts of it, and what an operator does to it (`imagegen keys`, SQL counts).

use sqlx::PgPool;
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::Command;

use super::{BIN, Proc, free_port, standalone};

pub const API_KEY: &str = "sk-test-emulator-key";

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
    /// Held, never read: the emulator lives as long as the stack (its process is killed on drop).
    #[expect(dead_code, reason = "held for its lifetime only")]
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

/// The API's settings for ENABLE_AUTHENTICATION with API keys (`Stack::keys`), and the signing key download links
/// then need.
pub fn authentication_on() -> Vec<(String, String)> {
    vec![
        kv("ENABLE_AUTHENTICATION", "true"),
        kv(
            "DOWNLOAD_SIGNING_KEY",
            "e2e-signing-key-of-at-least-32-chars",
        ),
    ]
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
}
