//! Fault injection: real processes under a load of jobs, one fault per case, then an audit from Postgres and
//! storage: every accepted job terminal, none lost, none completed twice, no orphaned objects (an object is accounted
//! for when it is a recorded image, or its sidecar, or an edit input a `job_inputs` row names). Each case prints a
//! summary line (see them with `cargo nextest run --test it faults:: --no-capture`).

use crate::support::{self, Options, Stack, filled_png, kv, multipart, sha256_hex, start};
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const LOAD: usize = 120;

/// What the audit found.
#[derive(Debug)]
struct Audit {
    accepted: usize,
    succeeded: usize,
    other_terminal: usize,
    lost: usize,
    duplicated: usize,
    orphans: usize,
}

impl Audit {
    fn print(&self, case: &str, recovery: Duration) {
        eprintln!(
            "fault-case {case}: accepted={} succeeded={} other_terminal={} lost={} duplicated={} orphans={} recovery={:.1}s",
            self.accepted,
            self.succeeded,
            self.other_terminal,
            self.lost,
            self.duplicated,
            self.orphans,
            recovery.as_secs_f64()
        );
    }

    /// Nothing lost, duplicated or orphaned, and at least `submitted` jobs accepted: the submissions made while every
    /// dependency was up (without this a case would pass with an API that refused everything).
    fn assert_clean(&self, submitted: usize) {
        assert!(
            self.accepted >= submitted,
            "only {} of the {submitted} submissions made while everything was up were accepted: {self:?}",
            self.accepted
        );
        assert_eq!(
            (self.lost, self.duplicated, self.orphans),
            (0, 0, 0),
            "{self:?}"
        );
        assert_eq!(
            self.succeeded + self.other_terminal,
            self.accepted,
            "{self:?}"
        );
    }
}

/// Every stored object under `root`: its file stem (an image's id, for images and their sidecars) and its key (the
/// path under the root, which edit inputs are recorded by).
fn stored_objects(
    root: &std::path::Path,
    dir: &std::path::Path,
    out: &mut HashSet<(String, String)>,
) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stored_objects(root, &p, out);
            } else if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                let key = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.insert((stem.to_owned(), key));
            }
        }
    }
}

