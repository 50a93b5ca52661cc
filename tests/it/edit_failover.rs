//! End to end, an edit failing over: only to models that can take its inputs. OpenAI's gpt-image-2 fails; the FLUX
//! host's default model (flux-schnell, no edits) is passed over with the reason recorded; Black Forest Labs' FLUX.1
//! Kontext takes the two reference images and serves the edit. Both calls carry exactly the uploaded bytes.

use crate::edits::post_edit;
use crate::support::{API_KEY, Options, kv, multipart, png, sha256_hex, start};
use serde_json::Value;
use sqlx::PgPool;

#[sqlx::test(migrations = "./migrations")]
async fn an_edit_fails_over_only_to_a_model_that_can_take_its_inputs(pool: PgPool) {
    let env = vec![
        kv("FLUX_API_KEY", API_KEY),
        kv("BFL_API_KEY", API_KEY),
        kv("BFL_MODEL", "flux-kontext-pro"),
        kv("FAILOVER_ORDER", "openai,flux,bfl"),
        kv("PROVIDER_MAX_ATTEMPTS", "1"),
    ];
    let stack = start(
        &pool,
        Options {
            api_env: env.clone(),
            worker_env: env,
            flux_endpoint: true,
            bfl_endpoint: true,
            ..Options::default()
        },
    )
    .await;
    stack
        .emulator_config(serde_json::json!({"error_rate": 1.0, "error_status": 500}))
        .await;
    let (first, second) = (png(64, 64, false), png(96, 64, false));
    let shas = serde_json::json!([sha256_hex(&first), sha256_hex(&second)]);
    let r = post_edit(
        &stack,
        "/api/v1/edits",
        multipart(
            &[("image[]", "a.png", first), ("image[]", "b.png", second)],
            &[
                (
                    "prompt",
                    "Put the cat from the first picture on the sofa of the second",
                ),
                ("model", "gpt-image-2"),
                ("input_fidelity", "high"),
            ],
        ),
        &[("prefer", "wait=60")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    assert_eq!(r.body["served_by"], "bfl:flux-kontext-pro", "{}", r.body);
    // What changed on the way is recorded, as for a generation.
    let translations = r.body["translations"].to_string();
    assert!(translations.contains("flux-kontext-pro"), "{}", r.body);
    assert!(translations.contains("input_fidelity"), "{}", r.body);

    // The history: the failed call, and the FLUX host's model passed over because it does not edit.
    let job = r.body["job_id"].as_str().expect("job_id");
    let job = stack.get(&format!("/api/v1/jobs/{job}")).await;
    let retries = job.body["provider_details"]["retries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        retries
            .iter()
            .any(|a| a["route"] == "openai:gpt-image-2" && a["status"] == 500),
        "{}",
        job.body
    );
    assert!(
        retries
            .iter()
            .any(|a| a["route"] == "flux:flux-schnell" && a["skipped"].is_string()),
        "{}",
        job.body
    );

    // Both providers were sent exactly the uploaded images, in order.
    let calls = stack.emulator_edits().await;
    let edits = Value::from(calls.clone());
    assert_eq!(calls.len(), 2, "{edits}");
    for call in &calls {
        assert_eq!(call["images"], shas, "{edits}");
    }
    assert_eq!(calls[0]["protocol"], "openai", "{edits}");
    assert_eq!(calls[1]["protocol"], "bfl", "{edits}");
}
