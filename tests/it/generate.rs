//! Wait mode (an answer with the stored images, or 202 with the job when it takes longer), `Prefer: respond-async`,
//! batches and their partial success, and the requests refused before anything is queued: validation errors in the
//! seed's shape and blocked prompts.

use crate::support::{self, Options, download, generate_body, kv, png_size, start};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::time::Duration;

#[sqlx::test(migrations = "./migrations")]
async fn wait_mode_returns_stored_images(pool: PgPool) {
    let metrics_port = support::free_port();
    let options = Options {
        worker_env: vec![kv("WORKER_METRICS_PORT", metrics_port.to_string())],
        ..Options::default()
    };
    let stack = start(&pool, options).await;
    let r = stack
        .post(
            "/api/v1/generate",
            generate_body("A futuristic city skyline at sunset"),
            &[("X-Correlation-ID", "e2e-wait-1")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-correlation-id"), Some("e2e-wait-1"));
    let b = &r.body;
    assert_eq!(
        (
            b["success"].as_bool(),
            b["status"].as_str(),
            b["provider"].as_str()
        ),
        (Some(true), Some("succeeded"), Some("openai"))
    );
    // The seed's dalle3 is retired: its replacement served it, and the answer says so.
    assert_eq!(
        (b["model"].as_str(), b["requested_model"].as_str()),
        (Some("gpt-image-2"), Some("dall-e-3"))
    );
    assert_eq!(b["served_by"], "openai:gpt-image-2");
    assert!(
        r.header("warning")
            .is_some_and(|w| w.contains("dall-e-3 is retired; served by gpt-image-2")),
        "{:?}",
        r.header("warning")
    );
    assert!(r.header("deprecation").is_some_and(|d| d.starts_with('@')));
    assert!(
        b["usage"]["output_tokens"].as_u64().is_some_and(|t| t > 0),
        "{b}"
    );
    assert_eq!(b["correlation_id"], "e2e-wait-1");
    assert!(b["generation_time_ms"].as_i64().is_some());
    let images = b["images"].as_array().expect("images");
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!(
        (img["width"].as_i64(), img["height"].as_i64()),
        (Some(1024), Some(1024))
    );
    assert_eq!(img["content_type"], "image/png");
    let url = img["url"].as_str().expect("url");
    assert!(
        url.starts_with(&stack.api),
        "our own download URL, not the provider's: {url}"
    );

    let (status, headers, bytes) = download(&stack, url).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    assert_eq!(
        headers.get("content-length").and_then(|v| v.to_str().ok()),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(png_size(&bytes), (1024, 1024));
    assert_eq!(img["size_bytes"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(
        img["sha256"].as_str(),
        Some(hex::encode(Sha256::digest(&bytes)).as_str())
    );

    // The seed's layout on disk: YYYY/MM/DD/{id}.png plus {id}.json.
    let id = img["id"].as_str().expect("id");
    let day = chrono::Utc::now().format("%Y/%m/%d").to_string();
    let png_path = stack.storage_dir.join(&day).join(format!("{id}.png"));
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(png_path.with_extension("json")).expect("sidecar"))
            .expect("json");
    assert_eq!(sidecar["job_id"], b["job_id"]);
    assert_eq!(std::fs::read(&png_path).expect("stored file"), bytes);

    // Metadata endpoint and the job itself agree.
    let meta = stack.get(&format!("/api/v1/images/{id}")).await;
    assert_eq!(
        (meta.status, meta.body["sha256"].clone()),
        (200, img["sha256"].clone())
    );
    let job = stack
        .get(&format!(
            "/api/v1/jobs/{}",
            b["job_id"].as_str().expect("job id")
        ))
        .await;
    assert_eq!(
        (job.body["status"].as_str(), job.body["attempts"].as_i64()),
        (Some("succeeded"), Some(1))
    );
    // The answer was the job as the worker's success wrote it, carried by its end event: no read of it before the
    // answer, and nothing in it that a read afterwards says otherwise.
    let metrics = stack.metrics_text().await;
    let reads = |from: &str| {
        let prefix = format!("imagegen_wait_reads_total{{from=\"{from}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(
        (reads("event").as_deref(), reads("database")),
        (Some("1"), None),
        "{metrics}"
    );
    let read = job.body.as_object().expect("job");
    let answered = b.as_object().expect("answer");
    let shared: Vec<&String> = read.keys().filter(|k| answered.contains_key(*k)).collect();
    assert!(shared.len() > 10, "{shared:?}");
    for key in shared {
        assert_eq!(answered[key], read[key], "{key}");
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn wait_mode_times_out_into_202_and_the_job_completes(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    stack.emulator_config(json!({"latency_ms": 2500})).await;
    let r = stack
        .post(
            "/api/v1/generate",
            generate_body("slow lighthouse"),
            &[("Prefer", "wait=1")],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let job_id = r.body["job_id"].as_str().expect("job id").to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v1/jobs/{job_id}").as_str())
    );
    assert!(r.header("retry-after").is_some());
    assert!(["queued", "running"].contains(&r.body["status"].as_str().unwrap_or_default()));
    let done = stack.wait_terminal(&job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["images"].as_array().map(Vec::len), Some(1));
}

#[sqlx::test(migrations = "./migrations")]
async fn respond_async_answers_at_once(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    stack.emulator_config(json!({"latency_ms": 1000})).await;
    let started = std::time::Instant::now();
    let r = stack
        .post(
            "/api/v1/generate",
            generate_body("quick answer"),
            &[("Prefer", "respond-async")],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "respond-async must not wait for the provider"
    );
    let done = stack
        .wait_terminal(r.body["job_id"].as_str().expect("id"))
        .await;
    assert_eq!(done["status"], "succeeded");
}

#[sqlx::test(migrations = "./migrations")]
async fn batch_reports_each_item_and_partial_success(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let items = json!([
        {"prompt": "Mountain landscape", "provider": "dalle3", "size": "1792x1024"},
        {"prompt": "emulator-moderate ocean waves", "provider": "dalle3"},
    ]);
    let r = stack
        .post("/api/v1/generate/batch", items, &[("Prefer", "wait=30")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["success"].as_bool(), r.body["status"].as_str()),
        (Some(true), Some("completed"))
    );
    assert_eq!(
        (r.body["succeeded"].as_u64(), r.body["failed"].as_u64()),
        (Some(1), Some(1))
    );
    let items = r.body["items"].as_array().expect("items");
    assert_eq!(items[0]["status"], "succeeded");
    assert_eq!(items[0]["images"][0]["width"], 1792);
    assert_eq!(items[1]["status"], "moderated");
    assert_eq!(items[1]["error"]["code"], "content_policy_violation");
    assert_eq!(items[1]["moderation"]["source"], "provider");

    let batch_id = r.body["batch_id"].as_str().expect("batch id");
    let again = stack.get(&format!("/api/v1/batches/{batch_id}")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["items"][1]["status"], "moderated");
    assert_eq!(
        stack
            .get(&format!("/api/v1/batches/{}", uuid::Uuid::now_v7()))
            .await
            .status,
        404
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn an_invalid_batch_item_rejects_the_whole_batch(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let items = json!([{"prompt": "fine"}, {"prompt": "fine too"}, {"prompt": "bad size", "size": "10x10"}]);
    let r = stack.post("/api/v1/generate/batch", items, &[]).await;
    r.assert_error(400, "validation_failed");
    assert!(
        r.body["message"]
            .as_str()
            .expect("message")
            .contains("item 2"),
        "{}",
        r.body
    );
    assert_eq!(r.body["details"][0]["field"], "[2].size");
    let count: i64 = stack.count(&pool, "SELECT count(*) FROM jobs").await;
    assert_eq!(count, 0, "nothing of a rejected batch is recorded");

    stack
        .post("/api/v1/generate/batch", json!([]), &[])
        .await
        .assert_error(400, "validation_failed");
    let eleven: Vec<_> = (0..11)
        .map(|i| json!({"prompt": format!("p{i}")}))
        .collect();
    stack
        .post("/api/v1/generate/batch", json!(eleven), &[])
        .await
        .assert_error(400, "validation_failed");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_blocked_prompt_is_moderated_and_never_reaches_the_provider(pool: PgPool) {
    let options = Options {
        api_env: vec![kv("BLOCKED_WORDS", "forbidden,bad thing")],
        ..Options::default()
    };
    let stack = start(&pool, options).await;
    for prompt in [
        "a FORBIDDEN castle",
        "a f.o.r.b.i.d.d.e.n castle",
        "some bad   thing here",
    ] {
        let r = stack
            .post("/api/v1/generate", json!({"prompt": prompt}), &[])
            .await;
        r.assert_error(400, "content_blocked");
        assert!(
            !r.body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("forbidden"),
            "never echo the list"
        );
        let job_id = r.body["job_id"]
            .as_str()
            .expect("job id on a blocked prompt");
        let job = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
        assert_eq!(job.body["status"], "moderated");
        assert_eq!(job.body["moderation"]["stage"], "input");
        assert_eq!(job.body["moderation"]["source"], "keyword");
    }
    // Words that merely contain the term pass.
    let ok = stack
        .post(
            "/api/v1/generate",
            json!({"prompt": "forbiddenly good food"}),
            &[],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        stack.emulator_requests().await,
        1,
        "blocked prompts never reach the provider"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn every_validation_error_has_the_seed_shape(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"prompt": "   "}), "prompt"),
        (json!({"prompt": "x".repeat(32_001)}), "prompt"),
        (
            json!({"prompt": "x".repeat(4001), "provider": "dalle3"}),
            "prompt",
        ),
        (json!({"prompt": "x", "model": "midjourney-v7"}), "model"),
        (json!({"prompt": "x", "model": "flux-2-pro"}), "model"),
        (
            json!({"prompt": "x", "output_format": "png", "output_compression": 50}),
            "output_compression",
        ),
        (
            json!({"prompt": "x", "background": "transparent"}),
            "background",
        ),
        (json!({"prompt": "x", "provider": "midjourney"}), "provider"),
        (
            json!({"prompt": "x", "provider": "flux_schnell"}),
            "provider",
        ),
        (json!({"prompt": "x", "size": "512x512"}), "size"),
        (
            json!({"prompt": "x", "num_images": 2, "provider": "dalle3"}),
            "num_images",
        ),
        (json!({"prompt": "x", "num_images": 11}), "num_images"),
        (json!({"prompt": "x", "num_images": 0}), "num_images"),
        (json!({"prompt": "x", "quality": "ultra"}), "quality"),
        (json!({"prompt": "x", "style": "noir"}), "style"),
        (json!({"prompt": "x", "seed": 42}), "seed"),
    ];
    for (body, field) in cases {
        let r = stack.post("/api/v1/generate", body.clone(), &[]).await;
        r.assert_error(400, "validation_failed");
        assert_eq!(r.body["details"][0]["field"], field, "{body} -> {}", r.body);
    }
    let unknown = stack
        .post(
            "/api/v1/generate",
            json!({"prompt": "x", "colour": "red"}),
            &[],
        )
        .await;
    unknown.assert_error(400, "validation_failed");
    assert!(
        unknown.body["message"]
            .as_str()
            .expect("message")
            .contains("colour")
    );
    stack
        .post("/api/v1/generate", json!({"size": "1024x1024"}), &[])
        .await
        .assert_error(400, "validation_failed");
    stack
        .post("/api/v1/generate", json!({"prompt": 5}), &[])
        .await
        .assert_error(400, "validation_failed");

    let raw = |body: &'static str, ctype: &'static str| {
        stack
            .http
            .post(stack.url("/api/v1/generate"))
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    support::Reply::from(raw("{not json", "application/json").await.expect("send"))
        .await
        .assert_error(400, "validation_failed");
    support::Reply::from(raw("prompt=x", "text/plain").await.expect("send"))
        .await
        .assert_error(415, "unsupported_media_type");
    let big = json!({"prompt": "x".repeat(70 * 1024)});
    stack
        .post("/api/v1/generate", big, &[])
        .await
        .assert_error(413, "payload_too_large");
    stack
        .get("/api/v1/nope")
        .await
        .assert_error(404, "not_found");
    stack
        .get("/api/v1/generate")
        .await
        .assert_error(405, "method_not_allowed");
    stack
        .get("/api/v1/jobs/not-a-uuid")
        .await
        .assert_error(404, "not_found");
    stack
        .get(&format!("/api/v1/jobs/{}", uuid::Uuid::now_v7()))
        .await
        .assert_error(404, "not_found");
    stack
        .get("/api/v1/jobs?limit=0")
        .await
        .assert_error(400, "validation_failed");
    stack
        .get("/api/v1/jobs?cursor=garbage")
        .await
        .assert_error(400, "validation_failed");

    // A client's sane correlation id is echoed; an unsafe one is replaced.
    let r = stack
        .post(
            "/api/v1/generate",
            json!({"prompt": ""}),
            &[("X-Correlation-ID", "abc123-def456-ghi789")],
        )
        .await;
    assert_eq!(r.body["correlation_id"], "abc123-def456-ghi789");
    let r = stack
        .post(
            "/api/v1/generate",
            json!({"prompt": ""}),
            &[("X-Correlation-ID", "bad id with spaces")],
        )
        .await;
    assert_ne!(r.body["correlation_id"], "bad id with spaces");
    r.assert_error(400, "validation_failed");
    let count: i64 = stack.count(&pool, "SELECT count(*) FROM jobs").await;
    assert_eq!(count, 0, "invalid requests record nothing");
}

/// WORKER_PICTURE_MEMORY_MB bounds the picture bytes a worker holds, never which pictures it takes: with 1 MiB and
/// 2 MiB pictures arriving for six jobs at once, each answer is read alone, in turn, and every job succeeds.
#[sqlx::test(migrations = "./migrations")]
async fn pictures_larger_than_the_worker_picture_memory_are_read_in_turn_and_all_stored(
    pool: PgPool,
) {
    let stack = start(
        &pool,
        Options {
            worker_env: vec![
                kv("WORKER_PICTURE_MEMORY_MB", "1"),
                kv("WORKER_CONCURRENCY", "6"),
            ],
            ..Options::default()
        },
    )
    .await;
    stack
        .emulator_config(json!({"latency_ms": 300, "image_bytes": 2 * 1024 * 1024}))
        .await;
    let replies = futures::future::join_all((0..6).map(|i| {
        stack.post(
            "/api/v1/generate",
            generate_body(&format!("a large picture {i}")),
            &[("Prefer", "wait=60")],
        )
    }))
    .await;
    for r in replies {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "succeeded", "{}", r.body);
        let image = &r.body["images"][0];
        assert!(
            image["size_bytes"].as_u64().unwrap_or(0) >= 2 * 1024 * 1024,
            "{image}"
        );
    }
}
