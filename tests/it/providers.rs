//! Provider calls: retries (500s, 429 with Retry-After, hung calls, the attempt bound), final refusals (content
//! policy, bad credentials), Azure OpenAI, FLUX and Black Forest Labs on the emulator, failover between providers
//! and circuit breakers.

use crate::support::{
    Options, azure_options, dalle3_and_flux, download, flux_options, generate_body, kv, png_size,
    start,
};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

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

/// Every provider call may be paid: JOB_MAX_PROVIDER_CALLS bounds a job's calls over all its routes, failover
/// included, whatever PROVIDER_MAX_ATTEMPTS allows per route.
#[sqlx::test(migrations = "./migrations")]
async fn a_failover_chain_makes_no_more_calls_than_the_jobs_budget(pool: PgPool) {
    let mut options = dalle3_and_flux();
    for env in [&mut options.api_env, &mut options.worker_env] {
        env.extend([
            kv("PROVIDER_MAX_ATTEMPTS", "2"),
            kv("JOB_MAX_PROVIDER_CALLS", "3"),
        ]);
    }
    let stack = start(&pool, options).await;
    for protocol in ["openai", "flux"] {
        stack
            .emulator_config_for(protocol, json!({"error_rate": 1.0, "error_status": 500}))
            .await;
    }
    let r = stack
        .post("/api/v1/generate", generate_body("never works"), &[])
        .await;
    r.assert_error(502, "provider_error");
    let job_id = r.body["job_id"].as_str().expect("job id");
    let job = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(job.body["attempts"], 3, "{}", job.body);
    let stats = stack.emulator_stats().await;
    assert_eq!(
        (
            stats["openai"]["requests"].as_u64(),
            stats["flux"]["requests"].as_u64()
        ),
        (Some(2), Some(1)),
        "two on openai (its route's attempts), one on flux (the budget's last): {stats}"
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
