//! What the Dockerfile, docker-compose.yml and k8s/ assume of the binary, checked on the real binary: the health
//! check command, migrations safe to run twice and at once, readiness that drops the moment a shutdown starts, and
//! JSON logs on stdout only.

use crate::support::{self, BIN, Options, Proc, kv, not_standalone, start};
use sqlx::PgPool;
use std::process::Stdio;
use std::time::Duration;

async fn healthcheck(url: &str) -> std::process::ExitStatus {
    tokio::process::Command::new(BIN)
        .args(["healthcheck", "--url", url, "--timeout-secs", "2"])
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run healthcheck")
}

#[tokio::test]
async fn healthcheck_exits_0_on_a_2xx_and_1_otherwise() {
    let mut emulator = Proc::spawn("emulator", &["emulator", "--port", "0"], &[]);
    let addr = emulator.listening_addr().await;
    assert_eq!(
        healthcheck(&format!("http://{addr}/emulator/stats"))
            .await
            .code(),
        Some(0)
    );
    assert_eq!(
        healthcheck(&format!("http://{addr}/no-such-page"))
            .await
            .code(),
        Some(1)
    );
    let closed = support::free_port();
    assert_eq!(
        healthcheck(&format!("http://127.0.0.1:{closed}/health/live"))
            .await
            .code(),
        Some(1)
    );
}

/// `imagegen migrate` twice at once on an empty database, then once more: every run succeeds and the schema is
/// applied exactly once (sqlx serialises runs with a Postgres advisory lock).
#[sqlx::test(migrations = false)]
async fn migrate_is_safe_to_run_concurrently_and_again(pool: PgPool) {
    let url = support::database_url(&pool);
    let run = || {
        tokio::process::Command::new(BIN)
            .arg("migrate")
            .env_clear()
            .env("DATABASE_URL", &url)
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    let (a, b) = tokio::join!(run(), run());
    for out in [a.expect("migrate a"), b.expect("migrate b")] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let again = run().await.expect("migrate again");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .expect("count");
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "sql"))
        .count();
    assert_eq!(applied, files as i64);
}

/// SIGTERM: /health/ready answers 503 at once while the API still serves for API_SHUTDOWN_DELAY_SECS, then it
/// exits cleanly.
#[sqlx::test(migrations = "./migrations")]
async fn readiness_drops_the_moment_a_shutdown_starts(pool: PgPool) {
    not_standalone!("checks the api role's own shutdown");
    let mut stack = start(
        &pool,
        Options {
            api_env: vec![kv("API_SHUTDOWN_DELAY_SECS", "3")],
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    assert_eq!(stack.get("/health/ready").await.status, 200);
    let t0 = std::time::Instant::now();
    stack.api_proc.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = stack.get("/health/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.body["status"], "stopping");
    assert_eq!(stack.get("/health/live").await.status, 200, "still serving");
    let exit = stack.api_proc.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?}");
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "served through the delay"
    );
}

/// SIGTERM while a request waits (wait mode, no worker to end its job): the request is answered (202, its job still
/// queued) before the API exits, and the API exits on its own once it has. The API's server drains what it holds.
#[sqlx::test(migrations = "./migrations")]
async fn a_waiting_request_is_answered_before_the_api_exits(pool: PgPool) {
    not_standalone!("checks the api role's own shutdown");
    let mut stack = start(
        &pool,
        Options {
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let waiting = tokio::spawn(
        stack
            .http
            .post(stack.url("/api/v1/generate"))
            .header("prefer", "wait=60")
            .json(&support::generate_body("held at shutdown"))
            .send(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !stack
        .metrics_text()
        .await
        .contains("imagegen_waiting_requests 1")
    {
        assert!(std::time::Instant::now() < deadline, "never waited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.api_proc.signal("TERM");
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered before the wait ran out")
        .expect("task")
        .expect("an answer, not a dropped connection");
    assert_eq!(answer.status(), 202);
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["status"], "queued", "{body}");
    let exit = stack.api_proc.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?}");
}

/// The api and worker write JSON lines to stdout and nothing to stderr.
#[sqlx::test(migrations = "./migrations")]
async fn api_and_worker_log_json_to_stdout_only(pool: PgPool) {
    let url = support::database_url(&pool);
    let dir = std::env::temp_dir().join(format!("imagegen-logs-{}", uuid::Uuid::new_v4()));
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("OPENAI_API_KEY", "sk-x"),
        ("LOG_LEVEL", "debug"),
        ("API_HOST", "127.0.0.1"),
        ("API_PORT", "0"),
        ("LOCAL_STORAGE_PATH", dir.to_str().expect("utf-8 path")),
    ];
    for role in ["api", "worker"] {
        let queue = format!("logs-{}", uuid::Uuid::new_v4().simple());
        let child = tokio::process::Command::new(BIN)
            .arg(role)
            .env_clear()
            .envs(env.iter().copied())
            .env("QUEUE_NAME", &queue)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let pid = child.id().expect("pid").to_string();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let out = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
            .await
            .expect("exits")
            .expect("output");
        assert!(out.status.success(), "{role}: {:?}", out.status);
        assert!(
            out.stderr.is_empty(),
            "{role} wrote to stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.lines().count() >= 2, "{role}: {stdout}");
        for line in stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{role}: not JSON ({e}): {line}"));
            assert!(
                v["level"].is_string() && v["timestamp"].is_string(),
                "{role}: {line}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