/// Waits (bounded) for every accepted job to end, then audits Postgres and storage.
async fn audit(pool: &PgPool, stack: &Stack, accepted: &[String], within: Duration) -> Audit {
    let deadline = Instant::now() + within;
    loop {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
                .fetch_one(pool)
                .await
                .expect("count");
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ids: Vec<uuid::Uuid> = accepted.iter().map(|s| s.parse().expect("uuid")).collect();
    let rows: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, status::text FROM jobs WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await
            .expect("jobs");
    let succeeded = rows.iter().filter(|(_, s)| s == "succeeded").count();
    let other_terminal = rows
        .iter()
        .filter(|(_, s)| ["failed", "moderated", "canceled"].contains(&s.as_str()))
        .count();
    let duplicated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM images GROUP BY job_id \
           HAVING count(*) > max((SELECT (request->>'num_images')::int FROM jobs j WHERE j.id = job_id))) d",
    )
    .fetch_one(pool)
    .await
    .expect("duplicates");
    // Objects a dead worker left are deleted by the reconciler's sweep: give it a few passes.
    let sweep_deadline = Instant::now() + Duration::from_secs(10);
    let orphans = loop {
        let in_db: HashSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM images")
            .fetch_all(pool)
            .await
            .expect("images")
            .into_iter()
            .map(|u| u.to_string())
            .collect();
        let inputs: HashSet<String> = sqlx::query_scalar::<_, String>(
            "SELECT storage_key FROM job_inputs WHERE storage_key IS NOT NULL",
        )
        .fetch_all(pool)
        .await
        .expect("job inputs")
        .into_iter()
        .collect();
        let mut on_disk = HashSet::new();
        stored_objects(&stack.storage_dir, &stack.storage_dir, &mut on_disk);
        let orphans = on_disk
            .iter()
            .filter(|(stem, key)| !in_db.contains(stem) && !inputs.contains(key))
            .count();
        if orphans == 0 || Instant::now() > sweep_deadline {
            break orphans;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    Audit {
        accepted: accepted.len(),
        succeeded,
        other_terminal,
        lost: accepted.len() - succeeded - other_terminal,
        duplicated: usize::try_from(duplicated).unwrap_or(usize::MAX),
        orphans,
    }
}

/// Submits `n` jobs as fast as the API takes them; returns the accepted ids (a 503 is not an acceptance).
async fn submit_load(stack: &Stack, n: usize, tag: &str) -> Vec<String> {
    let posts = (0..n).map(|i| {
        stack.post(
            "/api/v1/jobs",
            json!({"prompt": format!("{tag} {i}")}),
            &[("Prefer", "respond-async")],
        )
    });
    futures::future::join_all(posts)
        .await
        .into_iter()
        .filter(|r| r.status == 202)
        .filter_map(|r| r.body["job_id"].as_str().map(str::to_owned))
        .collect()
}

fn fast_recovery() -> Vec<(String, String)> {
    vec![
        kv("RECONCILE_QUEUED_AFTER", "2"),
        kv("RECONCILE_INTERVAL_SECS", "1"),
        kv("JOB_LEASE_SECS", "6"),
    ]
}

async fn until_started(stack: &Stack, pool: &PgPool, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status <> 'queued'")
            .fetch_one(pool)
            .await
            .expect("count");
        if done >= n || Instant::now() > deadline {
            return;
        }
        let _ = stack;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn sigkill_a_worker_under_load(pool: PgPool) {
    let options = Options {
        worker_env: fast_recovery(),
        ..Options::default()
    };
    let mut stack = start(&pool, options).await;
    stack.emulator_config(json!({"latency_ms": 50})).await;
    let accepted = submit_load(&stack, LOAD, "kill").await;
    until_started(&stack, &pool, 20).await;
    let fault = Instant::now();
    let worker = stack.worker_proc.as_mut().expect("worker");
    worker.signal("KILL");
    worker.wait_exit(Duration::from_secs(10)).await;
    let mut env = stack.env.clone();
    env.extend(fast_recovery());
    let _replacement = support::Proc::spawn("worker-2", &["worker"], &env);
    let result = audit(&pool, &stack, &accepted, Duration::from_secs(90)).await;
    result.print("sigkill-worker", fault.elapsed());
    result.assert_clean(LOAD);
    assert_eq!(result.succeeded, LOAD);
}

#[sqlx::test(migrations = "./migrations")]
async fn redis_restarted_empty_under_load(pool: PgPool) {
    let redis = support::PrivateRedis::start();
    let options = Options {
        redis_url: redis.url(),
        worker_env: fast_recovery(),
        ..Options::default()
    };
    let stack = start(&pool, options).await;
    stack.emulator_config(json!({"latency_ms": 50})).await;
    let mut accepted = submit_load(&stack, LOAD, "before").await;
    until_started(&stack, &pool, 20).await;
    let fault = Instant::now();
    redis.down();
    // Submissions while Redis is down are refused (503), not half-accepted.
    let during = submit_load(&stack, 10, "during").await;
    assert!(
        during.is_empty(),
        "accepted while Redis was down: {during:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.up();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.get("/health/ready").await.status != 200 {
        assert!(Instant::now() < deadline, "API never became ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    accepted.extend(submit_load(&stack, 20, "after").await);
    let result = audit(&pool, &stack, &accepted, Duration::from_secs(90)).await;
    result.print("redis-restart-empty", fault.elapsed());
    result.assert_clean(LOAD + 20);
}

#[sqlx::test(migrations = "./migrations")]
async fn rolling_deploy_sigterm_under_load(pool: PgPool) {
    let options = Options {
        worker_env: fast_recovery(),
        ..Options::default()
    };
    let mut stack = start(&pool, options).await;
    stack.emulator_config(json!({"latency_ms": 100})).await;
    let accepted = submit_load(&stack, LOAD, "deploy").await;
    until_started(&stack, &pool, 10).await;
    // New version first, then the old one is told to stop; it finishes what it runs and exits 0.
    let mut env = stack.env.clone();
    env.extend(fast_recovery());
    let _new = support::Proc::spawn("worker-new", &["worker"], &env);
    let fault = Instant::now();
    let old = stack.worker_proc.as_mut().expect("worker");
    old.signal("TERM");
    let status = old.wait_exit(Duration::from_secs(40)).await;
    assert!(status.success(), "old worker exit: {status:?}");
    let result = audit(&pool, &stack, &accepted, Duration::from_secs(90)).await;
    result.print("rolling-sigterm", fault.elapsed());
    result.assert_clean(LOAD);
    assert_eq!(result.succeeded, LOAD);
}

#[sqlx::test(migrations = "./migrations")]
async fn every_message_delivered_twice(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let accepted = submit_load(&stack, LOAD, "twice").await;
    // A second message for every job, as a duplicate delivery would make.
    let queue_name = stack
        .env
        .iter()
        .find(|(k, _)| k == "QUEUE_NAME")
        .map(|(_, v)| v.clone())
        .expect("queue name");
    let (_, conn) = imagegen_shared::queue::redis_connection(&support::redis_url()).expect("redis");
    let queue = imagegen_shared::queue::JobQueue::new(conn, &queue_name);
    for id in &accepted {
        let msg = imagegen_shared::queue::JobMessage {
            job_id: id.parse().expect("id"),
            correlation_id: "dup".into(),
        };
        queue.push(msg).await.expect("push duplicate");
    }
    let fault = Instant::now();
    let mut env = stack.env.clone();
    env.push(kv("WORKER_CONCURRENCY", "8"));
    let _w1 = support::Proc::spawn("worker-1", &["worker"], &env);
    let _w2 = support::Proc::spawn("worker-2", &["worker"], &env);
    let result = audit(&pool, &stack, &accepted, Duration::from_secs(90)).await;
    result.print("duplicate-delivery", fault.elapsed());
    result.assert_clean(LOAD);
    assert_eq!(
        stack.emulator_requests().await as usize,
        LOAD,
        "each job called the provider once"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn a_flaky_provider_under_load(pool: PgPool) {
    let options = Options {
        api_env: vec![kv("PROVIDER_MAX_ATTEMPTS", "6")],
        worker_env: vec![kv("BREAKER_FAILURES", "1000")],
        ..Options::default()
    };
    let stack = start(&pool, options).await;
    stack.emulator_config(json!({"latency_ms": 20, "error_rate": 0.3, "error_status": 503, "rate_limit_rate": 0.05, "retry_after_s": 1})).await;
    let fault = Instant::now();
    let accepted = submit_load(&stack, LOAD, "flaky").await;
    let result = audit(&pool, &stack, &accepted, Duration::from_secs(120)).await;
    result.print("flaky-provider", fault.elapsed());
    result.assert_clean(LOAD);
    assert!(result.succeeded >= LOAD * 9 / 10, "{result:?}");
}

/// A database `imagegen` on `pg`, migrated by the binary under test; its URL.
async fn migrated_imagegen_db(pg: &support::PrivatePostgres) -> String {
    let admin: PgPool = sqlx::PgPool::connect(&pg.url("postgres"))
        .await
        .expect("connect");
    sqlx::query("CREATE DATABASE imagegen")
        .execute(&admin)
        .await
        .expect("create db");
    admin.close().await;
    let url = pg.url("imagegen");
    let out = std::process::Command::new(support::BIN)
        .arg("migrate")
        .env_clear()
        .env("DATABASE_URL", &url)
        .output()
        .expect("migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    url
}

#[tokio::test]
async fn postgres_stopped_and_started_under_load() {
    let pg = support::PrivatePostgres::start();
    let url = migrated_imagegen_db(&pg).await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let options = Options {
        worker_env: fast_recovery(),
        ..Options::default()
    };
    let stack = support::start_on(url.clone(), options).await;
    stack.emulator_config(json!({"latency_ms": 100})).await;
    let accepted = submit_load(&stack, 60, "before").await;
    until_started(&stack, &pool, 10).await;

    let fault = Instant::now();
    pool.close().await;
    pg.down();
    let r = stack
        .post(
            "/api/v1/jobs",
            json!({"prompt": "while postgres is down"}),
            &[],
        )
        .await;
    r.assert_error(503, "service_unavailable");
    assert!(r.header("retry-after").is_some());
    assert_eq!(stack.get("/health/ready").await.status, 503);
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.up();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.get("/health/ready").await.status != 200 {
        assert!(Instant::now() < deadline, "API never became ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered = fault.elapsed();
    let pool = sqlx::PgPool::connect(&url).await.expect("reconnect");
    let mut all = accepted;
    all.extend(submit_load(&stack, 20, "after").await);
    let result = audit(&pool, &stack, &all, Duration::from_secs(90)).await;
    result.print("postgres-outage", recovered);
    result.assert_clean(60 + 20);
}

/// Wait mode records its job without waiting for the disk (the client is to hear of it with its outcome, whose
/// commit flushes it). A wait that runs out answers 202 with the job before that, so it must make the job durable
/// first. Postgres' WAL writer (the only process that flushes commits made without a flush) is stopped, the waits
/// run out, then it is killed, which Postgres handles as a crash (every process restarted, whatever WAL is not on
/// disk gone): every job answered is there after the recovery.
#[tokio::test]
async fn a_job_answered_before_its_outcome_survives_a_postgres_crash() {
    let pg = support::PrivatePostgres::start();
    let url = migrated_imagegen_db(&pg).await;
    let wal_writer: i32 =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'")
            .fetch_one(&sqlx::PgPool::connect(&url).await.expect("connect"))
            .await
            .expect("the WAL writer's pid");
    let stack = support::start_on(
        url.clone(),
        Options {
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), wal_writer.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {wal_writer}");
    };
    signal("STOP");
    let posts = (0..8).map(|i| {
        stack.post(
            "/api/v1/generate",
            json!({"prompt": format!("answered before its outcome {i}")}),
            &[("Prefer", "wait=1")],
        )
    });
    let answers = futures::future::join_all(posts).await;
    let mut ids = Vec::new();
    for r in &answers {
        assert_eq!(r.status, 202, "the wait ran out: {}", r.body);
        ids.push(r.body["job_id"].as_str().expect("job_id").to_owned());
    }
    signal("KILL");
    let deadline = Instant::now() + Duration::from_secs(60);
    let found: i64 = loop {
        // Connections fail while Postgres recovers.
        let counted = async {
            let pool = sqlx::PgPool::connect(&url).await?;
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id::text = ANY($1)")
                .bind(&ids)
                .fetch_one(&pool)
                .await
        };
        match counted.await {
            Ok(n) => break n,
            Err(e) => {
                assert!(Instant::now() < deadline, "Postgres did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(
        found,
        ids.len() as i64,
        "every job answered survived the crash"
    );
}

/// SIGKILL a worker while it runs edit jobs (multipart uploads with a mask): the jobs it held are taken up by
/// another worker, whose calls send the same stored inputs. Every provider call of every job (the emulator records
/// each edit call with the SHA-256 of its inputs) carried exactly the image and mask that job was submitted with.
#[sqlx::test(migrations = "./migrations")]
async fn sigkill_a_worker_during_edits(pool: PgPool) {
    const EDITS: usize = 30;
    let options = Options {
        worker_env: fast_recovery(),
        ..Options::default()
    };
    let mut stack = start(&pool, options).await;
    stack.emulator_config(json!({"latency_ms": 400})).await;
    let posts = (0..EDITS).map(|i| {
        let fill = u8::try_from(i).expect("small");
        let (image, mask) = (
            filled_png(64, 64, false, fill),
            filled_png(64, 64, true, fill),
        );
        let shas = (sha256_hex(&image), sha256_hex(&mask));
        let body = multipart(
            &[("image", "a.png", image), ("mask", "m.png", mask)],
            &[("prompt", &format!("edit {i}")), ("model", "gpt-image-2")],
        );
        let stack = &stack;
        async move {
            // A burst of uploads may find the database pool busy (503, "try again shortly"): as a client would.
            for _ in 0..10 {
                let r = stack
                    .post_multipart(
                        "/api/v1/edits",
                        body.clone(),
                        &[("prefer", "respond-async")],
                    )
                    .await;
                if r.status == 503 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                assert_eq!(r.status, 202, "{}", r.body);
                return (r.body["job_id"].as_str().expect("job_id").to_owned(), shas);
            }
            panic!("edit {i} refused 10 times");
        }
    });
    let submitted: HashMap<String, (String, String)> = futures::stream::iter(posts)
        .buffer_unordered(4)
        .collect()
        .await;
    let accepted: Vec<String> = submitted.keys().cloned().collect();
    // Kill while calls are in flight: the emulator records an edit call when it arrives, and each takes 400 ms.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.emulator_edits().await.len() < 3 {
        assert!(Instant::now() < deadline, "no edit call started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fault = Instant::now();
    let worker = stack.worker_proc.as_mut().expect("worker");
    worker.signal("KILL");
    worker.wait_exit(Duration::from_secs(10)).await;
    let mut env = stack.env.clone();
    env.extend(fast_recovery());
    let _replacement = support::Proc::spawn("worker-2", &["worker"], &env);
    let result = audit(&pool, &stack, &accepted, Duration::from_secs(90)).await;
    result.print("sigkill-worker-edits", fault.elapsed());
    result.assert_clean(EDITS);
    assert_eq!(result.succeeded, EDITS);

    // Each job's calls, by the correlation id the worker sends with them.
    let jobs: HashMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT correlation_id, id::text FROM jobs")
            .fetch_all(&pool)
            .await
            .expect("jobs")
            .into_iter()
            .collect();
    let mut calls_per_job: HashMap<String, usize> = HashMap::new();
    for call in stack.emulator_edits().await {
        let correlation = call["correlation_id"].as_str().expect("correlation id");
        let job = jobs.get(correlation).expect("a call for a known job");
        let (image, mask) = &submitted[job];
        assert_eq!(call["images"], json!([image]), "job {job}: {call}");
        assert_eq!(call["mask"], json!(mask), "job {job}: {call}");
        *calls_per_job.entry(job.clone()).or_default() += 1;
    }
    assert_eq!(calls_per_job.len(), EDITS, "every job called the provider");
    let retried = calls_per_job.values().filter(|n| **n > 1).count();
    assert!(
        retried > 0,
        "no job was retried after the kill: {calls_per_job:?}"
    );
    // The stored inputs are what was uploaded.
    let recorded: Vec<(String, String, String)> =
        sqlx::query_as("SELECT job_id::text, role, sha256 FROM job_inputs ORDER BY job_id, role")
            .fetch_all(&pool)
            .await
            .expect("job inputs");
    assert_eq!(recorded.len(), EDITS * 2);
    for (job, role, sha) in recorded {
        let (image, mask) = &submitted[&job];
        assert_eq!(
            &sha,
            if role == "mask" { mask } else { image },
            "{job} {role}"
        );
    }
    eprintln!(
        "fault-case sigkill-worker-edits: {retried} of {EDITS} jobs called the provider again after the kill"
    );
}
