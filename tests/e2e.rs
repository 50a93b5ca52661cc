//! End to end: the real binaries (emulator, api, worker) against real Postgres and Redis, driven over HTTP.

mod support;

use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::time::Duration;
use support::{Options, Stack, generate_body, kv, png_size, start};

async fn download(stack: &Stack, url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = stack.http.get(url).send().await.expect("download");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.expect("bytes").to_vec())
}

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

#[sqlx::test(migrations = "./migrations")]
async fn a_provider_500_is_retried_and_then_succeeds(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    stack
        .emulator_config(json!({"fail_next": 1, "error_status": 500}))
        .await;
    let r = stack
        .post("/api/v1/generate", generate_body("retry me"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["attempts"], 2);
    assert_eq!(stack.emulator_requests().await, 2);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_rate_limit_honours_retry_after_and_then_succeeds(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    stack
        .emulator_config(json!({"rate_limit_next": 1, "retry_after_s": 1}))
        .await;
    let started = std::time::Instant::now();
    let r = stack
        .post("/api/v1/generate", generate_body("patience"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["attempts"], 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as Retry-After said"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn retries_are_bounded_by_provider_max_attempts(pool: PgPool) {
    // The API records the limit on each job when it is accepted; workers honour what the job says.
    let options = Options {
        api_env: vec![kv("PROVIDER_MAX_ATTEMPTS", "2")],
        ..Options::default()
    };
    let stack = start(&pool, options).await;
    stack
        .emulator_config(json!({"error_rate": 1.0, "error_status": 503}))
        .await;
    let r = stack
        .post("/api/v1/generate", generate_body("never works"), &[])
        .await;
    r.assert_error(502, "provider_error");
    assert!(
        r.body["message"]
            .as_str()
            .expect("message")
            .contains("kept failing"),
        "{}",
        r.body
    );
    let job_id = r.body["job_id"].as_str().expect("job id");
    let job = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(
        (job.body["status"].as_str(), job.body["attempts"].as_i64()),
        (Some("failed"), Some(2))
    );
    assert_eq!(stack.emulator_requests().await, 2);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_content_policy_rejection_is_final_and_not_retried(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let r = stack
        .post(
            "/api/v1/generate",
            generate_body("emulator-moderate a scene"),
            &[],
        )
        .await;
    r.assert_error(422, "content_policy_violation");
    let job_id = r.body["job_id"].as_str().expect("job id");
    let job = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(job.body["status"], "moderated");
    assert_eq!(
        (
            job.body["moderation"]["stage"].as_str(),
            job.body["moderation"]["source"].as_str()
        ),
        (Some("input"), Some("provider"))
    );
    assert_eq!(job.body["attempts"], 1);
    assert_eq!(stack.emulator_requests().await, 1);
}

#[sqlx::test(migrations = "./migrations")]
async fn bad_provider_credentials_fail_the_job_without_retries(pool: PgPool) {
    let options = Options {
        worker_env: vec![kv("OPENAI_API_KEY", "sk-wrong-key-1234")],
        ..Options::default()
    };
    let stack = start(&pool, options).await;
    let r = stack
        .post("/api/v1/generate", generate_body("who am i"), &[])
        .await;
    r.assert_error(502, "provider_error");
    assert!(
        !r.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("1234"),
        "no key fragments: {}",
        r.body
    );
    assert_eq!(stack.emulator_requests().await, 1);
}

#[sqlx::test(migrations = "./migrations")]
async fn delete_removes_object_metadata_and_row(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let r = stack
        .post("/api/v1/generate", generate_body("short-lived"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["images"][0]["id"]
        .as_str()
        .expect("image id")
        .to_owned();
    let day = chrono::Utc::now().format("%Y/%m/%d").to_string();
    let file = stack.storage_dir.join(&day).join(format!("{id}.png"));
    assert!(file.exists());
    let del = Reply::from(
        stack
            .http
            .delete(stack.url(&format!("/api/v1/images/{id}")))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!(del.status, 200, "{}", del.body);
    assert!(!file.exists() && !file.with_extension("json").exists());
    stack
        .get(&format!("/api/v1/images/{id}"))
        .await
        .assert_error(404, "not_found");
    stack
        .get(&format!("/api/v1/images/{id}/download"))
        .await
        .assert_error(404, "not_found");
    let again = Reply::from(
        stack
            .http
            .delete(stack.url(&format!("/api/v1/images/{id}")))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    again.assert_error(404, "not_found");
}

use support::Reply;

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
async fn providers_docs_health_and_metrics(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let p = stack.get("/api/v1/providers").await;
    assert_eq!(p.status, 200);
    assert_eq!(
        (
            p.body["default_provider"].as_str(),
            p.body["default_model"].as_str()
        ),
        (Some("openai"), Some("gpt-image-2"))
    );
    let providers = p.body["providers"].as_array().expect("providers");
    let ids: Vec<&str> = providers.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(ids, ["openai", "azure_openai", "flux", "bfl"]);
    assert_eq!(
        (
            providers[0]["default_model"].as_str(),
            providers[0]["max_images"].as_u64(),
            providers[0]["configured"].as_bool(),
            providers[0]["circuit"].as_str()
        ),
        (Some("gpt-image-2"), Some(4), Some(true), Some("closed"))
    );
    assert!(
        providers[0]["models"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("gpt-image-2.5-sunburst")))
    );
    assert_eq!(
        providers[2]["supported_sizes"],
        json!(["1024x1024", "512x512", "768x768", "1536x1024", "1024x1536"])
    );
    assert_eq!(providers[2]["configured"], false);

    // The catalogue: every model with its parameters, lifecycle and whether it is served here.
    let m = stack.get("/api/v1/models").await;
    assert_eq!(m.status, 200);
    let models = m.body["models"].as_array().expect("models");
    let model = |id: &str| {
        models
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} listed"))
            .clone()
    };
    let gpt2 = model("gpt-image-2");
    assert_eq!(
        (gpt2["status"].as_str(), gpt2["available"].as_bool()),
        (Some("ga"), Some(true))
    );
    assert_eq!(gpt2["served_by"], json!(["openai"]));
    assert_eq!(gpt2["sizes"]["rules"]["multiple_of"], 16);
    let dalle3 = model("dall-e-3");
    assert_eq!(
        (
            dalle3["status"].as_str(),
            dalle3["retires_on"].as_str(),
            dalle3["replaced_by"].as_str(),
            dalle3["available"].as_bool()
        ),
        (
            Some("retired"),
            Some("2026-05-12"),
            Some("gpt-image-2"),
            Some(false)
        )
    );
    assert_eq!(model("gpt-image-1.5")["status"], "deprecated");
    assert_eq!(
        model("flux-2-pro")["available"],
        false,
        "BFL is not configured here"
    );

    let spec = stack.get("/openapi.json").await;
    assert_eq!(spec.status, 200);
    assert!(
        spec.body["openapi"]
            .as_str()
            .expect("version")
            .starts_with("3.1")
    );
    for path in [
        "/api/v1/generate",
        "/api/v1/generate/batch",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/batches/{id}",
        "/api/v1/images/{id}",
        "/api/v1/images/{id}/download",
        "/api/v1/providers",
        "/health/",
        "/health/ready",
        "/health/live",
        "/metrics",
    ] {
        assert!(
            spec.body["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(
        spec.body["components"]["schemas"]
            .get("ErrorBody")
            .is_some()
    );
    let docs = stack
        .http
        .get(stack.url("/docs/"))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status().as_u16(), 200);
    let html = docs.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "Swagger UI page");
    let asset = stack
        .http
        .get(stack.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .expect("asset");
    assert_eq!(
        asset.status().as_u16(),
        200,
        "Swagger UI assets are built in"
    );

    let health = stack.get("/health/").await;
    assert_eq!(health.status, 200, "{}", health.body);
    let queue = if support::standalone() {
        "queue"
    } else {
        "redis"
    };
    for c in ["database", queue, "storage"] {
        assert_eq!(
            health.body["components"][c]["status"], "healthy",
            "{}",
            health.body
        );
    }
    assert_eq!(
        health.body["components"]["provider:openai"]["status"],
        "circuit_closed"
    );
    assert_eq!(stack.get("/health/ready").await.status, 200);
    assert_eq!(stack.get("/health/live").await.status, 200);

    let _ = stack
        .post("/api/v1/jobs", json!({"prompt": "count me"}), &[])
        .await;
    let metrics = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "imagegen_http_requests_total",
        "imagegen_http_request_duration_seconds_bucket",
        "imagegen_queue_depth",
        "imagegen_jobs_submitted_total",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("route=\"/api/v1/jobs\""),
        "routes are labelled by their pattern"
    );
}

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
async fn bad_configuration_stops_start_up_with_one_line(pool: PgPool) {
    let db = support::database_url(&pool);
    let run = |env: Vec<(&str, String)>| {
        let mut cmd = std::process::Command::new(support::BIN);
        cmd.arg("api")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run imagegen")
    };
    let base = || {
        vec![
            ("DATABASE_URL", db.clone()),
            ("REDIS_URL", support::redis_url()),
            ("OPENAI_API_KEY", "k".to_owned()),
        ]
    };
    for (var, value) in [
        ("API_PORT", "not-a-port"),
        ("STORAGE_BACKEND", "floppy"),
        ("DEFAULT_PROVIDER", "midjourney"),
        ("ENABLE_IMAGE_STORAGE", "maybe"),
        ("WAIT_MAX_SECS", "-1"),
        ("ENABLE_AUTHENTICATION", "sometimes"),
    ] {
        let mut env = base();
        env.push((var, value.to_owned()));
        let out = run(env);
        assert!(!out.status.success(), "{var}={value} must stop start-up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(var), "{var} named in: {stderr}");
    }
    let out = run(vec![
        ("REDIS_URL", support::redis_url()),
        ("OPENAI_API_KEY", "k".to_owned()),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
    let out = run(vec![
        ("DATABASE_URL", db.clone()),
        ("REDIS_URL", support::redis_url()),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPENAI_API_KEY"));
    // Authentication without a key for the signed download links (or with a short one).
    for key in [None, Some("too-short")] {
        let mut env = base();
        env.push(("ENABLE_AUTHENTICATION", "true".to_owned()));
        if let Some(k) = key {
            env.push(("DOWNLOAD_SIGNING_KEY", k.to_owned()));
        }
        let out = run(env);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("DOWNLOAD_SIGNING_KEY"), "{stderr}");
        assert!(
            !stderr.contains("too-short"),
            "the key is never echoed: {stderr}"
        );
    }

    // `*` with authentication on is refused.
    let mut env = base();
    env.extend([
        ("ENABLE_AUTHENTICATION", "true".to_owned()),
        ("DOWNLOAD_SIGNING_KEY", "x".repeat(40)),
        ("CORS_ORIGINS", "*".to_owned()),
    ]);
    let out = run(env);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CORS_ORIGINS") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );

    // A token issuer over plain http (not loopback), without an audience, or Entra's multi-tenant alias.
    for (extra, named) in [
        (
            vec![
                ("OIDC_ISSUER", "http://idp.example.com"),
                ("OIDC_AUDIENCE", "api://x"),
            ],
            "OIDC_ISSUER",
        ),
        (
            vec![("OIDC_ISSUER", "https://idp.example.com")],
            "OIDC_AUDIENCE",
        ),
        (
            vec![
                ("AZURE_AD_TENANT_ID", "common"),
                ("AZURE_AD_CLIENT_ID", "c"),
            ],
            "AZURE_AD_TENANT_ID",
        ),
    ] {
        let mut env = base();
        env.extend([
            ("ENABLE_AUTHENTICATION", "true".to_owned()),
            ("DOWNLOAD_SIGNING_KEY", "x".repeat(40)),
        ]);
        env.extend(extra.into_iter().map(|(k, v)| (k, v.to_owned())));
        let out = run(env);
        assert!(!out.status.success(), "{named} must stop start-up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(named) && stderr.trim().lines().count() == 1,
            "{stderr}"
        );
    }

    // `imagegen migrate` on an up-to-date database is a no-op that succeeds.
    let out = std::process::Command::new(support::BIN)
        .arg("migrate")
        .env_clear()
        .env("DATABASE_URL", &db)
        .output()
        .expect("migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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

fn azure_options() -> Options {
    let env = vec![
        kv("OPENAI_API_KEY", ""),
        kv("AZURE_OPENAI_API_KEY", support::API_KEY),
        kv("AZURE_OPENAI_DEPLOYMENT_NAME", "img2-prod"),
    ];
    Options {
        emulator_args: vec![
            "--api-key".into(),
            support::API_KEY.into(),
            "--azure-deployment".into(),
            "img2-prod=gpt-image-2".into(),
        ],
        api_env: env.clone(),
        worker_env: env,
        azure_endpoint: true,
        ..Options::default()
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn dalle3_over_azure_openai(pool: PgPool) {
    let stack = start(&pool, azure_options()).await;
    let r = stack
        .post("/api/v1/generate", generate_body("A harbour at dawn"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["images"][0]["width"], 1024);
    let stats = stack.emulator_stats().await;
    assert_eq!(
        (
            stats["azure"]["requests"].as_u64(),
            stats["openai"]["requests"].as_u64()
        ),
        (Some(1), Some(0)),
        "{stats}"
    );

    // Azure's 429 carries retry-after-ms; the worker waits and succeeds on the next attempt.
    stack
        .emulator_config_for("azure", json!({"rate_limit_next": 1, "retry_after_s": 1}))
        .await;
    let r = stack
        .post("/api/v1/generate", generate_body("patient harbour"), &[])
        .await;
    assert_eq!(
        (r.status, r.body["attempts"].as_i64()),
        (200, Some(2)),
        "{}",
        r.body
    );

    // The content filter on the generated image: moderated at the output stage, with the filter's categories.
    let r = stack
        .post(
            "/api/v1/generate",
            generate_body("emulator-moderate-output harbour"),
            &[],
        )
        .await;
    r.assert_error(422, "content_policy_violation");
    let job = stack
        .get(&format!(
            "/api/v1/jobs/{}",
            r.body["job_id"].as_str().expect("job id")
        ))
        .await;
    assert_eq!(job.body["moderation"]["stage"], "output", "{}", job.body);
    assert_eq!(
        job.body["moderation"]["categories"]["violence"]["filtered"], true,
        "{}",
        job.body
    );
    assert_eq!(job.body["attempts"], 1, "content filters are never retried");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_wrong_azure_deployment_fails_without_retries(pool: PgPool) {
    let mut options = azure_options();
    options
        .worker_env
        .push(kv("AZURE_OPENAI_DEPLOYMENT_NAME", "no-such-deployment"));
    let stack = start(&pool, options).await;
    let r = stack
        .post("/api/v1/generate", generate_body("lost"), &[])
        .await;
    r.assert_error(502, "provider_error");
    assert!(
        r.body["message"]
            .as_str()
            .expect("message")
            .contains("AZURE_OPENAI_DEPLOYMENTS"),
        "{}",
        r.body
    );
    assert_eq!(stack.emulator_stats().await["azure"]["requests"], 1);
}

fn flux_options() -> Options {
    let env = vec![kv("FLUX_API_KEY", support::API_KEY)];
    Options {
        api_env: env.clone(),
        worker_env: env,
        flux_endpoint: true,
        ..Options::default()
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn flux_schnell_makes_several_seeded_images_in_one_call(pool: PgPool) {
    let stack = start(&pool, flux_options()).await;
    let providers = stack.get("/api/v1/providers").await;
    assert_eq!(
        providers.body["providers"][2]["configured"], true,
        "{}",
        providers.body
    );

    let body = json!({"prompt": "Abstract geometric patterns in blue and gold", "provider": "flux_schnell",
        "size": "1536x1024", "num_images": 3, "seed": 42});
    let r = stack.post("/api/v1/generate", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["provider"].as_str(), r.body["model"].as_str()),
        (Some("flux"), Some("flux-schnell"))
    );
    let images = r.body["images"].as_array().expect("images");
    assert_eq!(images.len(), 3);
    assert_eq!(
        images
            .iter()
            .map(|i| i["seed"].as_i64())
            .collect::<Vec<_>>(),
        [Some(42), Some(43), Some(44)]
    );
    let (status, _, bytes) = download(&stack, images[0]["url"].as_str().expect("url")).await;
    assert_eq!(status, 200);
    assert_eq!(png_size(&bytes), (1536, 1024));
    // The seed reached the provider: the emulator's picture for (prompt, 42) is exactly what we stored.
    let expected = imagegen_emulator::render_png(
        "Abstract geometric patterns in blue and gold",
        42,
        1536,
        1024,
    );
    assert_eq!(bytes, expected);
    let stats = stack.emulator_stats().await;
    assert_eq!(
        stats["flux"]["requests"], 1,
        "n images in one call: {stats}"
    );

    // Without a seed, one is drawn and recorded, so the picture can be made again.
    let r = stack
        .post(
            "/api/v1/generate",
            json!({"prompt": "waves", "provider": "flux_schnell", "size": "512x512"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["images"][0]["seed"].as_i64().is_some(), "{}", r.body);

    // The safety checker's refusal is moderation of the output.
    let r = stack
        .post(
            "/api/v1/generate",
            json!({"prompt": "emulator-moderate waves", "provider": "flux_schnell"}),
            &[],
        )
        .await;
    r.assert_error(422, "content_policy_violation");
    let job = stack
        .get(&format!(
            "/api/v1/jobs/{}",
            r.body["job_id"].as_str().expect("job id")
        ))
        .await;
    assert_eq!(job.body["moderation"]["stage"], "output", "{}", job.body);
}

#[sqlx::test(migrations = "./migrations")]
async fn flux_results_can_be_downloaded_from_urls(pool: PgPool) {
    let mut options = flux_options();
    options.worker_env.push(kv("OPENAI_RESPONSE_FORMAT", "url"));
    let stack = start(&pool, options).await;
    stack
        .emulator_config_for("flux", json!({"fail_next": 1, "error_status": 503}))
        .await;
    let body = json!({"prompt": "a quiet lake", "provider": "flux_schnell", "size": "768x768", "num_images": 2});
    let r = stack.post("/api/v1/generate", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (
            r.body["attempts"].as_i64(),
            r.body["images"].as_array().map(Vec::len)
        ),
        (Some(2), Some(2))
    );
    let (_, headers, bytes) =
        download(&stack, r.body["images"][1]["url"].as_str().expect("url")).await;
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    assert_eq!(png_size(&bytes), (768, 768));
}

#[sqlx::test(migrations = "./migrations")]
async fn flux_over_black_forest_labs_submits_polls_and_maps_sizes(pool: PgPool) {
    let options = Options {
        flux_bfl: true,
        ..flux_options()
    };
    let stack = start(&pool, options).await;
    stack
        .emulator_config_for("bfl", json!({"latency_ms": 1200}))
        .await;

    let body = json!({"prompt": "Ocean waves", "provider": "flux_schnell", "size": "1536x1024", "num_images": 2, "seed": 7});
    let r = stack.post("/api/v1/generate", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let images = r.body["images"].as_array().expect("images");
    assert_eq!(images.len(), 2);
    // BFL caps sides at 1440: the stored pictures say what was really made, and the job says why.
    assert_eq!(
        (images[0]["width"].as_i64(), images[0]["height"].as_i64()),
        (Some(1440), Some(960))
    );
    assert_eq!(
        images
            .iter()
            .map(|i| i["seed"].as_i64())
            .collect::<Vec<_>>(),
        [Some(7), Some(8)]
    );
    assert_eq!(
        r.body["provider_details"]["tasks"][0]["size_sent"], "1440x960",
        "{}",
        r.body
    );
    // BFL does not serve schnell: the seed's flux_schnell went to BFL's FLUX model, and the job says so.
    assert_eq!(
        (r.body["model"].as_str(), r.body["served_by"].as_str()),
        (Some("flux-dev"), Some("bfl:flux-dev"))
    );
    assert_eq!(
        r.body["translations"],
        json!([
            "flux-schnell is not served here: served by flux-dev",
            "size 1536x1024 -> 1440x960 (nearest on flux-dev)",
            "num_images 2 split into 2 calls of up to 1"
        ])
    );
    assert_eq!(
        r.body["provider_details"]["cost_credits"].as_f64(),
        Some(5.0),
        "BFL's cost per task is recorded"
    );
    let (_, _, bytes) = download(&stack, images[1]["url"].as_str().expect("url")).await;
    assert_eq!(
        bytes,
        imagegen_emulator::render_png("Ocean waves", 8, 1440, 960)
    );
    assert_eq!(
        stack.emulator_stats().await["bfl"]["requests"],
        2,
        "one task per image"
    );

    for (prompt, stage) in [
        ("emulator-moderate waves", "input"),
        ("emulator-moderate-output waves", "output"),
    ] {
        let r = stack
            .post(
                "/api/v1/generate",
                json!({"prompt": prompt, "provider": "flux_schnell"}),
                &[],
            )
            .await;
        r.assert_error(422, "content_policy_violation");
        let job = stack
            .get(&format!(
                "/api/v1/jobs/{}",
                r.body["job_id"].as_str().expect("job id")
            ))
            .await;
        assert_eq!(job.body["moderation"]["stage"], stage, "{}", job.body);
    }
}

fn dalle3_and_flux() -> Options {
    let env = vec![kv("FLUX_API_KEY", support::API_KEY)];
    Options {
        api_env: env.clone(),
        worker_env: env,
        flux_endpoint: true,
        ..Options::default()
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn a_dalle3_outage_fails_over_to_flux_with_the_request_translated(pool: PgPool) {
    let mut options = dalle3_and_flux();
    // The API records the bound on the job; the worker applies it per route.
    options.api_env.push(kv("PROVIDER_MAX_ATTEMPTS", "2"));
    options.worker_env.push(kv("PROVIDER_MAX_ATTEMPTS", "2"));
    let stack = start(&pool, options).await;
    stack
        .emulator_config(json!({"error_rate": 1.0, "error_status": 500}))
        .await;

    let body = json!({"prompt": "Mountain landscape", "provider": "dalle3", "size": "1792x1024", "quality": "hd"});
    let r = stack.post("/api/v1/generate", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["provider"].as_str(), r.body["served_by"].as_str()),
        (Some("openai"), Some("flux:flux-schnell"))
    );
    let translations: Vec<&str> = r.body["translations"]
        .as_array()
        .expect("translations")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    // dall-e-3 is retired: gpt-image-2 took the request (1792x1024 as it is, hd as high), then FLUX served it.
    assert_eq!(
        translations,
        [
            "model dall-e-3 retired on 2026-05-12: served by gpt-image-2",
            "quality hd -> high",
            "style vivid dropped (gpt-image-2 has none)",
            "served by flux-schnell instead of gpt-image-2",
            "quality high dropped (flux-schnell has none)"
        ],
    );
    assert_eq!(
        (
            r.body["images"][0]["width"].as_i64(),
            r.body["images"][0]["height"].as_i64()
        ),
        (Some(1792), Some(1024))
    );
    let stats = stack.emulator_stats().await;
    assert_eq!(
        (
            stats["openai"]["requests"].as_u64(),
            stats["flux"]["requests"].as_u64()
        ),
        (Some(2), Some(1)),
        "{stats}"
    );

    // The client can forbid it.
    let body =
        json!({"prompt": "Mountain landscape", "provider": "dalle3", "allow_failover": false});
    let r = stack.post("/api/v1/generate", body, &[]).await;
    r.assert_error(502, "provider_error");

    // Moderation is never failed over.
    let r = stack
        .post(
            "/api/v1/generate",
            json!({"prompt": "emulator-moderate x", "provider": "flux_schnell"}),
            &[],
        )
        .await;
    r.assert_error(422, "content_policy_violation");
    assert_eq!(
        stack.emulator_stats().await["openai"]["requests"],
        4,
        "no dalle3 call for a moderated flux job"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn an_open_circuit_fails_over_at_once_and_closes_after_recovery(pool: PgPool) {
    let mut options = dalle3_and_flux();
    options.worker_env.extend([
        kv("BREAKER_FAILURES", "2"),
        kv("BREAKER_COOLDOWN_SECS", "2"),
        kv("PROVIDER_MAX_ATTEMPTS", "2"),
    ]);
    let stack = start(&pool, options).await;
    stack
        .emulator_config(json!({"error_rate": 1.0, "error_status": 503}))
        .await;
    let r = stack
        .post("/api/v1/generate", generate_body("first"), &[])
        .await;
    assert_eq!(
        (r.status, r.body["served_by"].as_str()),
        (200, Some("flux:flux-schnell")),
        "{}",
        r.body
    );
    let providers = stack.get("/api/v1/providers").await;
    assert_eq!(
        providers.body["providers"][0]["circuit"], "open",
        "{}",
        providers.body
    );
    let health = stack.get("/health/").await;
    assert_eq!(
        health.body["components"]["provider:openai"]["status"], "circuit_open",
        "{}",
        health.body
    );

    let before = stack.emulator_requests().await;
    let r = stack
        .post("/api/v1/generate", generate_body("second"), &[])
        .await;
    assert_eq!(
        (r.status, r.body["served_by"].as_str()),
        (200, Some("flux:flux-schnell")),
        "{}",
        r.body
    );
    assert_eq!(
        stack.emulator_requests().await,
        before,
        "an open circuit is skipped without calling dalle3"
    );

    // DALL-E 3 recovers; after the cool-down one probe closes the circuit again.
    stack.emulator_config(json!({"error_rate": 0.0})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = stack
        .post("/api/v1/generate", generate_body("third"), &[])
        .await;
    assert_eq!(
        (r.status, r.body["served_by"].as_str()),
        (200, Some("openai:gpt-image-2")),
        "{}",
        r.body
    );
    let providers = stack.get("/api/v1/providers").await;
    assert_eq!(
        providers.body["providers"][0]["circuit"], "closed",
        "{}",
        providers.body
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
async fn a_hung_provider_call_times_out_and_is_retried(pool: PgPool) {
    let options = Options {
        worker_env: vec![kv("PROVIDER_TIMEOUT_SECS", "1")],
        ..Options::default()
    };
    let stack = start(&pool, options).await;
    stack.emulator_config(json!({"hang_next": 1})).await;
    let r = stack
        .post("/api/v1/generate", generate_body("wake up"), &[])
        .await;
    assert_eq!(
        (r.status, r.body["attempts"].as_i64()),
        (200, Some(2)),
        "{}",
        r.body
    );
    let retries = &r.body["provider_details"]["retries"];
    assert!(
        retries[0]["error"]
            .as_str()
            .expect("error")
            .contains("did not answer in time"),
        "{retries}"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn an_expired_result_url_fails_the_job_clearly(pool: PgPool) {
    let mut options = flux_options();
    options.worker_env.push(kv("OPENAI_RESPONSE_FORMAT", "url"));
    let stack = start(&pool, options).await;
    stack
        .emulator_config_for("flux", json!({"url_ttl_s": 0}))
        .await;
    let r = stack
        .post(
            "/api/v1/generate",
            json!({"prompt": "too late", "provider": "flux_schnell", "allow_failover": false}),
            &[],
        )
        .await;
    r.assert_error(502, "provider_error");
    assert!(
        r.body["message"].as_str().expect("message").contains("403"),
        "{}",
        r.body
    );
    let job = stack
        .get(&format!(
            "/api/v1/jobs/{}",
            r.body["job_id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(job.body["images"], json!([]), "nothing half-stored");
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

/// Storage settings for moto's S3 server or Azurite, as `scripts/services.sh` starts them.
fn storage_env(backend: &str) -> Vec<(String, String)> {
    match backend {
        "s3" => vec![
            kv("STORAGE_BACKEND", "s3"),
            kv("S3_BUCKET", "imagegen-test"),
            kv(
                "S3_PREFIX",
                format!("e2e-{}", uuid::Uuid::new_v4().simple()),
            ),
            kv("AWS_REGION", "us-east-1"),
            kv("AWS_ACCESS_KEY_ID", "testing"),
            kv("AWS_SECRET_ACCESS_KEY", "testing"),
            kv(
                "S3_ENDPOINT",
                std::env::var("TEST_S3_ENDPOINT")
                    .unwrap_or_else(|_| "http://127.0.0.1:5000".into()),
            ),
        ],
        _ => vec![
            kv("STORAGE_BACKEND", "azure"),
            kv(
                "AZURE_STORAGE_CONNECTION_STRING",
                format!(
                    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
                     AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
                     BlobEndpoint={};",
                    std::env::var("TEST_AZURITE_BLOB_ENDPOINT")
                        .unwrap_or_else(|_| "http://127.0.0.1:10000/devstoreaccount1".into())
                ),
            ),
            kv("AZURE_STORAGE_CONTAINER", "imagegen-test"),
        ],
    }
}

/// A job stored in S3 or Azure and read back through the API: whole, by range, revalidated, then (signed mode) by
/// redirect to a pre-signed URL, and deleted.
async fn a_job_is_stored_and_served_from(pool: &PgPool, backend: &str) {
    let env = storage_env(backend);
    let mut stack = start(
        pool,
        Options {
            api_env: env.clone(),
            worker_env: env.clone(),
            ..Options::default()
        },
    )
    .await;
    let r = stack
        .post("/api/v1/generate", generate_body("stored far away"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let url = r.body["images"][0]["url"].as_str().expect("url").to_owned();
    let sha = r.body["images"][0]["sha256"]
        .as_str()
        .expect("sha")
        .to_owned();
    let (status, headers, bytes) = download(&stack, &url).await;
    assert_eq!(status, 200);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
    assert_eq!(
        headers["content-length"].to_str().ok(),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(headers["accept-ranges"], "bytes");

    let part = stack
        .http
        .get(&url)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"].to_str().ok(),
        Some(format!("bytes 10-19/{}", bytes.len()).as_str())
    );
    assert_eq!(part.bytes().await.expect("bytes"), bytes[10..20]);
    let beyond = stack
        .http
        .get(&url)
        .header("Range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .expect("range");
    assert_eq!(beyond.status(), 416);
    let unchanged = stack
        .http
        .get(&url)
        .header("If-None-Match", format!("\"{sha}\""))
        .send()
        .await
        .expect("revalidate");
    assert_eq!(unchanged.status(), 304);

    // Direct downloads: the API redirects to a short-lived pre-signed URL on the same storage.
    stack
        .restart_api_with(&[kv("STORAGE_PUBLIC_URLS", "signed")])
        .await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // The API moved to a new port.
    let path = url
        .split_once("/api/")
        .map(|(_, p)| format!("/api/{p}"))
        .expect("path");
    let url = stack.url(&path);
    let redirect = no_redirects.get(&url).send().await.expect("download");
    assert_eq!(redirect.status(), 307);
    let location = redirect.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(!location.contains("/api/v1/"), "{location}");
    let direct = no_redirects
        .get(&location)
        .send()
        .await
        .expect("signed URL");
    assert_eq!(direct.status(), 200, "{location}");
    assert_eq!(
        hex::encode(Sha256::digest(direct.bytes().await.expect("bytes"))),
        sha
    );

    let image_id = url.rsplit('/').nth(1).expect("image id").to_owned();
    let deleted = stack
        .http
        .delete(stack.url(&format!("/api/v1/images/{image_id}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    let gone = no_redirects
        .get(&location)
        .send()
        .await
        .expect("signed URL");
    assert_eq!(gone.status(), 404, "the object itself is gone");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_job_is_stored_in_s3_and_served_through_the_api(pool: PgPool) {
    a_job_is_stored_and_served_from(&pool, "s3").await;
}

#[sqlx::test(migrations = "./migrations")]
async fn a_job_is_stored_in_azure_blob_and_served_through_the_api(pool: PgPool) {
    a_job_is_stored_and_served_from(&pool, "azure").await;
}

/// ENABLE_AUTHENTICATION with API keys from `imagegen keys`: no key or a bad one is 401 (with WWW-Authenticate,
/// never echoing the key), each owner sees only its own jobs and images (the other's ids are 404), a revoked key
/// stops working at once; health stays open.
#[sqlx::test(migrations = "./migrations")]
async fn api_keys_authenticate_and_isolate_owners(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            api_env: vec![
                kv("ENABLE_AUTHENTICATION", "true"),
                kv(
                    "DOWNLOAD_SIGNING_KEY",
                    "e2e-signing-key-of-at-least-32-chars",
                ),
            ],
            ..Options::default()
        },
    )
    .await;
    let alice = stack.keys(&["create", "--owner", "alice"]).await;
    let bob = stack
        .keys(&["create", "--owner", "bob", "--name", "ci"])
        .await;
    assert!(alice.starts_with("igk_") && alice != bob, "{alice}");

    // No credentials, a malformed one, an unknown key: 401 in the seed's shape, the key never echoed.
    let r = stack
        .post("/api/v1/jobs", json!({"prompt": "x"}), &[])
        .await;
    r.assert_error(401, "authentication_required");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="imagegen""#)
    );
    for bad in [
        "Bearer igk_not-a-key",
        "Bearer eyJhbGciOiJub25lIn0.e30.",
        "Basic YWxpY2U6cHc=",
    ] {
        let r = stack
            .post(
                "/api/v1/jobs",
                json!({"prompt": "x"}),
                &[("Authorization", bad)],
            )
            .await;
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
        assert!(!r.body.to_string().contains("igk_not-a-key"), "{}", r.body);
    }
    assert_eq!(
        stack.get("/health/ready").await.status,
        200,
        "health needs no key"
    );

    // Alice's job and image; Bob sees neither, exactly like ids that do not exist.
    let bearer_alice = format!("Bearer {alice}");
    let r = stack
        .post(
            "/api/v1/generate",
            generate_body("alice's lighthouse"),
            &[("Authorization", bearer_alice.as_str())],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let job_id = r.body["job_id"].as_str().expect("job id").to_owned();
    let image_id = r.body["images"][0]["id"]
        .as_str()
        .expect("image id")
        .to_owned();
    for path in [
        format!("/api/v1/jobs/{job_id}"),
        format!("/api/v1/images/{image_id}"),
        format!("/api/v1/images/{image_id}/download"),
    ] {
        let own = stack
            .http
            .get(stack.url(&path))
            .bearer_auth(&alice)
            .send()
            .await
            .expect("get");
        assert_eq!(own.status(), 200, "{path}");
        let other = stack
            .http
            .get(stack.url(&path))
            .header("X-API-Key", &bob)
            .send()
            .await
            .expect("get");
        assert_eq!(other.status(), 404, "{path}");
    }
    // Batches, cancel, delete and idempotency keys are scoped too.
    let batch = stack
        .http
        .post(stack.url("/api/v1/generate/batch"))
        .bearer_auth(&alice)
        .header("Prefer", "respond-async")
        .json(&json!([{"prompt": "batch item"}]))
        .send()
        .await
        .expect("batch");
    assert_eq!(batch.status(), 202);
    let batch: serde_json::Value = batch.json().await.expect("json");
    let batch_id = batch["batch_id"].as_str().expect("batch id").to_owned();
    for (method, path) in [
        (reqwest::Method::GET, format!("/api/v1/batches/{batch_id}")),
        (
            reqwest::Method::POST,
            format!("/api/v1/jobs/{job_id}/cancel"),
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/images/{image_id}"),
        ),
    ] {
        let other = stack
            .http
            .request(method.clone(), stack.url(&path))
            .header("X-API-Key", &bob)
            .send()
            .await
            .expect("request");
        assert_eq!(other.status(), 404, "{method} {path}");
    }
    let keyed = |key: String| {
        let (http, url) = (stack.http.clone(), stack.url("/api/v1/jobs"));
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", "shared-key")
                .json(&json!({"prompt": "same key"}))
                .send()
                .await
                .expect("submit");
            assert_eq!(r.status(), 202);
            r.json::<serde_json::Value>().await.expect("json")["job_id"].clone()
        }
    };
    assert_ne!(
        keyed(alice.clone()).await,
        keyed(bob.clone()).await,
        "one key, two owners: two jobs"
    );

    // The image URL handed out is a signed link: it works without any header (an `<img src>`), and only as given.
    let signed = r.body["images"][0]["url"].as_str().expect("url").to_owned();
    assert!(signed.contains("signature="), "{signed}");
    let plain = reqwest::Client::new();
    let got = plain.get(&signed).send().await.expect("signed download");
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/png");
    let tampered = signed.replace("signature=", "signature=00");
    assert_eq!(
        plain.get(&tampered).send().await.expect("get").status(),
        404
    );
    let unsigned = signed.split('?').next().expect("path").to_owned();
    assert_eq!(
        plain.get(&unsigned).send().await.expect("get").status(),
        401
    );
    let later = signed.replace("expires=", "expires=9");
    assert_eq!(
        plain.get(&later).send().await.expect("get").status(),
        404,
        "the expiry is signed too"
    );

    let listed: serde_json::Value = stack
        .http
        .get(stack.url("/api/v1/jobs"))
        .header("X-API-Key", &bob)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    // Bob's list holds only the job his own key made, none of Alice's.
    let prompts: Vec<&str> = listed["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["prompt"].as_str())
        .collect();
    assert_eq!(prompts, ["same key"], "{listed}");

    // Revoked: refused at once.
    let prefix: String = alice.chars().take(10).collect();
    stack.keys(&["revoke", &prefix]).await;
    let r = stack
        .http
        .get(stack.url(&format!("/api/v1/jobs/{job_id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    let listing = stack.keys(&["list"]).await;
    assert!(
        listing.contains("alice") && listing.contains("bob"),
        "{listing}"
    );
    assert!(!listing.contains(&bob), "keys are never listed");
}

/// Per-owner limits: requests per minute shared by two API processes (through Redis), images per day, and jobs
/// queued or running at once; over a limit, 429 with Retry-After and RateLimit-* headers; health is never limited.
#[sqlx::test(migrations = "./migrations")]
async fn per_owner_limits_are_shared_and_answer_429(pool: PgPool) {
    // Minute windows are fixed: start well inside one, so the count cannot reset halfway through the test.
    let second = chrono::Utc::now().timestamp() % 60;
    if second > 45 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
    let limits = vec![
        kv("RATE_LIMIT_PER_MINUTE", "8"),
        kv("IMAGE_QUOTA_PER_DAY", "3"),
        kv("MAX_ACTIVE_JOBS_PER_OWNER", "2"),
    ];
    let stack = start(
        &pool,
        Options {
            api_env: limits.clone(),
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    // Jobs in flight: two may wait, the third is refused.
    for i in 0..2 {
        let r = stack
            .post("/api/v1/jobs", json!({"prompt": format!("job {i}")}), &[])
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert!(r.header("ratelimit-remaining").is_some());
    }
    let r = stack
        .post("/api/v1/jobs", json!({"prompt": "one too many"}), &[])
        .await;
    r.assert_error(429, "rate_limited");
    assert!(r.header("retry-after").is_some() && r.header("ratelimit-limit") == Some("2"));
    // Cancel one: room for one more job, which is the third image of the day; the fourth image is over the quota.
    let listed = stack.get("/api/v1/jobs").await;
    let first = listed.body["jobs"][0]["job_id"]
        .as_str()
        .expect("job")
        .to_owned();
    let c = stack
        .post(&format!("/api/v1/jobs/{first}/cancel"), json!({}), &[])
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    let r = stack
        .post("/api/v1/jobs", json!({"prompt": "third image"}), &[])
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let c = stack
        .post(
            &format!(
                "/api/v1/jobs/{}/cancel",
                r.body["job_id"].as_str().expect("id")
            ),
            json!({}),
            &[],
        )
        .await;
    assert_eq!(c.status, 200);
    let r = stack
        .post("/api/v1/jobs", json!({"prompt": "fourth image"}), &[])
        .await;
    r.assert_error(429, "rate_limited");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("quota"),
        "{}",
        r.body
    );

    // Requests per minute: 8 requests so far (jobs, list, cancels), the whole budget. Another API process
    // on the same Redis refuses too (the count is the fleet's), while health stays open.
    if support::standalone() {
        let r = stack.get("/api/v1/jobs").await;
        r.assert_error(429, "rate_limited");
    } else {
        let mut env = stack.env.clone();
        env.extend([kv("API_HOST", "127.0.0.1"), kv("API_PORT", "0")]);
        env.extend(limits);
        let mut second = support::Proc::spawn("api-2", &["api"], &env);
        let other = format!("http://{}", second.listening_addr().await);
        let r = stack
            .http
            .get(format!("{other}/api/v1/jobs"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(
            stack
                .http
                .get(format!("{other}/health/ready"))
                .send()
                .await
                .expect("health")
                .status(),
            200
        );
    }
    assert_eq!(stack.get("/health/live").await.status, 200);
}

/// CORS from CORS_ORIGINS (exact origins; preflights answered, other origins get no grant) and security headers.
#[sqlx::test(migrations = "./migrations")]
async fn cors_and_security_headers(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            api_env: vec![kv(
                "CORS_ORIGINS",
                "https://app.example.com, http://localhost:3000",
            )],
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let preflight = |origin: &'static str| {
        stack
            .http
            .request(reqwest::Method::OPTIONS, stack.url("/api/v1/jobs"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type, x-api-key")
            .send()
    };
    let ok = preflight("https://app.example.com")
        .await
        .expect("preflight");
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = preflight("https://evil.example.com")
        .await
        .expect("preflight");
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    let r = stack
        .http
        .post(stack.url("/api/v1/jobs"))
        .header("Origin", "http://localhost:3000")
        .json(&json!({"prompt": "cors"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    assert!(
        h["access-control-expose-headers"]
            .to_str()
            .unwrap_or_default()
            .contains("location")
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap_or_default()
            .contains("default-src 'none'")
    );
    let docs = stack
        .http
        .get(stack.url("/docs/"))
        .send()
        .await
        .expect("docs");
    assert!(!docs.headers().contains_key("x-frame-options") || docs.status().is_redirection());
}
