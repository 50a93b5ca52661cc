//! End to end, image edits: the catalogue says which models edit (input images at most, mask) in
//! `GET /api/v1/models`; `POST /api/v1/edits` refuses bad inputs naming the part, with nothing stored or queued, and
//! runs a good edit as generate runs a job.

use crate::support::{
    Options, Reply, Stack, authentication_on, flux_options, kv, multipart, png, sha256_hex, start,
};
use serde_json::Value;
use sqlx::PgPool;

pub(crate) async fn post_edit(
    stack: &Stack,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Reply {
    stack.post_multipart(path, body, headers).await
}

/// Nothing of a refused edit remains: no job, no input row, no input object.
async fn assert_nothing_kept(stack: &Stack, pool: &PgPool) {
    assert_eq!(stack.count(pool, "SELECT count(*) FROM jobs").await, 0);
    assert_eq!(
        stack.count(pool, "SELECT count(*) FROM job_inputs").await,
        0
    );
    assert_eq!(
        stack
            .count(pool, "SELECT count(*) FROM pending_objects")
            .await,
        0
    );
    let inputs = stack.storage_dir.join("inputs");
    let left = std::fs::read_dir(&inputs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "input objects left in {}", inputs.display());
}

/// A 400 naming `part` in `details`.
fn assert_names_part(r: &Reply, part: &str) {
    r.assert_error(400, "validation_failed");
    let details = r.body["details"].as_array().expect("details");
    assert!(
        details.iter().any(|d| d["field"] == part),
        "{part} named: {}",
        r.body
    );
}

fn model<'a>(models: &'a Value, id: &str) -> &'a Value {
    models["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} listed: {models}"))
}

#[sqlx::test(migrations = "./migrations")]
async fn the_models_list_says_which_models_edit(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let r = stack.get("/api/v1/models").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let gpt = &model(&r.body, "gpt-image-2")["edits"];
    assert_eq!(gpt["max_input_images"], 16, "{gpt}");
    assert_eq!(
        (gpt["mask"].as_bool(), gpt["input_fidelity"].as_bool()),
        (Some(true), Some(true))
    );
    let kontext = &model(&r.body, "flux-kontext-pro")["edits"];
    assert_eq!(
        (
            kontext["max_input_images"].as_u64(),
            kontext["mask"].as_bool()
        ),
        (Some(4), Some(false))
    );
    assert_eq!(model(&r.body, "flux-2-pro")["edits"]["max_input_images"], 8);
    for id in ["flux-schnell", "dall-e-2", "dall-e-3"] {
        assert!(
            model(&r.body, id).get("edits").is_none(),
            "{id} does not edit"
        );
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn bad_edit_inputs_are_refused_naming_the_part_and_nothing_is_kept(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            api_env: vec![kv("EDIT_MAX_IMAGE_BYTES", "20000")],
            ..Options::default()
        },
    )
    .await;
    let prompt = ("prompt", "Make the door red");
    let model = ("model", "gpt-image-2");
    let image = png(64, 64, false);

    // Text with a .png name is not an image.
    let r = post_edit(
        &stack,
        "/api/v1/edits",
        multipart(
            &[
                ("image", "a.png", image.clone()),
                (
                    "image",
                    "notes.png",
                    b"just some text, not a picture".to_vec(),
                ),
            ],
            &[prompt, model],
        ),
        &[],
    )
    .await;
    assert_names_part(&r, "image[1]");

    // A mask of another size than the first image.
    let r = post_edit(
        &stack,
        "/api/v1/edits",
        multipart(
            &[
                ("image", "a.png", image.clone()),
                ("mask", "m.png", png(32, 32, true)),
            ],
            &[prompt, model],
        ),
        &[],
    )
    .await;
    assert_names_part(&r, "mask");

    // A mask without an alpha channel.
    let r = post_edit(
        &stack,
        "/api/v1/edits",
        multipart(
            &[
                ("image", "a.png", image.clone()),
                ("mask", "m.png", png(64, 64, false)),
            ],
            &[prompt, model],
        ),
        &[],
    )
    .await;
    assert_names_part(&r, "mask");

    // An image over EDIT_MAX_IMAGE_BYTES: 413 naming it.
    let r = post_edit(
        &stack,
        "/api/v1/edits",
        multipart(
            &[
                ("image", "a.png", image.clone()),
                ("image", "big.png", vec![0u8; 30_000]),
            ],
            &[prompt, model],
        ),
        &[],
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("image[1]")),
        "{}",
        r.body
    );

    // No images at all, and a JSON body on the multipart form.
    let r = post_edit(
        &stack,
        "/api/v1/edits",
        multipart(&[], &[prompt, model]),
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = stack
        .post("/api/v1/edits", serde_json::json!({"prompt": "x"}), &[])
        .await;
    assert!(
        r.status == 400 || r.status == 415,
        "{} {}",
        r.status,
        r.body
    );

    assert_nothing_kept(&stack, &pool).await;
}

