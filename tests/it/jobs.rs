//! Jobs: submitted, polled (long-polls and ETags), listed by cursor, canceled while queued or running, canceled by
//! their deadline, and deduplicated by idempotency key.

use crate::support::{Options, download, flux_options, generate_body, kv, png_size, start};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

#[sqlx::test(migrations = "./migrations")]
async fn submit_poll_and_download_over_provider_urls(pool: PgPool) {
    // The worker asks for URLs this time, so the download-from-provider path is exercised (FLUX hosts answer with
    // URLs; GPT image models only ever answer base64).
    let mut options = flux_options();
    options.worker_env.push(kv("OPENAI_RESPONSE_FORMAT", "url"));
    let stack = start(&pool, options).await;
    let body =
        json!({"prompt": "Mountain landscape", "provider": "flux_schnell", "size": "1792x1024"});
    let r = stack.post("/api/v1/jobs", body, &[]).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let job_id = r.body["job_id"].as_str().expect("job id").to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v1/jobs/{job_id}").as_str())
    );
    assert_eq!(r.body["size"], "1792x1024");
    assert_eq!(
        (
            r.body["model"].as_str(),
            r.body["quality"].as_str(),
            r.body["style"].as_str()
        ),
        (Some("flux-schnell"), None, None)
    );

    let done = stack.wait_terminal(&job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let url = done["images"][0]["url"].as_str().expect("url").to_owned();
    let (status, headers, bytes) = download(&stack, &url).await;
    assert_eq!(status, 200);
    assert_eq!(png_size(&bytes), (1792, 1024));

    // A repeated poll with the ETag is answered 304; so is a download with the image's ETag.
    let first = stack
        .http
        .get(stack.url(&format!("/api/v1/jobs/{job_id}")))
        .send()
        .await
        .expect("poll");
    let etag = first.headers().get("etag").expect("job etag").clone();
    let again = stack
        .http
        .get(stack.url(&format!("/api/v1/jobs/{job_id}")))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("poll");
    assert_eq!(again.status().as_u16(), 304);
    let image_etag = headers.get("etag").expect("image etag").clone();
    let cached = stack
        .http
        .get(&url)
        .header("if-none-match", image_etag)
        .send()
        .await
        .expect("download");
    assert_eq!(cached.status().as_u16(), 304);
}

#[sqlx::test(migrations = "./migrations")]
async fn jobs_are_listed_newest_first_with_a_cursor(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = stack
            .post("/api/v1/jobs", json!({"prompt": format!("job {i}")}), &[])
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.body["job_id"].as_str().expect("id").to_owned());
    }
    let page = stack.get("/api/v1/jobs?limit=2").await;
    assert_eq!(page.status, 200);
    let got: Vec<&str> = page.body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["job_id"].as_str())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let cursor = page.body["next_cursor"].as_str().expect("a next page");
    let next = stack
        .get(&format!("/api/v1/jobs?limit=2&cursor={cursor}"))
        .await;
    let got: Vec<&str> = next.body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["job_id"].as_str())
        .collect();
    assert_eq!(got, [ids[0].as_str()]);
    assert!(next.body.get("next_cursor").is_none());
}

