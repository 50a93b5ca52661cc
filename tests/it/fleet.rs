//! The fleet: several api and worker processes on one Postgres and one Redis. A worker stopped (SIGTERM, past its
//! grace period) or killed mid-job, an API stopped with requests waiting, fleet-wide provider limits across worker
//! processes, Redis stopped or flushed. Each needs separate processes or breaks Redis itself, so the standalone run
//! of scripts/test.sh leaves this module out (`not_standalone!` stays as a guard).

use crate::support::{
    self, Options, Stack, authentication_on, generate_body, kv, not_standalone, start,
};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

#[sqlx::test(migrations = "./migrations")]
async fn readiness_follows_redis_and_submissions_get_503_while_it_is_down(pool: PgPool) {
    not_standalone!("Redis itself is stopped");
    // A private Redis we can stop and start again.
    let redis = support::PrivateRedis::start();
    let options = Options {
        redis_url: redis.url(),
        ..Options::default()
    };
    let stack = start(&pool, options).await;
    let ready = |s: &Stack| {
        let url = s.url("/health/ready");
        let http = s.http.clone();
        async move { http.get(url).send().await.expect("ready").status().as_u16() }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ready(&stack).await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    redis.down();
    let r = support::Reply::from(
        stack
            .http
            .get(stack.url("/health/ready"))
            .send()
            .await
            .expect("ready"),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["components"]["redis"]["status"], "unhealthy");
    assert_eq!(
        stack.get("/health/live").await.status,
        200,
        "liveness does not depend on Redis"
    );
    let submit = stack
        .post(
            "/api/v1/jobs",
            json!({"prompt": "while redis is down"}),
            &[],
        )
        .await;
    submit.assert_error(503, "service_unavailable");
    assert!(submit.header("retry-after").is_some());
    let count: i64 = stack.count(&pool, "SELECT count(*) FROM jobs").await;
    assert_eq!(
        count, 0,
        "a job that could not be queued is not left behind"
    );

    redis.up();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ready(&stack).await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not recover after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = stack
        .post(
            "/api/v1/generate",
            generate_body("after the outage"),
            &[("Prefer", "wait=30")],
        )
        .await;
    assert_eq!(
        r.status, 200,
        "the worker reconnected by itself: {}",
        r.body
    );
}

/// LIMITS_ON_REDIS_ERROR: with Redis down, the per-minute limit lets requests through uncounted (`open`, the
/// default) or refuses them with 503 and Retry-After (`closed`).
#[sqlx::test(migrations = "./migrations")]
async fn limits_fail_open_or_closed_as_configured_when_redis_is_down(pool: PgPool) {
    not_standalone!("Redis itself is stopped");
    let redis = support::PrivateRedis::start();
    let mut stack = start(
        &pool,
        Options {
            redis_url: redis.url(),
            api_env: vec![kv("RATE_LIMIT_PER_MINUTE", "100")],
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    assert_eq!(stack.get("/api/v1/jobs").await.status, 200);
    redis.down();
    let open = stack.get("/api/v1/jobs").await;
    assert_eq!(open.status, 200, "open: through, uncounted: {}", open.body);

    stack
        .restart_api_with(&[kv("LIMITS_ON_REDIS_ERROR", "closed")])
        .await;
    let closed = stack.get("/api/v1/jobs").await;
    closed.assert_error(503, "service_unavailable");
    assert!(closed.header("retry-after").is_some());

    redis.up();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stack.get("/api/v1/jobs").await.status != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn sigterm_lets_a_running_job_finish(pool: PgPool) {
    not_standalone!("signals a separate worker process");
    let mut stack = start(&pool, Options::default()).await;
    stack.emulator_config(json!({"latency_ms": 1500})).await;
    let r = stack
        .post("/api/v1/jobs", generate_body("finish me"), &[])
        .await;
    let job_id = r.body["job_id"].as_str().expect("job id").to_owned();
    // Wait until the worker has it, then ask it to stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let job = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
        if job.body["status"] == "running" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never started: {}",
            job.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let worker = stack.worker_proc.as_mut().expect("worker");
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "worker exits cleanly: {status:?}");
    let job = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(
        job.body["status"], "succeeded",
        "the running job finished before exit: {}",
        job.body
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn a_killed_workers_job_is_finished_by_another_worker(pool: PgPool) {
    not_standalone!("needs a second worker process");
    let mut stack = start(&pool, Options::default()).await;
    stack.emulator_config(json!({"hang_next": 1})).await;
    let r = stack
        .post("/api/v1/jobs", generate_body("survive a crash"), &[])
        .await;
    let job_id = r.body["job_id"].as_str().expect("job id").to_owned();
    stack.until_provider_busy("openai").await;
    // Killed mid-call: no graceful stop, no release; only the lease and the queue's heartbeats can save the job.
    let worker = stack.worker_proc.as_mut().expect("worker");
    worker.signal("KILL");
    worker.wait_exit(Duration::from_secs(10)).await;
    let mut env = stack.env.clone();
    env.extend([kv("JOB_LEASE_SECS", "10")]);
    let _second = support::Proc::spawn("worker-2", &["worker"], &env);
    let started = std::time::Instant::now();
    let done = stack.wait_terminal(&job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["attempts"], 2,
        "the dead worker's call counts as an attempt"
    );
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "recovered in {:?}",
        started.elapsed()
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn three_workers_never_exceed_the_fleet_limit(pool: PgPool) {
    not_standalone!("needs three worker processes");
    let options = Options {
        worker_env: vec![kv("PROVIDER_CONCURRENCY", "dalle3=4")],
        ..Options::default()
    };
    let stack = start(&pool, options).await;
    let mut env = stack.env.clone();
    env.extend([
        kv("PROVIDER_CONCURRENCY", "dalle3=4"),
        kv("WORKER_CONCURRENCY", "4"),
    ]);
    let _w2 = support::Proc::spawn("worker-2", &["worker"], &env);
    let _w3 = support::Proc::spawn("worker-3", &["worker"], &env);
    stack.emulator_config(json!({"latency_ms": 300})).await;

    let submits = (0..60).map(|i| {
        stack.post(
            "/api/v1/jobs",
            json!({"prompt": format!("job {i}")}),
            &[("Prefer", "respond-async")],
        )
    });
    let ids: Vec<String> = futures::future::join_all(submits)
        .await
        .into_iter()
        .map(|r| {
            assert_eq!(r.status, 202, "{}", r.body);
            r.body["job_id"].as_str().expect("id").to_owned()
        })
        .collect();
    for id in &ids {
        let done = stack.wait_terminal(id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let stats = stack.emulator_stats().await;
    let max = stats["openai"]["max_in_flight"]
        .as_u64()
        .expect("max_in_flight");
    assert!(
        max <= 4,
        "the fleet made {max} calls at once with a limit of 4: {stats}"
    );
    assert!(max >= 3, "the limit was used, not idled: {stats}");
    assert_eq!(stats["openai"]["requests"], 60);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_killed_workers_fleet_permit_comes_back(pool: PgPool) {
    not_standalone!("needs a second worker process");
    let fleet = [
        kv("PROVIDER_CONCURRENCY", "dalle3=1"),
        kv("PROVIDER_PERMIT_TTL_SECS", "3"),
    ];
    let options = Options {
        worker_env: fleet.to_vec(),
        ..Options::default()
    };
    let mut stack = start(&pool, options).await;
    stack.emulator_config(json!({"hang_next": 1})).await;
    let _stuck = stack
        .post("/api/v1/jobs", generate_body("hangs forever"), &[])
        .await;
    stack.until_provider_busy("openai").await;
    // The only permit is held by a call whose worker now dies without releasing it.
    let worker = stack.worker_proc.as_mut().expect("worker");
    worker.signal("KILL");
    worker.wait_exit(Duration::from_secs(15)).await;
    let mut env = stack.env.clone();
    env.extend(fleet);
    let _second = support::Proc::spawn("worker-2", &["worker"], &env);
    let started = std::time::Instant::now();
    let r = stack
        .post(
            "/api/v1/generate",
            generate_body("next in line"),
            &[("Prefer", "wait=20")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the permit came back after its TTL: {:?}",
        started.elapsed()
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn jobs_survive_a_redis_flush_through_the_reconciler(pool: PgPool) {
    not_standalone!("Redis itself is flushed");
    let redis = support::PrivateRedis::start();
    let options = Options {
        redis_url: redis.url(),
        start_worker: false,
        ..Options::default()
    };
    let mut stack = start(&pool, options).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = stack
            .post(
                "/api/v1/jobs",
                json!({"prompt": format!("survivor {i}")}),
                &[],
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.body["job_id"].as_str().expect("id").to_owned());
    }
    // Every message is gone; only Postgres remembers the jobs.
    redis.flush();
    let mut env = stack.env.clone();
    env.extend([
        kv("RECONCILE_QUEUED_AFTER", "1"),
        kv("RECONCILE_INTERVAL_SECS", "1"),
    ]);
    stack.worker_proc = Some(support::Proc::spawn("worker", &["worker"], &env));
    for id in &ids {
        let done = stack.wait_terminal(id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["images"].as_array().map(Vec::len), Some(1));
    }
    assert_eq!(
        stack.emulator_requests().await,
        5,
        "each job called the provider once"
    );
    let images: i64 = stack.count(&pool, "SELECT count(*) FROM images").await;
    assert_eq!(images, 5, "no job completed twice");
}

#[sqlx::test(migrations = "./migrations")]
async fn sigterm_on_the_api_answers_waiting_requests_and_exits(pool: PgPool) {
    not_standalone!("the worker runs on in its own process after the API exits");
    let mut stack = start(&pool, Options::default()).await;
    stack.emulator_config(json!({"latency_ms": 4000})).await;
    let waiting = {
        let (http, url) = (stack.http.clone(), stack.url("/api/v1/generate"));
        tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&generate_body("slow one"))
                .send()
                .await
                .expect("request");
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.expect("json"),
            )
        })
    };
    stack.until_provider_busy("openai").await;
    let started = std::time::Instant::now();
    stack.api_proc.signal("TERM");
    let (status, body) = waiting.await.expect("join");
    assert_eq!(
        status, 202,
        "a waiting request is answered with the job, not dropped: {body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at once, not after the job"
    );
    let exit = stack.api_proc.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}");
    // The job runs on without the API.
    let job_id = body["job_id"].as_str().expect("job id");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status: String =
            sqlx::query_scalar("SELECT status::text FROM jobs WHERE id = $1::uuid")
                .bind(job_id)
                .fetch_one(&pool)
                .await
                .expect("status");
        if status == "succeeded" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job ended as {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn a_worker_past_its_grace_period_hands_its_job_back_at_once(pool: PgPool) {
    not_standalone!("needs a second worker process");
    let options = Options {
        worker_env: vec![kv("SHUTDOWN_GRACE_SECONDS", "1")],
        ..Options::default()
    };
    let mut stack = start(&pool, options).await;
    stack.emulator_config(json!({"hang_next": 1})).await;
    let r = stack
        .post(
            "/api/v1/jobs",
            generate_body("outlives the grace period"),
            &[],
        )
        .await;
    let job_id = r.body["job_id"].as_str().expect("id").to_owned();
    stack.until_provider_busy("openai").await;
    let worker = stack.worker_proc.as_mut().expect("worker");
    worker.signal("TERM");
    let exit = worker.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?}");
    let job = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(
        job.body["status"], "queued",
        "handed back, not left running until its lease expires: {}",
        job.body
    );
    let handed_back = std::time::Instant::now();
    let _next = support::Proc::spawn("worker-2", &["worker"], &stack.env.clone());
    let done = stack.wait_terminal(&job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        handed_back.elapsed() < Duration::from_secs(15),
        "taken up at once: {:?}",
        handed_back.elapsed()
    );
}

/// MAX_ACTIVE_JOBS_PER_OWNER holds for the fleet: concurrent submissions through two API processes never record
/// more jobs than the limit.
#[sqlx::test(migrations = "./migrations")]
async fn concurrent_submissions_through_two_api_processes_never_exceed_the_active_limit(
    pool: PgPool,
) {
    not_standalone!("needs a second API process");
    let limits = vec![kv("MAX_ACTIVE_JOBS_PER_OWNER", "3")];
    let stack = start(
        &pool,
        Options {
            api_env: limits.clone(),
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let mut env = stack.env.clone();
    env.extend([kv("API_HOST", "127.0.0.1"), kv("API_PORT", "0")]);
    env.extend(limits);
    let mut second = support::Proc::spawn("api-2", &["api"], &env);
    let other = format!("http://{}", second.listening_addr().await);
    let submissions = (0..16).map(|i| {
        let http = stack.http.clone();
        let url = if i % 2 == 0 {
            stack.url("/api/v1/jobs")
        } else {
            format!("{other}/api/v1/jobs")
        };
        async move {
            http.post(url)
                .json(&json!({"prompt": format!("job {i}")}))
                .send()
                .await
                .expect("submit")
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(submissions).await;
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((accepted, refused), (3, 13), "{statuses:?}");
    let listed = stack.get("/api/v1/jobs").await;
    assert_eq!(listed.body["jobs"].as_array().map(Vec::len), Some(3));
}

/// Raw dependency errors (hosts, ports) on /health only for an authenticated caller while authentication is on.
#[sqlx::test(migrations = "./migrations")]
async fn health_errors_need_a_credential_while_authentication_is_on(pool: PgPool) {
    not_standalone!(
        "the standalone process uses its in-process queue, with no Redis to point at a dead port"
    );
    let stack = start(
        &pool,
        Options {
            api_env: authentication_on(),
            // Nothing listens on port 1: every Redis check fails with "connection refused".
            redis_url: "redis://127.0.0.1:1".to_owned(),
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let key = stack.keys(&["create", "--owner", "x"]).await;
    let health = |path: &'static str, credential: Option<(&'static str, String)>| {
        let mut req = stack.http.get(stack.url(path));
        if let Some((name, value)) = credential {
            req = req.header(name, value);
        }
        async move { support::Reply::from(req.send().await.expect("health")).await }
    };
    let raw = |text: &str| {
        let lower = text.to_ascii_lowercase();
        lower.contains("127.0.0.1:1") || lower.contains("refused") || lower.contains("redis://")
    };

    for path in ["/health/", "/health/ready"] {
        // Anonymous, or with a credential that is not valid: generic errors only.
        for credential in [
            None,
            Some(("X-API-Key", "igk_not_a_real_key".to_owned())),
            Some(("Authorization", "Bearer nonsense".to_owned())),
        ] {
            let r = health(path, credential.clone()).await;
            assert_eq!(r.status, 503, "{path} {credential:?}: {}", r.body);
            let redis = &r.body["components"]["redis"];
            assert_eq!(redis["status"], "unhealthy", "{path}: {}", r.body);
            assert!(
                matches!(redis["error"].as_str(), Some("unavailable" | "timed out")),
                "{path} {credential:?}: {}",
                r.body
            );
            assert!(
                !raw(&r.body.to_string()),
                "{path} {credential:?} shows a raw error: {}",
                r.body
            );
            assert_eq!(r.body["components"]["database"]["status"], "healthy");
        }

        // Any valid credential sees the dependency's own message.
        for credential in [
            ("X-API-Key", key.clone()),
            ("Authorization", format!("Bearer {key}")),
        ] {
            let r = health(path, Some(credential.clone())).await;
            assert_eq!(r.status, 503, "{path}: {}", r.body);
            let error = r.body["components"]["redis"]["error"]
                .as_str()
                .unwrap_or_default();
            assert!(
                raw(error),
                "{path} with {}: no detail in {}",
                credential.0,
                r.body
            );
        }
    }
}

/// A worker asks the fleet limits for a permit beside its claim, for the provider its last job went to first. With
/// one permit per provider and a TTL far longer than the test, a permit taken ahead and neither used nor given back
/// would hold its provider for a minute: the next job there would not be answered in time. Jobs alternate between
/// the two providers (each switch is a guess that misses) and repeat one (guesses that hit).
#[sqlx::test(migrations = "./migrations")]
async fn a_permit_asked_beside_the_claim_is_used_or_given_back(pool: PgPool) {
    not_standalone!("fleet limits on Redis");
    let metrics_port = support::free_port();
    let mut options = support::dalle3_and_flux();
    options.worker_env.extend([
        kv("PROVIDER_CONCURRENCY", "dalle3=1,flux_schnell=1"),
        kv("PROVIDER_PERMIT_TTL_SECS", "60"),
        kv("WORKER_METRICS_PORT", metrics_port.to_string()),
    ]);
    let stack = start(&pool, options).await;
    let providers = [
        "openai", "openai", "flux", "flux", "openai", "flux", "openai",
    ];
    for (i, provider) in providers.iter().enumerate() {
        let prompt = format!("permit {i}");
        let body = match *provider {
            "flux" => json!({"prompt": prompt, "provider": "flux_schnell"}),
            _ => generate_body(&prompt),
        };
        let r = stack
            .post("/api/v1/generate", body, &[("Prefer", "wait=15")])
            .await;
        assert_eq!(r.status, 200, "job {i} on {provider}: {}", r.body);
        assert_eq!(r.body["provider"], *provider, "{}", r.body);
    }
    let text = stack
        .http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .expect("worker metrics")
        .text()
        .await
        .expect("worker metrics text");
    let count = |outcome: &str| {
        let prefix = format!("imagegen_fleet_permits_ahead_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0.0, |v| v.trim().parse::<f64>().expect("a number"))
    };
    // The first job has nothing to guess from; of the six after it, two repeat the provider before them and four
    // switch.
    assert_eq!((count("used"), count("given_back")), (2.0, 4.0), "{text}");
}
