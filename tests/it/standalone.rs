//! The one-command start: `imagegen` with no role and no configuration, in an empty directory, runs the whole
//! service on SQLite, an in-process queue and sandbox providers, and keeps its jobs and images across restarts.

use crate::support::{self, Proc, kv, png_size};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// The one setting the test must choose: a free port, since tests run side by side.
fn start(dir: &Path, port: u16) -> Proc {
    Proc::spawn_in(
        Some(dir),
        "imagegen",
        &[],
        &[kv("API_PORT", port.to_string())],
    )
}

/// The sandbox emulator's address, from the start-up line that announces it.
fn sandbox_emulator(proc: &Proc) -> String {
    let output = proc.output();
    let line = output
        .lines()
        .find(|l| l.contains("sandbox:"))
        .unwrap_or_else(|| panic!("no sandbox line in:\n{output}"));
    let value: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    value["emulator"]
        .as_str()
        .expect("emulator URL")
        .trim_end_matches("/v1")
        .to_owned()
}

async fn wait_listening(proc: &mut Proc, port: u16) -> String {
    let addr = proc.listening_addr().await;
    assert_eq!(addr, format!("127.0.0.1:{port}"));
    format!("http://{addr}")
}

#[tokio::test]
async fn an_empty_environment_runs_everything_and_keeps_jobs_across_restarts() {
    let dir = tempdir();
    let port = support::free_port();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");

    let mut first = start(&dir, port);
    let base = wait_listening(&mut first, port).await;
    // The start-up line says where everything is: the SQLite file and the pictures' directory, resolved.
    let output = first.output();
    let started = output
        .lines()
        .find(|l| l.contains("standalone: API and workers"))
        .unwrap_or_else(|| panic!("no start-up line in:\n{output}"));
    let started: serde_json::Value = serde_json::from_str(started).expect("JSON log line");
    let dir_text = dir.display().to_string();
    assert!(
        started["stores"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("{dir_text}/data/imagegen.db"))),
        "{started}"
    );
    assert!(
        started["storage"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("local:{dir_text}"))),
        "{started}"
    );
    let providers: serde_json::Value = http
        .get(format!("{base}/api/v1/providers"))
        .send()
        .await
        .expect("providers")
        .json()
        .await
        .expect("json");
    // Every provider the emulator can stand in for without configuration is sandboxed; Azure needs an endpoint and
    // deployments, so it stays unconfigured.
    for p in providers["providers"].as_array().expect("providers") {
        let expected = if p["id"] == "azure_openai" {
            (false, false)
        } else {
            (true, true)
        };
        assert_eq!(
            (p["configured"].as_bool(), p["sandbox"].as_bool()),
            (Some(expected.0), Some(expected.1)),
            "{p}"
        );
    }
    assert_eq!(
        providers["default_model"], "gpt-image-2",
        "the sandbox default is a current model"
    );

    // Wait mode through the real clients against the in-process emulator: a stored, deterministic picture.
    let body = json!({"prompt": "a lighthouse at dusk", "provider": "flux_schnell", "size": "768x768", "seed": 42});
    let generate = |body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{base}/api/v1/generate");
        async move {
            let r = http.post(url).json(&body).send().await.expect("generate");
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.expect("json")
        }
    };
    let default = generate(json!({"prompt": "a lighthouse at noon"})).await;
    assert_eq!(
        (
            default["model"].as_str(),
            default["served_by"].as_str(),
            default["sandbox"].as_bool()
        ),
        (Some("gpt-image-2"), Some("openai:gpt-image-2"), Some(true)),
        "{default}"
    );
    let job = generate(body.clone()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["sandbox"], true, "{job}");
    let image_url = job["images"][0]["url"].as_str().expect("url").to_owned();
    let picture = http
        .get(&image_url)
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(png_size(&picture), (768, 768));
    let again = generate(body).await;
    assert_eq!(
        again["images"][0]["sha256"], job["images"][0]["sha256"],
        "same prompt and seed, same picture"
    );
    assert!(dir.join("data/imagegen.db").exists());
    assert!(dir.join("generated_images").exists());

    // A job still running when the process dies...
    let emulator = sandbox_emulator(&first);
    let r = http
        .put(format!("{emulator}/emulator/config"))
        .json(&json!({"flux": {"latency_ms": 30000}}))
        .send()
        .await
        .expect("emulator config");
    assert!(r.status().is_success());
    let pending: serde_json::Value = http
        .post(format!("{base}/api/v1/jobs"))
        .json(&json!({"prompt": "interrupted", "provider": "flux_schnell", "size": "512x512"}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let pending_id = pending["job_id"].as_str().expect("job id").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r: serde_json::Value = http
            .get(format!("{base}/api/v1/jobs/{pending_id}"))
            .send()
            .await
            .expect("poll")
            .json()
            .await
            .expect("json");
        if r["status"] == "running" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never started: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10)).await;

    // ...after a restart: the finished job and its image are still there, and the interrupted one is taken up.
    let mut second = start(&dir, port);
    let base = wait_listening(&mut second, port).await;
    let job_id = job["job_id"].as_str().expect("job id");
    let kept: serde_json::Value = http
        .get(format!("{base}/api/v1/jobs/{job_id}"))
        .send()
        .await
        .expect("get job")
        .json()
        .await
        .expect("json");
    assert_eq!(kept["status"], "succeeded", "{kept}");
    let kept_picture = http
        .get(&image_url)
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(kept_picture, picture);
    let resumed: serde_json::Value = http
        .get(format!("{base}/api/v1/jobs/{pending_id}?wait=30"))
        .send()
        .await
        .expect("long-poll")
        .json()
        .await
        .expect("json");
    assert_eq!(resumed["status"], "succeeded", "{resumed}");
    assert!(
        second.output().contains("resuming jobs left unfinished"),
        "{}",
        second.output()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("imagegen-standalone-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Given DATABASE_URL and REDIS_URL, the same process runs on Postgres and Redis like a deployment.
#[sqlx::test(migrations = "./migrations")]
async fn given_postgres_and_redis_it_uses_them(pool: sqlx::PgPool) {
    let dir = tempdir();
    let port = support::free_port();
    let queue = format!("imagegen-test-{}", uuid::Uuid::new_v4().simple());
    let mut proc = Proc::spawn_in(
        Some(&dir),
        "imagegen",
        &["standalone"],
        &[
            kv("API_PORT", port.to_string()),
            kv("DATABASE_URL", support::database_url(&pool)),
            kv("REDIS_URL", support::redis_url()),
            kv("QUEUE_NAME", queue),
        ],
    );
    let base = wait_listening(&mut proc, port).await;
    assert!(
        proc.output().contains("database=postgres postgres://")
            && proc.output().contains("queue=redis redis://"),
        "{}",
        proc.output()
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/generate"))
        .json(&json!({"prompt": "on the real stores"}))
        .send()
        .await
        .expect("generate");
    assert_eq!(r.status(), 200);
    let job: serde_json::Value = r.json().await.expect("json");
    assert_eq!(job["status"], "succeeded", "{job}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM images")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 1, "the image is recorded in Postgres");
    assert!(
        !dir.join("data").exists(),
        "no SQLite file when Postgres is given"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `imagegen keys` without DATABASE_URL works on the standalone mode's own SQLite file, so the key it makes is
/// accepted by the service started in the same directory.
#[tokio::test]
async fn keys_default_to_the_standalone_database() {
    let dir = tempdir();
    let keys = |args: &[&str]| {
        let out = std::process::Command::new(support::BIN)
            .arg("keys")
            .args(args)
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_LEVEL", "warn")
            .output()
            .expect("imagegen keys");
        assert!(
            out.status.success(),
            "imagegen keys {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let key = keys(&["create", "--owner", "team-x"]);
    assert!(key.starts_with("igk_"), "{key}");
    assert!(keys(&["list"]).contains("team-x"));
    let port = support::free_port();
    let mut service = Proc::spawn_in(
        Some(&dir),
        "imagegen",
        &[],
        &[
            kv("API_PORT", port.to_string()),
            kv("ENABLE_AUTHENTICATION", "true"),
            kv(
                "DOWNLOAD_SIGNING_KEY",
                "standalone-keys-signing-key-of-32-chars",
            ),
        ],
    );
    let base = wait_listening(&mut service, port).await;
    let http = reqwest::Client::new();
    let jobs = http
        .get(format!("{base}/api/v1/jobs"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(
        jobs.status(),
        200,
        "the key made without DATABASE_URL is the service's"
    );
    drop(service);
    let _ = std::fs::remove_dir_all(&dir);
}