#[sqlx::test(migrations = "./migrations")]
async fn a_queued_job_is_canceled_at_once_and_a_finished_one_cannot_be(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let r = stack
        .post("/api/v1/jobs", json!({"prompt": "never mind"}), &[])
        .await;
    let id = r.body["job_id"].as_str().expect("id").to_owned();
    let c = stack
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}), &[])
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(
        (c.body["status"].as_str(), c.body["cancel_reason"].as_str()),
        (Some("canceled"), Some("client"))
    );
    stack
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}), &[])
        .await
        .assert_error(409, "job_not_cancelable");
    stack
        .post(
            &format!("/api/v1/jobs/{}/cancel", uuid::Uuid::now_v7()),
            json!({}),
            &[],
        )
        .await
        .assert_error(404, "not_found");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_running_job_is_canceled_its_waiters_answered_and_nothing_kept(pool: PgPool) {
    // A long lease: the worker must learn of the cancel from the event, not from a failed renewal.
    let stack = start(
        &pool,
        Options {
            worker_env: vec![kv("JOB_LEASE_SECS", "60")],
            ..Options::default()
        },
    )
    .await;
    stack.emulator_config(json!({"latency_ms": 6000})).await;
    let r = stack
        .post("/api/v1/jobs", generate_body("stop me"), &[])
        .await;
    let id = r.body["job_id"].as_str().expect("id").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stack.get(&format!("/api/v1/jobs/{id}")).await.body["status"] != "running" {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiter = {
        let (http, url) = (
            stack.http.clone(),
            stack.url(&format!("/api/v1/jobs/{id}?wait=30")),
        );
        tokio::spawn(async move {
            http.get(url)
                .send()
                .await
                .expect("long-poll")
                .json::<serde_json::Value>()
                .await
        })
    };
    let started = std::time::Instant::now();
    let c = stack
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}), &[])
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    let polled = waiter.await.expect("join").expect("json");
    assert_eq!(polled["status"], "canceled");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the waiter was woken by the cancel"
    );
    // The worker drops the provider call at once (the emulator sees the connection go), and keeps nothing.
    let dropped = tokio::time::Instant::now() + Duration::from_secs(3);
    while stack.emulator_stats().await["openai"]["in_flight"] != 0 {
        assert!(
            tokio::time::Instant::now() < dropped,
            "the provider call was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = stack.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(
        (
            job.body["status"].as_str(),
            job.body["images"].as_array().map(Vec::len)
        ),
        (Some("canceled"), Some(0))
    );
    let images: i64 = stack.count(&pool, "SELECT count(*) FROM images").await;
    assert_eq!(images, 0);
    let stored = walk_files(&stack.storage_dir);
    assert!(stored.is_empty(), "orphaned objects: {stored:?}");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[sqlx::test(migrations = "./migrations")]
async fn a_job_not_started_by_its_deadline_is_canceled_without_a_provider_call(pool: PgPool) {
    let mut stack = start(
        &pool,
        Options {
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let r = stack
        .post(
            "/api/v1/jobs",
            json!({"prompt": "hurry"}),
            &[("Cancel-After", "1")],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.body["deadline_at"].as_str().is_some(), "{}", r.body);
    let late = stack
        .post(
            "/api/v1/jobs",
            json!({"prompt": "hurry too", "deadline_seconds": 1}),
            &[],
        )
        .await;
    stack
        .post(
            "/api/v1/jobs",
            json!({"prompt": "x", "deadline_seconds": 0}),
            &[],
        )
        .await
        .assert_error(400, "validation_failed");
    stack
        .post(
            "/api/v1/jobs",
            json!({"prompt": "x"}),
            &[("Cancel-After", "soon")],
        )
        .await
        .assert_error(400, "validation_failed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.start_workers().await;
    for id in [r.body["job_id"].as_str(), late.body["job_id"].as_str()]
        .into_iter()
        .flatten()
    {
        let done = stack.wait_terminal(id).await;
        assert_eq!(
            (done["status"].as_str(), done["cancel_reason"].as_str()),
            (Some("canceled"), Some("deadline")),
            "{done}"
        );
    }
    assert_eq!(stack.emulator_requests().await, 0);
}

#[sqlx::test(migrations = "./migrations")]
async fn an_idempotency_key_returns_the_same_job(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    stack.emulator_config(json!({"latency_ms": 1000})).await;
    let body = generate_body("only once");
    let key = ("Idempotency-Key", "order-42");
    // A wait-mode request that gives up early, then its retry re-attaches to the same running job.
    let first = stack
        .post(
            "/api/v1/generate",
            body.clone(),
            &[key, ("Prefer", "wait=0")],
        )
        .await;
    assert_eq!(first.status, 202, "{}", first.body);
    let retry = stack.post("/api/v1/generate", body.clone(), &[key]).await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.body["job_id"], first.body["job_id"]);
    assert_eq!(
        stack.emulator_requests().await,
        1,
        "one job, one provider call"
    );

    let other = stack
        .post("/api/v1/generate", generate_body("something else"), &[key])
        .await;
    other.assert_error(422, "idempotency_key_reused");
    stack
        .post("/api/v1/jobs", body.clone(), &[("Idempotency-Key", "")])
        .await
        .assert_error(400, "validation_failed");

    // Concurrent requests with one key create one job.
    let same = (0..5).map(|_| {
        stack.post(
            "/api/v1/jobs",
            generate_body("raced"),
            &[("Idempotency-Key", "race-1")],
        )
    });
    let replies = futures::future::join_all(same).await;
    let ids: std::collections::HashSet<String> = replies
        .iter()
        .map(|r| r.body["job_id"].as_str().expect("job id").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let rows: i64 = stack
        .count(
            &pool,
            "SELECT count(*) FROM jobs WHERE request->>'prompt' = 'raced'",
        )
        .await;
    assert_eq!(rows, 1);

    let batch = json!([{"prompt": "a"}, {"prompt": "b"}]);
    let b1 = stack
        .post(
            "/api/v1/generate/batch",
            batch.clone(),
            &[("Idempotency-Key", "batch-1"), ("Prefer", "respond-async")],
        )
        .await;
    let b2 = stack
        .post(
            "/api/v1/generate/batch",
            batch,
            &[("Idempotency-Key", "batch-1"), ("Prefer", "respond-async")],
        )
        .await;
    assert_eq!(
        b1.body["batch_id"], b2.body["batch_id"],
        "{} / {}",
        b1.body, b2.body
    );
}
