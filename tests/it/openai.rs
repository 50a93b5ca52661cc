//! The OpenAI-compatible surface (`/v1`): OpenAI's Images API body and answer on our pipeline, errors in OpenAI's
//! shape and statuses, server-sent events for `stream: true`, the model list, the same job and cost as
//! `/api/v1/generate`, and a job that outlives a client that gave up. (The official SDKs themselves run against it
//! in scripts/openai-compat-check.sh.)

use crate::costs::micros;
use crate::support::{Options, Stack, download, png_size, start};
use base64::Engine;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;

async fn post_v1(stack: &Stack, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = stack
        .http
        .post(stack.url("/v1/images/generations"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

fn assert_openai_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], want_code, "{body}");
    for field in ["message", "type"] {
        assert!(error[field].is_string(), "{field} in {body}");
    }
    assert!(
        error.get("param").is_some(),
        "param present (maybe null): {body}"
    );
    assert!(body.get("success").is_none(), "not our shape: {body}");
}

#[sqlx::test(migrations = "./migrations")]
async fn the_images_api_answers_in_openais_shape_with_the_same_job_and_cost(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let body = json!({"model": "gpt-image-1-mini", "prompt": "a paper boat", "n": 2, "size": "1024x1024",
        "quality": "low", "output_format": "png", "user": "user-123"});
    let (status, headers, answer) = post_v1(&stack, body).await;
    assert_eq!(status, 200, "{answer}");
    let keys: Vec<&str> = answer
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "background",
            "created",
            "data",
            "output_format",
            "quality",
            "size",
            "usage"
        ]
    );
    assert_eq!(
        (answer["size"].as_str(), answer["quality"].as_str()),
        (Some("1024x1024"), Some("low"))
    );
    let data = answer["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    for picture in data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(picture["b64_json"].as_str().expect("b64_json"))
            .expect("base64");
        assert_eq!(png_size(&bytes), (1024, 1024), "our stored bytes");
        assert!(picture.get("url").is_none());
    }
    assert!(answer["usage"]["output_tokens"].as_u64() > Some(0));
    let job_id = headers["x-imagegen-job-id"]
        .to_str()
        .expect("job id header");
    assert!(headers.contains_key("x-request-id"));
    // The job is recorded and costed like any other, and the same request through /api/v1/generate costs the same.
    let job = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(job.body["status"], "succeeded", "{}", job.body);
    let native = stack
        .post(
            "/api/v1/generate",
            json!({"model": "gpt-image-1-mini", "prompt": "a paper boat", "num_images": 2, "size": "1024x1024",
                "quality": "low", "output_format": "png"}),
            &[],
        )
        .await;
    assert_eq!(native.status, 200, "{}", native.body);
    assert_eq!(micros(&job.body["cost"]), micros(&native.body["cost"]));
    assert_eq!(job.body["usage"], native.body["usage"]);

    // url answers are our own links, never a provider's.
    let (status, _, answer) = post_v1(
        &stack,
        json!({"model": "gpt-image-2", "prompt": "a paper boat", "response_format": "url"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let url = answer["data"][0]["url"].as_str().expect("url");
    assert!(url.starts_with(&stack.api), "{url}");
    let (status, _, bytes) = download(&stack, url).await;
    assert_eq!(status, 200);
    assert_eq!(png_size(&bytes), (1024, 1024));
    // A provider id stands for its default model.
    let (status, _, answer) = post_v1(&stack, json!({"model": "openai", "prompt": "x"})).await;
    assert_eq!(status, 200, "{answer}");
}

#[sqlx::test(migrations = "./migrations")]
async fn errors_come_in_openais_shape_and_statuses(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let (status, _, body) = post_v1(&stack, json!({"model": "no-such-model", "prompt": "x"})).await;
    assert_openai_error(status, &body, 400, "validation_failed");
    assert_eq!(body["error"]["param"], "model");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, _, body) = post_v1(&stack, json!({"prompt": "x", "frobnicate": true})).await;
    assert_openai_error(status, &body, 400, "validation_failed");
    let (status, _, body) = post_v1(&stack, json!({"prompt": "x", "response_format": "gif"})).await;
    assert_openai_error(status, &body, 400, "validation_failed");
    assert_eq!(body["error"]["param"], "response_format");
    // The provider's safety system: 400 content_policy_violation, as OpenAI answers it.
    let (status, headers, body) =
        post_v1(&stack, json!({"prompt": "emulator-moderate this please"})).await;
    assert_openai_error(status, &body, 400, "content_policy_violation");
    assert!(headers.contains_key("x-imagegen-job-id"));
    // Errors made outside our handlers are in the same shape.
    let r = stack
        .http
        .post(stack.url("/v1/images/generations"))
        .body("{}")
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    assert_openai_error(
        status,
        &r.json().await.expect("json"),
        415,
        "unsupported_media_type",
    );
    let r = stack
        .http
        .get(stack.url("/v1/images/generations"))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    assert_openai_error(
        status,
        &r.json().await.expect("json"),
        405,
        "method_not_allowed",
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn a_streamed_request_answers_server_sent_events(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let r = stack
        .http
        .post(stack.url("/v1/images/generations"))
        .json(&json!({"model": "gpt-image-2", "prompt": "a kite", "n": 2, "stream": true, "partial_images": 1}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/event-stream"))
    );
    let text = r.text().await.expect("body");
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).expect("json event"))
        .filter(|e| e["type"] != "image_generation.partial_image")
        .collect();
    assert_eq!(events.len(), 2, "{text:.300}");
    assert_eq!(text.matches("event: image_generation.completed").count(), 2);
    assert!(
        events
            .iter()
            .all(|e| e["type"] == "image_generation.completed" && e["b64_json"].is_string())
    );
    assert!(
        events
            .iter()
            .all(|e| e["usage"]["total_tokens"].as_u64() > Some(0)),
        "usage on every completed event (each picture's share)"
    );
}

/// Partial pictures stream through from the provider (the worker passes them on) before the completed one.
#[sqlx::test(migrations = "./migrations")]
async fn partial_pictures_stream_through_before_the_completed_one(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    // The provider answers a moment later, so the request is listening before the first partial.
    stack.emulator_config(json!({"latency_ms": 400})).await;
    let r = stack
        .http
        .post(stack.url("/v1/images/generations"))
        .json(&json!({"model": "gpt-image-2", "prompt": "a kite", "stream": true, "partial_images": 2}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    let types: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).expect("json")["type"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        types,
        [
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.completed"
        ],
        "{text:.400}"
    );
    let first: Value = serde_json::from_str(
        text.lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("an event"),
    )
    .expect("json");
    assert_eq!(first["partial_image_index"], 0);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(first["b64_json"].as_str().expect("b64"))
        .expect("base64");
    assert_eq!(png_size(&bytes), (1024, 1024), "a whole (coarse) picture");
}

/// Azure OpenAI streams GPT image answers too: its partial pictures come through the same way.
#[sqlx::test(migrations = "./migrations")]
async fn partial_pictures_stream_through_from_azure_too(pool: PgPool) {
    let stack = start(&pool, crate::support::azure_options()).await;
    stack
        .emulator_config_for("azure", json!({"latency_ms": 400}))
        .await;
    let r = stack
        .http
        .post(stack.url("/v1/images/generations"))
        .json(&json!({"model": "gpt-image-2", "prompt": "a kite", "stream": true, "partial_images": 1}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    assert_eq!(
        text.matches("event: image_generation.partial_image")
            .count(),
        1,
        "{text:.300}"
    );
    assert_eq!(
        text.matches("event: image_generation.completed").count(),
        1,
        "{text:.300}"
    );
    let jobs = stack.get("/api/v1/jobs").await;
    assert_eq!(
        jobs.body["jobs"][0]["served_by"], "azure_openai:gpt-image-2",
        "{}",
        jobs.body
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn the_model_list_is_openais_shape(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let r = stack.get("/v1/models").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["object"], "list");
    let ids: Vec<&str> = r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .inspect(|m| assert_eq!(m["object"], "model"))
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"gpt-image-2"), "{ids:?}");
    assert!(
        ids.contains(&"dall-e-3"),
        "served by its replacement: {ids:?}"
    );
}

/// A client that stops waiting does not stop the job: it completes and is listed.
#[sqlx::test(migrations = "./migrations")]
async fn a_job_outlives_a_client_that_gave_up(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    stack.emulator_config(json!({"latency_ms": 2500})).await;
    let gave_up = stack
        .http
        .post(stack.url("/v1/images/generations"))
        .json(&json!({"prompt": "patience"}))
        .timeout(Duration::from_millis(700))
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = stack.get("/api/v1/jobs").await;
        if jobs.body["jobs"][0]["status"] == "succeeded" {
            assert_eq!(jobs.body["jobs"][0]["prompt"], "patience");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", jobs.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
