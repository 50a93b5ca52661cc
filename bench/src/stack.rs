//! The processes a scenario runs: `imagegen emulator`, `api` and `worker`s from the release binary, on a scratch
//! Postgres database and a unique Redis queue name, killed when the stack drops.

use anyhow::{Context, bail};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PG: &str = "postgres://postgres@127.0.0.1:5432";
pub const REDIS: &str = "redis://127.0.0.1:6379";
pub const API_KEY: &str = "sk-bench";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub struct Stack {
    pub bin: String,
    pub db: String,
    pub env: Vec<(String, String)>,
    pub api: String,
    pub emulator: String,
    pub api_pid: u32,
    pub emulator_pid: u32,
    pub worker_pids: Vec<u32>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

fn spawn(
    bin: &str,
    args: &[&str],
    env: &[(String, String)],
    log: &std::path::Path,
) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new(bin)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("spawn {bin} {args:?}"))
}

async fn wait_http(url: &str, within: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not answer within {within:?}")
}

impl Stack {
    /// Emulator + API (+ `workers` worker processes), with `extra` environment for all of them.
    pub async fn start(
        bin: &str,
        workers: usize,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Stack> {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let db = format!("imagegen_bench_{}", &tag[..12]);
        let admin = sqlx::PgPool::connect(&format!("{PG}/postgres")).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        let dir = std::env::temp_dir().join(format!("imagegen-bench-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let (api_port, emu_port) = (free_port(), free_port());
        let emulator = format!("http://127.0.0.1:{emu_port}");
        let mut env: Vec<(String, String)> = vec![
            // BENCH_DATABASE_PARAMS (e.g. `?sslmode=disable`) goes on the services' DATABASE_URL, for A/B runs of
            // connection settings.
            (
                "DATABASE_URL".into(),
                format!(
                    "{PG}/{db}{}",
                    std::env::var("BENCH_DATABASE_PARAMS").unwrap_or_default()
                ),
            ),
            ("REDIS_URL".into(), REDIS.into()),
            ("QUEUE_NAME".into(), format!("bench-{tag}")),
            ("OPENAI_API_KEY".into(), API_KEY.into()),
            ("OPENAI_BASE_URL".into(), format!("{emulator}/v1")),
            // Inert without FLUX_API_KEY / BFL_API_KEY: a scenario that wants those providers adds the key.
            ("FLUX_BASE_URL".into(), format!("{emulator}/v1")),
            ("BFL_BASE_URL".into(), format!("{emulator}/bfl/v1")),
            (
                "LOCAL_STORAGE_PATH".into(),
                dir.join("images").display().to_string(),
            ),
            // BENCH_LOG_LEVEL (e.g. `info`, the services' default) measures what logging costs; warn by default.
            (
                "LOG_LEVEL".into(),
                std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
            ),
            ("API_HOST".into(), "127.0.0.1".into()),
            ("API_PORT".into(), api_port.to_string()),
            ("WAIT_MAX_SECS".into(), "300".into()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), v.clone()));
        }
        let status = Command::new(bin)
            .arg("migrate")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("migrate failed");
        }
        let mut children = Vec::new();
        let emulator_child = spawn(
            bin,
            &[
                "emulator",
                "--host",
                "127.0.0.1",
                "--port",
                &emu_port.to_string(),
            ],
            &[],
            &dir.join("emulator.log"),
        )?;
        let emulator_pid = emulator_child.id();
        children.push(emulator_child);
        let api = spawn(bin, &["api"], &env, &dir.join("api.log"))?;
        let api_pid = api.id();
        children.push(api);
        let mut stack = Stack {
            bin: bin.to_owned(),
            db,
            env,
            api: format!("http://127.0.0.1:{api_port}"),
            emulator,
            api_pid,
            emulator_pid,
            worker_pids: Vec::new(),
            children,
            dir,
        };
        wait_http(
            &format!("{}/emulator/stats", stack.emulator),
            Duration::from_secs(30),
        )
        .await?;
        wait_http(
            &format!("{}/health/ready", stack.api),
            Duration::from_secs(30),
        )
        .await?;
        for _ in 0..workers {
            stack.add_worker(&[])?;
        }
        Ok(stack)
    }

    pub fn add_worker(&mut self, extra: &[(&str, String)]) -> anyhow::Result<u32> {
        let mut env = self.env.clone();
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), v.clone()));
        }
        let n = self.worker_pids.len();
        let child = spawn(
            &self.bin,
            &["worker"],
            &env,
            &self.dir.join(format!("worker-{n}.log")),
        )?;
        let pid = child.id();
        self.worker_pids.push(pid);
        self.children.push(child);
        Ok(pid)
    }

    /// Sets the knobs of the emulator's OpenAI protocol (the GPT image models).
    pub async fn emulator_config(&self, knobs: serde_json::Value) -> anyhow::Result<()> {
        self.emulator_config_for("openai", knobs).await
    }

    /// Sets the knobs of one emulator protocol: openai, azure, flux (Together) or bfl.
    pub async fn emulator_config_for(
        &self,
        protocol: &str,
        knobs: serde_json::Value,
    ) -> anyhow::Result<()> {
        let r = reqwest::Client::new()
            .put(format!("{}/emulator/config", self.emulator))
            .json(&serde_json::json!({ protocol: knobs }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("emulator config: {}", r.status());
        }
        Ok(())
    }

    pub async fn emulator_get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(reqwest::get(format!("{}{path}", self.emulator))
            .await?
            .json()
            .await?)
    }

    pub async fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&format!("{PG}/{}", self.db)).await?)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The queue's Redis keys go too (Redis here keeps everything in memory).
        if let Some((_, queue)) = self.env.iter().find(|(k, _)| k == "QUEUE_NAME")
            && let Ok(mut conn) = redis::Client::open(REDIS).and_then(|c| c.get_connection())
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{queue}*"))
                .query(&mut conn)
                .unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(chunk).query(&mut conn);
            }
        }
        let db = self.db.clone();
        // Best effort: the scratch database goes with the stack.
        let _ = Command::new("psql")
            .args([
                &format!("{PG}/postgres"),
                "-qc",
                &format!("DROP DATABASE IF EXISTS {db}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Resident-memory high-water mark of a process, in MiB (Linux).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time (user + system) a process has used so far, in seconds (Linux, 100 ticks per second).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
