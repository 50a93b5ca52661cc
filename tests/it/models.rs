//! End to end, the model catalogue: GPT image models with every field on OpenAI and Azure OpenAI (both paths), FLUX.2
//! and Kontext on Black Forest Labs, a retired model served by its replacement (recorded, with headers) or refused,
//! a deprecated one served with notice, and a model added by MODEL_CATALOG_FILE without a rebuild.

use crate::support::{Options, Stack, azure, bfl, kv, start};
use serde_json::json;
use sqlx::PgPool;

/// The bytes of an image link, which must answer 200 (unlike `support::download`, which returns any answer).
async fn download(stack: &Stack, url: &str) -> Vec<u8> {
    let r = stack.http.get(url).send().await.expect("download");
    assert_eq!(r.status().as_u16(), 200);
    r.bytes().await.expect("bytes").to_vec()
}

fn dimensions(bytes: &[u8]) -> (usize, usize) {
    let size = imagesize::blob_size(bytes).expect("an image");
    (size.width, size.height)
}

#[sqlx::test(migrations = "./migrations")]
async fn gpt_image_on_openai_takes_every_field_and_records_usage(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let body = json!({"prompt": "A lighthouse at dusk", "model": "gpt-image-2", "size": "1536x1024", "quality": "high",
        "background": "opaque", "output_format": "jpeg", "output_compression": 80, "moderation": "low", "num_images": 2});
    let r = stack.post("/api/v1/generate", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let b = &r.body;
    assert_eq!(
        (b["model"].as_str(), b["served_by"].as_str()),
        (Some("gpt-image-2"), Some("openai:gpt-image-2"))
    );
    assert_eq!(
        (
            b["output_format"].as_str(),
            b["output_compression"].as_u64(),
            b["background"].as_str(),
            b["moderation_level"].as_str()
        ),
        (Some("jpeg"), Some(80), Some("opaque"), Some("low"))
    );
    assert!(
        r.header("warning").is_none(),
        "a current model has no notice"
    );
    // What the provider reported is stored with the job: token usage and the options it echoed.
    let usage = &b["usage"];
    assert!(
        usage["output_tokens"].as_u64().is_some_and(|t| t > 0),
        "{b}"
    );
    assert!(
        usage["input_tokens_details"]["text_tokens"]
            .as_u64()
            .is_some(),
        "{b}"
    );
    assert_eq!(
        b["provider_details"]["answered"]["output_format"], "jpeg",
        "{b}"
    );
    let images = b["images"].as_array().expect("images");
    assert_eq!(images.len(), 2);
    for image in images {
        assert_eq!(image["content_type"], "image/jpeg");
        let bytes = download(&stack, image["url"].as_str().expect("url")).await;
        assert_eq!(dimensions(&bytes), (1536, 1024));
    }
    // Read back later, the job still carries its usage.
    let job = stack
        .get(&format!(
            "/api/v1/jobs/{}",
            b["job_id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(job.body["usage"], *usage);

    // `auto` lets the model choose; webp comes back as webp.
    let body = json!({"prompt": "A lighthouse at dawn", "model": "gpt-image-2", "size": "auto", "output_format": "webp"});
    let r = stack.post("/api/v1/generate", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (
            r.body["size"].as_str(),
            r.body["images"][0]["content_type"].as_str()
        ),
        (Some("auto"), Some("image/webp"))
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn gpt_image_on_azure_deployments_and_v1_paths(pool: PgPool) {
    for path in ["deployments", "v1"] {
        let stack = start(&pool, azure(path)).await;
        // Azure offers no webp: the request is translated for it, and the job says so.
        let body = json!({"prompt": "A harbour at dawn", "model": "gpt-image-1-mini", "size": "1024x1536", "quality": "medium",
            "output_format": "webp", "background": "transparent"});
        let r = stack.post("/api/v1/generate", body, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.body["served_by"], "azure_openai:gpt-image-1-mini");
        assert_eq!(
            r.body["translations"],
            json!(["output_format webp -> png"]),
            "{}",
            r.body
        );
        assert_eq!(r.body["images"][0]["content_type"], "image/png");
        assert_eq!(r.body["provider_details"]["deployment"], "mini-prod");
        assert!(
            r.body["usage"]["total_tokens"].as_u64().is_some(),
            "{}",
            r.body
        );
        // gpt-image-1-mini is deprecated: served, with notice of its retirement.
        assert!(
            r.header("sunset").is_some_and(|s| s.contains("2027")),
            "{:?}",
            r.header("sunset")
        );
        let stats = stack.emulator_stats().await;
        assert_eq!(
            (
                stats["azure"]["requests"].as_u64(),
                stats["openai"]["requests"].as_u64()
            ),
            (Some(1), Some(0)),
            "{stats}"
        );
        // Pinned to Azure, webp is refused before anything is queued.
        let r = stack
            .post(
                "/api/v1/generate",
                json!({"prompt": "x", "provider": "azure_openai", "output_format": "webp"}),
                &[],
            )
            .await;
        r.assert_error(400, "validation_failed");
        assert_eq!(r.body["details"][0]["field"], "output_format");
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn flux_2_on_black_forest_labs_with_a_non_square_size(pool: PgPool) {
    let stack = start(&pool, bfl()).await;
    let body = json!({"prompt": "A fox in the snow", "model": "flux-2-pro", "size": "1920x1088", "seed": 11, "output_format": "jpeg"});
    let r = stack.post("/api/v1/generate", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["served_by"], "bfl:flux-2-pro");
    let image = &r.body["images"][0];
    assert_eq!(
        (
            image["width"].as_i64(),
            image["height"].as_i64(),
            image["seed"].as_i64()
        ),
        (Some(1920), Some(1088), Some(11))
    );
    assert_eq!(image["content_type"], "image/jpeg");
    assert!(
        r.body["provider_details"]["cost_credits"]
            .as_f64()
            .is_some_and(|c| c > 0.0),
        "{}",
        r.body
    );

    // Kontext takes an aspect ratio, not pixels: 1248x832 goes as 3:2.
    let body = json!({"prompt": "A fox at noon", "model": "flux-kontext-pro", "size": "1248x832"});
    let r = stack.post("/api/v1/generate", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["provider_details"]["tasks"][0]["size_sent"], "3:2",
        "{}",
        r.body
    );

    // A size FLUX.2 cannot take is refused before anything is queued, naming the rules.
    let r = stack
        .post(
            "/api/v1/generate",
            json!({"prompt": "x", "model": "flux-2-pro", "size": "1000x1000"}),
            &[],
        )
        .await;
    r.assert_error(400, "validation_failed");
    assert!(
        r.body["message"]
            .as_str()
            .expect("message")
            .contains("multiples of 16"),
        "{}",
        r.body
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn a_retired_model_is_served_by_its_replacement_or_refused(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let body = json!({"prompt": "Mountain landscape", "model": "dall-e-3", "size": "1792x1024", "quality": "hd", "style": "natural"});
    let r = stack.post("/api/v1/generate", body.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["model"].as_str(), r.body["requested_model"].as_str()),
        (Some("gpt-image-2"), Some("dall-e-3"))
    );
    assert_eq!(
        r.body["translations"],
        json!([
            "model dall-e-3 retired on 2026-05-12: served by gpt-image-2",
            "quality hd -> high",
            "style natural dropped (gpt-image-2 has none)"
        ])
    );
    assert_eq!(
        r.header("warning"),
        Some(r#"299 imagegen "model dall-e-3 is retired; served by gpt-image-2""#)
    );
    assert_eq!(r.header("sunset"), Some("Tue, 12 May 2026 00:00:00 GMT"));
    assert!(r.header("deprecation").is_some_and(|d| d.starts_with('@')));
    // The emulator answers dall-e-3 as OpenAI does now (404): nothing asked it for the retired model.
    let stats = stack.emulator_stats().await;
    assert_eq!(
        stats["openai"]["by_status"]["404"],
        serde_json::Value::Null,
        "{stats}"
    );

    let metrics = stack.metrics_text().await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("imagegen_deprecated_model_requests_total") && l.contains("dall-e-3")
        ),
        "{metrics}"
    );

    // With aliasing off the same request is refused, naming the replacement; nothing is recorded.
    drop(stack);
    let env = vec![kv("MODEL_ALIASES", "none")];
    let stack = start(
        &pool,
        Options {
            api_env: env.clone(),
            worker_env: env,
            ..Options::default()
        },
    )
    .await;
    let before = stack.get("/api/v1/jobs").await.body["jobs"]
        .as_array()
        .map(Vec::len);
    let r = stack.post("/api/v1/generate", body, &[]).await;
    r.assert_error(410, "model_retired");
    let message = r.body["message"].as_str().expect("message");
    assert!(
        message.contains("retired on 2026-05-12") && message.contains("gpt-image-2"),
        "{message}"
    );
    let after = stack.get("/api/v1/jobs").await.body["jobs"]
        .as_array()
        .map(Vec::len);
    assert_eq!(before, after, "nothing half-written");
    // And in a batch, the item is named.
    let r = stack
        .post(
            "/api/v1/generate/batch",
            json!([{"prompt": "a"}, {"prompt": "b", "provider": "dalle3"}]),
            &[],
        )
        .await;
    r.assert_error(400, "validation_failed");
    assert_eq!(r.body["details"][0]["field"], "[1].model");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_catalogue_file_adds_a_model_without_a_rebuild(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!("imagegen-catalog-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("models.toml");
    std::fs::write(
        &file,
        "[[models]]\nid = \"flux-2-klein-9b\"\nextends = \"flux-2-klein-4b\"\nname = \"FLUX.2 [klein] 9B\"\n\
         serves.bfl = { model = \"flux-2-klein-9b\" }\n",
    )
    .expect("write");
    let mut options = bfl();
    for env in [&mut options.api_env, &mut options.worker_env] {
        env.push(kv("MODEL_CATALOG_FILE", file.to_string_lossy()));
    }
    let stack = start(&pool, options).await;
    let models = stack.get("/api/v1/models").await;
    let listed = models.body["models"]
        .as_array()
        .expect("models")
        .iter()
        .any(|m| m["id"] == "flux-2-klein-9b");
    assert!(listed, "{}", models.body);
    let r = stack
        .post(
            "/api/v1/generate",
            json!({"prompt": "A small fox", "model": "flux-2-klein-9b"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["served_by"], "bfl:flux-2-klein-9b");
    let _ = std::fs::remove_dir_all(&dir);
}