#[sqlx::test(migrations = "./migrations")]
async fn too_many_images_and_a_model_that_does_not_edit_are_refused(pool: PgPool) {
    let stack = start(&pool, flux_options()).await;
    let image = png(16, 16, false);
    // flux-kontext-pro takes 4 images at most.
    let five: Vec<_> = (0..5).map(|_| ("image", "a.png", image.clone())).collect();
    let r = post_edit(
        &stack,
        "/api/v1/edits",
        multipart(
            &five,
            &[("prompt", "Red door"), ("model", "flux-kontext-pro")],
        ),
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.to_string().contains("flux-kontext-pro"),
        "{}",
        r.body
    );
    // flux-schnell does not edit.
    let r = post_edit(
        &stack,
        "/api/v1/edits",
        multipart(
            &[("image", "a.png", image)],
            &[("prompt", "Red door"), ("model", "flux-schnell")],
        ),
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.to_string().contains("does not edit"), "{}", r.body);
    assert_nothing_kept(&stack, &pool).await;
}

#[sqlx::test(migrations = "./migrations")]
async fn a_multipart_edit_runs_end_to_end_with_its_inputs_recorded(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let (image, mask) = (png(64, 64, false), png(64, 64, true));
    let (image_sha, mask_sha) = (sha256_hex(&image), sha256_hex(&mask));
    let r = post_edit(
        &stack,
        "/api/v1/edits",
        multipart(
            &[("image", "a.png", image), ("mask", "m.png", mask)],
            &[
                ("prompt", "Make the door red"),
                ("model", "gpt-image-2"),
                ("input_fidelity", "high"),
            ],
        ),
        &[("prefer", "wait=60")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let job = r.body["job_id"].as_str().expect("job_id").to_owned();
    assert_eq!(
        stack
            .count(
                &pool,
                &format!("SELECT count(*) FROM job_inputs WHERE storage_key LIKE 'inputs/{job}/%'")
            )
            .await,
        2
    );
    assert!(
        stack
            .storage_dir
            .join(format!("inputs/{job}/image-0.png"))
            .exists()
    );
    assert!(
        stack
            .storage_dir
            .join(format!("inputs/{job}/mask.png"))
            .exists()
    );
    assert_eq!(
        stack
            .count(&pool, "SELECT count(*) FROM pending_objects")
            .await,
        0
    );
    // The provider received an edit of exactly these bytes (the emulator records every edit call).
    let calls = stack.emulator_edits().await;
    let edits = Value::from(calls.clone());
    assert_eq!(calls.len(), 1, "{edits}");
    assert_eq!(
        calls[0]["images"],
        serde_json::json!([image_sha]),
        "{edits}"
    );
    assert_eq!(calls[0]["mask"], mask_sha, "{edits}");
    assert_eq!(calls[0]["prompt"], "Make the door red", "{edits}");
    assert_eq!(calls[0]["input_fidelity"], "high", "{edits}");
}

#[sqlx::test]
async fn the_openai_compatible_edit_answers_in_openai_shape(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let image = png(64, 64, false);
    let image_sha = sha256_hex(&image);
    let r = post_edit(
        &stack,
        "/v1/images/edits",
        multipart(
            &[
                ("image[]", "a.png", image),
                ("mask", "m.png", png(64, 64, true)),
            ],
            &[
                ("prompt", "Make the door red"),
                ("model", "gpt-image-2"),
                ("n", "1"),
                ("input_fidelity", "low"),
                ("user", "end-user-7"),
            ],
        ),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let data = r.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "{}", r.body);
    assert!(
        data[0]["b64_json"].as_str().is_some_and(|b| !b.is_empty()),
        "{}",
        r.body
    );
    assert!(r.body["created"].as_i64().is_some(), "{}", r.body);
    let edits = Value::from(stack.emulator_edits().await);
    assert_eq!(
        edits[0]["images"],
        serde_json::json!([image_sha]),
        "{edits}"
    );
    assert_eq!(edits[0]["input_fidelity"], "low", "{edits}");

    // A bad mask: OpenAI's error shape, naming the part; nothing more is queued.
    let r = post_edit(
        &stack,
        "/v1/images/edits",
        multipart(
            &[
                ("image", "a.png", png(64, 64, false)),
                ("mask", "m.png", png(32, 32, true)),
            ],
            &[("prompt", "Make the door red"), ("model", "gpt-image-2")],
        ),
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("mask"), "{}", r.body);
    assert_eq!(stack.count(&pool, "SELECT count(*) FROM jobs").await, 1);
}

/// A JSON edit (`application/json`), with the `prefer` headers given.
async fn post_json_edit(stack: &Stack, body: Value, headers: &[(&str, &str)]) -> Reply {
    stack.post("/api/v1/edits", body, headers).await
}

/// A picture of `prompt` generated on this stack: its id and sha256 (the emulator draws the same prompt alike).
async fn generated_image(stack: &Stack, prompt: &str) -> (String, String) {
    let r = stack
        .post(
            "/api/v1/generate",
            serde_json::json!({"prompt": prompt, "model": "gpt-image-2", "size": "1024x1024"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let image = &r.body["images"][0];
    (
        image["id"].as_str().expect("id").to_owned(),
        image["sha256"].as_str().expect("sha256").to_owned(),
    )
}

/// The JSON form naming one of the caller's own pictures: the picture is copied with the edit (stored under the
/// job's inputs, its source recorded) and the provider is sent exactly its bytes.
#[sqlx::test(migrations = "./migrations")]
async fn a_json_edit_of_an_image_already_in_the_service_runs_end_to_end(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let (image_id, sha) = generated_image(&stack, "a blue door").await;
    let r = post_json_edit(
        &stack,
        serde_json::json!({"prompt": "Make the door red", "model": "gpt-image-2",
            "images": [{"image_id": image_id}], "input_fidelity": "low"}),
        &[("prefer", "wait=60")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    let job = r.body["job_id"].as_str().expect("job_id");
    let calls = stack.emulator_edits().await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["images"], serde_json::json!([sha]));
    assert_eq!(calls[0]["input_fidelity"], "low");
    assert_eq!(
        stack
            .count(
                &pool,
                &format!(
                    // (Ids by the key only: SQLite keeps uuids as blobs.)
                    "SELECT count(*) FROM job_inputs WHERE source_image IS NOT NULL \
                     AND storage_key LIKE 'inputs/{job}/%'"
                )
            )
            .await,
        1
    );
    // The same request again under the same Idempotency-Key is the same job; another picture is another request.
    let body =
        serde_json::json!({"prompt": "Make the door green", "images": [{"image_id": image_id}]});
    let a = post_json_edit(
        &stack,
        body.clone(),
        &[("idempotency-key", "k1"), ("prefer", "respond-async")],
    )
    .await;
    let b = post_json_edit(
        &stack,
        body,
        &[("idempotency-key", "k1"), ("prefer", "respond-async")],
    )
    .await;
    assert_eq!(a.body["job_id"], b.body["job_id"], "{} {}", a.body, b.body);
    let (other_id, _) = generated_image(&stack, "a yellow door").await;
    let c = post_json_edit(
        &stack,
        serde_json::json!({"prompt": "Make the door green", "images": [{"image_id": other_id}]}),
        &[("idempotency-key", "k1"), ("prefer", "respond-async")],
    )
    .await;
    c.assert_error(422, "idempotency_key_reused");
}

/// JSON inputs that cannot be used are refused naming the part, and nothing of the edit is recorded or stored: an
/// unknown image id, loopback and private URLs (the webhooks' address check), a mask given by a private URL, an
/// input with both an id and a URL.
#[sqlx::test(migrations = "./migrations")]
async fn bad_json_inputs_are_refused_naming_the_part_and_nothing_is_kept(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let (image_id, _) = generated_image(&stack, "a blue door").await;
    let cases = [
        (
            serde_json::json!([{"image_id": uuid::Uuid::now_v7()}]),
            None,
            "image[0]",
        ),
        (
            serde_json::json!([{"image_url": "http://localhost/cat.png"}]),
            None,
            "image[0]",
        ),
        (
            serde_json::json!([{"image_id": image_id}, {"image_url": "https://127.0.0.1/cat.png"}]),
            None,
            "image[1]",
        ),
        (
            serde_json::json!([{"image_id": image_id}]),
            Some(serde_json::json!({"image_url": "https://10.0.0.1/mask.png"})),
            "mask",
        ),
        (
            serde_json::json!([{"image_id": image_id, "image_url": "https://169.254.169.254/x.png"}]),
            None,
            "image[0]",
        ),
    ];
    for (images, mask, part) in cases {
        let mut body = serde_json::json!({"prompt": "Make the door red", "images": images});
        if let Some(mask) = mask {
            body["mask"] = mask;
        }
        let r = post_json_edit(&stack, body.clone(), &[("prefer", "wait=10")]).await;
        assert_names_part(&r, part);
        assert!(r.body["correlation_id"].is_string(), "{}", r.body);
    }
    // Only the generation that made the picture is recorded.
    assert_eq!(stack.count(&pool, "SELECT count(*) FROM jobs").await, 1);
    assert_eq!(
        stack.count(&pool, "SELECT count(*) FROM job_inputs").await,
        0
    );
    assert_eq!(
        stack
            .count(&pool, "SELECT count(*) FROM pending_objects")
            .await,
        0
    );
    let inputs = stack.storage_dir.join("inputs");
    assert_eq!(
        std::fs::read_dir(&inputs).map(|d| d.count()).unwrap_or(0),
        0
    );
    // A body that is neither form.
    let r = Reply::from(
        stack
            .http
            .post(stack.url("/api/v1/edits"))
            .header("content-type", "text/plain")
            .body("draw")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.body);
}

/// An image given by URL: accepted (EDIT_URL_ALLOW_INSECURE lets a loopback http host stand in for a public https
/// one), fetched by the worker once, stored with the job, and sent to the provider byte for byte.
#[sqlx::test(migrations = "./migrations")]
async fn a_json_edit_of_an_image_url_is_fetched_by_the_worker_and_sent(pool: PgPool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let picture = png(80, 48, false);
    let sha = sha256_hex(&picture);
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let host = listener.local_addr().expect("addr");
    let app = {
        let (picture, hits) = (picture.clone(), hits.clone());
        axum::Router::new().route(
            "/cat.png",
            axum::routing::get(move || {
                let (picture, hits) = (picture.clone(), hits.clone());
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    ([("content-type", "image/png")], picture)
                }
            }),
        )
    };
    tokio::spawn(async move { axum::serve(listener, app).await });
    let insecure = vec![kv("EDIT_URL_ALLOW_INSECURE", "true")];
    let stack = start(
        &pool,
        Options {
            api_env: insecure.clone(),
            worker_env: insecure,
            ..Options::default()
        },
    )
    .await;
    let url = format!("http://{host}/cat.png");
    let r = post_json_edit(
        &stack,
        serde_json::json!({"prompt": "Give the cat a hat", "model": "gpt-image-2",
            "images": [{"image_url": url}]}),
        &[("prefer", "wait=60")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    let job = r.body["job_id"].as_str().expect("job_id");
    let calls = stack.emulator_edits().await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["images"], serde_json::json!([sha]));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        stack
            .count(
                &pool,
                &format!(
                    "SELECT count(*) FROM job_inputs WHERE source_url = '{url}' \
                     AND sha256 = '{sha}' AND storage_key LIKE 'inputs/{job}/%'"
                )
            )
            .await,
        1
    );
}

/// A batch of JSON edits: each item a job with its own inputs, answered as a generate batch; an invalid item
/// rejects the whole batch naming it, with nothing recorded or stored.
#[sqlx::test(migrations = "./migrations")]
async fn a_batch_of_edits_runs_each_with_its_own_inputs(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let (blue, blue_sha) = generated_image(&stack, "a blue door").await;
    let (yellow, yellow_sha) = generated_image(&stack, "a yellow door").await;

    let bad = stack
        .post(
            "/api/v1/edits/batch",
            serde_json::json!([
                {"prompt": "Make it red", "images": [{"image_id": blue}]},
                {"prompt": "Make it red", "images": [{"image_id": uuid::Uuid::now_v7()}]},
            ]),
            &[("prefer", "wait=10")],
        )
        .await;
    assert_names_part(&bad, "[1].image[0]");
    assert_eq!(stack.count(&pool, "SELECT count(*) FROM jobs").await, 2);
    assert_eq!(
        stack.count(&pool, "SELECT count(*) FROM job_inputs").await,
        0
    );

    let r = stack
        .post(
            "/api/v1/edits/batch",
            serde_json::json!([
                {"prompt": "Make it red", "model": "gpt-image-2", "images": [{"image_id": blue}]},
                {"prompt": "Make it green", "model": "gpt-image-2", "images": [{"image_id": yellow}],
                 "input_fidelity": "high"},
            ]),
            &[("prefer", "wait=60")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let jobs = r.body["items"].as_array().expect("items");
    assert_eq!(jobs.len(), 2, "{}", r.body);
    assert!(
        jobs.iter().all(|j| j["status"] == "succeeded"),
        "{}",
        r.body
    );
    let mut sent: Vec<(String, Value)> = stack
        .emulator_edits()
        .await
        .into_iter()
        .map(|c| {
            (
                c["prompt"].as_str().unwrap_or_default().to_owned(),
                c["images"].clone(),
            )
        })
        .collect();
    sent.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        sent,
        vec![
            ("Make it green".to_owned(), serde_json::json!([yellow_sha])),
            ("Make it red".to_owned(), serde_json::json!([blue_sha])),
        ]
    );
    assert_eq!(
        stack
            .count(
                &pool,
                "SELECT count(*) FROM job_inputs WHERE storage_key LIKE 'inputs/%'"
            )
            .await,
        2
    );
    assert_eq!(
        stack
            .count(&pool, "SELECT count(*) FROM pending_objects")
            .await,
        0
    );
}

/// An `image_id` is the caller's own: another owner's picture is refused exactly as one that does not exist (400
/// naming the part, nothing recorded or stored). The owner's own edit copies the picture at submission, so deleting
/// the original while the edit runs does not touch it: the first call fails, the original is deleted, and the retry
/// still sends exactly the picture's bytes.
#[sqlx::test(migrations = "./migrations")]
async fn an_image_id_is_the_callers_own_and_the_edit_keeps_its_copy(pool: PgPool) {
    use std::time::Duration;
    let stack = start(
        &pool,
        Options {
            api_env: authentication_on(),
            ..Options::default()
        },
    )
    .await;
    let alice = format!(
        "Bearer {}",
        stack.keys(&["create", "--owner", "alice"]).await
    );
    let bob = format!("Bearer {}", stack.keys(&["create", "--owner", "bob"]).await);
    let r = stack
        .post(
            "/api/v1/generate",
            serde_json::json!({"prompt": "a blue door", "model": "gpt-image-2", "size": "1024x1024"}),
            &[("authorization", alice.as_str())],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let image_id = r.body["images"][0]["id"].as_str().expect("id").to_owned();
    let sha = r.body["images"][0]["sha256"]
        .as_str()
        .expect("sha256")
        .to_owned();

    // Bob names Alice's picture, as an image and as a mask.
    let r = stack
        .post(
            "/api/v1/generate",
            serde_json::json!({"prompt": "a green door", "model": "gpt-image-2", "size": "1024x1024"}),
            &[("authorization", bob.as_str())],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let bob_image = r.body["images"][0]["id"].as_str().expect("id").to_owned();
    for (body, part) in [
        (
            serde_json::json!({"prompt": "Make it red", "images": [{"image_id": image_id}]}),
            "image[0]",
        ),
        (
            serde_json::json!({"prompt": "Make it red", "images": [{"image_id": bob_image}],
                "mask": {"image_id": image_id}}),
            "mask",
        ),
    ] {
        let r = post_json_edit(
            &stack,
            body,
            &[("authorization", bob.as_str()), ("prefer", "wait=10")],
        )
        .await;
        assert_names_part(&r, part);
    }
    assert_eq!(stack.count(&pool, "SELECT count(*) FROM jobs").await, 2);
    assert_eq!(
        stack.count(&pool, "SELECT count(*) FROM job_inputs").await,
        0
    );
    assert_eq!(
        stack
            .count(&pool, "SELECT count(*) FROM pending_objects")
            .await,
        0
    );

    // Alice's edit: its first call fails (and is retried a moment later); the original goes meanwhile.
    stack
        .emulator_config(
            serde_json::json!({"fail_next": 1, "error_status": 500, "latency_ms": 300}),
        )
        .await;
    let r = post_json_edit(
        &stack,
        serde_json::json!({"prompt": "Make it red", "model": "gpt-image-2",
            "images": [{"image_id": image_id}]}),
        &[
            ("authorization", alice.as_str()),
            ("prefer", "respond-async"),
        ],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let job = r.body["job_id"].as_str().expect("job_id").to_owned();
    stack.until_provider_busy("openai").await;
    let deleted = stack
        .http
        .delete(stack.url(&format!("/api/v1/images/{image_id}")))
        .header("authorization", alice.as_str())
        .send()
        .await
        .expect("delete");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let r = Reply::from(
            stack
                .http
                .get(stack.url(&format!("/api/v1/jobs/{job}?wait=10")))
                .header("authorization", alice.as_str())
                .send()
                .await
                .expect("poll"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let status = r.body["status"].as_str().unwrap_or_default().to_owned();
        if !["queued", "running"].contains(&status.as_str()) {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} never finished: {}",
            r.body
        );
    };
    assert_eq!(status, "succeeded");
    let calls = stack.emulator_edits().await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c["images"] == serde_json::json!([sha])),
        "{calls:?}"
    );
    let r = stack
        .http
        .get(stack.url(&format!("/api/v1/images/{image_id}")))
        .header("authorization", alice.as_str())
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404, "the original is gone");
}
