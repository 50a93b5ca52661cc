//! Signed webhooks (issue 17) end to end: a receiver on loopback started by each test (support::receiver) gets the
//! deliveries, and every one is checked with the Standard Webhooks reference verifier (`standardwebhooks` from PyPI,
//! through scripts/verify-webhooks.sh) and with our own verifier. A request's `webhook_url` and registered endpoints,
//! secret rotation (two signatures during the overlap), retries with the same `webhook-id`, Retry-After, 410
//! disabling an endpoint, the default configuration refusing http and loopback destinations, a crash of the API (the
//! dispatcher) between a job's end and its delivery, replay, and `batch.completed`. Two dispatchers at once need two
//! API processes: `webhooks_fleet`.

use crate::support::receiver::{Answer, Received, Receiver};
use crate::support::{Options, Stack, download, kv, start};
use imagegen_shared::webhooks::{WebhookSecret, verify_now};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;

/// Retries in seconds, so the tests do not wait for the spec's schedule.
pub(crate) const FAST: &str = "0,1s,1s,1s";

/// A stack whose API processes may send http webhooks to loopback, on `schedule`.
pub(crate) fn webhook_env(schedule: &str) -> Vec<(String, String)> {
    vec![
        kv("WEBHOOK_ALLOW_INSECURE", "true"),
        kv("WEBHOOK_RETRY_SCHEDULE", schedule),
    ]
}

pub(crate) fn options(schedule: &str) -> Options {
    Options {
        api_env: webhook_env(schedule),
        ..Options::default()
    }
}

pub(crate) fn job_body(prompt: &str, webhook_url: Option<&str>) -> Value {
    let mut body = json!({"prompt": prompt, "model": "gpt-image-2"});
    if let Some(url) = webhook_url {
        body["webhook_url"] = json!(url);
    }
    body
}

pub(crate) async fn submit(stack: &Stack, body: Value) -> String {
    let r = stack.post("/api/v1/jobs", body, &[]).await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.body["job_id"].as_str().expect("job id").to_owned()
}

/// The secret that signs the caller's requests' `webhook_url`.
pub(crate) async fn owner_secret(stack: &Stack) -> String {
    let r = stack.get("/api/v1/webhooks/secret").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    secret
}

/// Registers an endpoint; its id and secret.
async fn register(stack: &Stack, body: Value) -> (String, String) {
    let r = stack.post("/api/v1/webhooks", body.clone(), &[]).await;
    assert_eq!(r.status, 201, "{body} -> {}", r.body);
    let secret = r.body["secret"].as_str().expect("secret shown once");
    assert!(secret.starts_with("whsec_"), "{}", r.body);
    assert_eq!(r.body["url"], body["url"]);
    assert!(r.body["disabled_at"].is_null(), "{}", r.body);
    assert!(r.body["created_at"].is_string(), "{}", r.body);
    (
        r.body["id"].as_str().expect("id").to_owned(),
        secret.to_owned(),
    )
}

pub(crate) async fn deliveries(stack: &Stack, query: &str) -> Vec<Value> {
    let r = stack
        .get(&format!("/api/v1/webhooks/deliveries?{query}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["deliveries"].as_array().expect("deliveries").clone()
}

/// Waits until the job has at least `n` deliveries and none is pending any more; returns them (newest first).
pub(crate) async fn settled(stack: &Stack, job_id: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = deliveries(stack, &format!("job_id={job_id}")).await;
        if found.len() >= n && found.iter().all(|d| d["status"] != "pending") {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deliveries of job {job_id} did not settle: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Verifies with our own verifier (the current clock, the default tolerance).
pub(crate) fn verify(secret: &str, received: &Received) {
    let key = WebhookSecret::parse(secret).expect("a whsec_ secret");
    verify_now(&key, &received.header_map(), received.body.as_bytes()).unwrap_or_else(|e| {
        panic!(
            "delivery does not verify with {secret}: {e}; headers {:?}",
            received.headers
        )
    });
}

/// Verifies deliveries with the Standard Webhooks reference verifier (scripts/verify-webhooks.sh, the
/// `standardwebhooks` Python package): each must verify with every secret listed beside it.
pub(crate) fn reference_verify(entries: &[(Vec<String>, &Received)]) {
    assert!(!entries.is_empty(), "nothing to verify");
    let mut lines = String::new();
    for (secrets, received) in entries {
        let headers: serde_json::Map<String, Value> = received
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let secret = match secrets.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        lines.push_str(
            &json!({"secret": secret, "headers": headers, "body": received.body}).to_string(),
        );
        lines.push('\n');
    }
    let file = std::env::temp_dir().join(format!(
        "imagegen-webhooks-{}.jsonl",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&file, lines).expect("write the deliveries");
    let out = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/verify-webhooks.sh"
    ))
    .arg(&file)
    .output()
    .expect("run scripts/verify-webhooks.sh");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "the reference verifier refused ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn types(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Long enough for a duplicate to show up: the idle dispatcher looks for due deliveries every second.
const QUIET: Duration = Duration::from_millis(2500);
const WITHIN: Duration = Duration::from_secs(60);

#[sqlx::test(migrations = "./migrations")]
async fn a_webhook_url_gets_job_succeeded_once_signed_with_the_job_as_get_shows_it(pool: PgPool) {
    let receiver = Receiver::ok().await;
    let stack = start(&pool, options(FAST)).await;
    let secret = owner_secret(&stack).await;
    let id = submit(
        &stack,
        job_body("a lighthouse", Some(&receiver.url("/hook"))),
    )
    .await;
    let job = stack.wait_terminal(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    receiver.wait_for(1, WITHIN, |_| true).await;
    let records = settled(&stack, &id, 1).await;
    tokio::time::sleep(QUIET).await;

    let got = receiver.received();
    assert_eq!(got.len(), 1, "exactly one delivery: {got:#?}");
    let hook = &got[0];
    assert_eq!(
        (hook.method.as_str(), hook.path.as_str()),
        ("POST", "/hook")
    );
    assert_eq!(hook.header("content-type"), Some("application/json"));
    assert!(
        hook.header("webhook-signature")
            .is_some_and(|s| s.starts_with("v1,")),
        "{:?}",
        hook.headers
    );
    verify(&secret, hook);
    reference_verify(&[(vec![secret.clone()], hook)]);

    let body = hook.json();
    assert_eq!(body["type"], "job.succeeded", "{body}");
    chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().expect("timestamp"))
        .expect("an RFC 3339 timestamp");
    let data = &body["data"];
    let shown = stack.get(&format!("/api/v1/jobs/{id}")).await.body;
    assert_eq!(data["job_id"], shown["job_id"]);
    assert_eq!(data["status"], "succeeded");
    assert_eq!(data["status"], shown["status"]);
    let ids = |v: &Value| -> Vec<Value> {
        v["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|i| i["id"].clone())
            .collect()
    };
    assert_eq!(ids(data), ids(&shown));
    assert_eq!(ids(data).len(), 1, "{data}");
    let url = data["images"][0]["url"].as_str().expect("an image link");
    let (status, _, bytes) = download(&stack, url).await;
    assert_eq!(status, 200, "{url}");
    crate::support::png_size(&bytes);

    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["event_type"], "job.succeeded");
    assert_eq!(record["message_id"], hook.webhook_id());
    assert_eq!(record["job_id"], id.as_str());
    assert!(record["endpoint_id"].is_null(), "{record}");
    assert_eq!(record["url"], receiver.url("/hook"));
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["last_status"], 200);
    assert!(record["delivered_at"].is_string(), "{record}");
    let log = record["attempt_log"].as_array().expect("attempt_log");
    assert_eq!(log.len(), 1, "{record}");
    assert_eq!(log[0]["status_code"], 200);
    assert!(log[0]["duration_ms"].is_number(), "{record}");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_registered_endpoint_gets_the_events_it_asked_for_in_order(pool: PgPool) {
    let receiver = Receiver::ok().await;
    let stack = start(&pool, options(FAST)).await;
    // Time between the start and the end, so the two deliveries are sent one after the other.
    stack.emulator_config(json!({"latency_ms": 1500})).await;
    let (endpoint, secret) = register(
        &stack,
        json!({"url": receiver.url("/endpoint"), "events": ["job.started", "job.succeeded"],
               "description": "e2e"}),
    )
    .await;
    let list = stack.get("/api/v1/webhooks").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let listed = list.body["webhooks"].as_array().expect("webhooks");
    assert_eq!(listed.len(), 1, "{}", list.body);
    assert_eq!(listed[0]["id"], endpoint.as_str());
    assert_eq!(listed[0]["events"], json!(["job.started", "job.succeeded"]));
    assert_eq!(listed[0]["description"], "e2e");
    assert!(listed[0].get("secret").is_none(), "{}", list.body);
    assert!(
        !list.body.to_string().contains(&secret),
        "the secret is never shown again: {}",
        list.body
    );

    let id = submit(&stack, job_body("a windmill", None)).await;
    let job = stack.wait_terminal(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    receiver.wait_for(2, WITHIN, |_| true).await;
    let records = settled(&stack, &id, 2).await;
    tokio::time::sleep(QUIET).await;
    let got = receiver.received();
    assert_eq!(types(&got), ["job.started", "job.succeeded"], "{got:#?}");
    assert!(got.iter().all(|r| r.path == "/endpoint"));
    assert_ne!(got[0].webhook_id(), got[1].webhook_id());
    assert_eq!(got[0].json()["data"]["status"], "running");
    assert_eq!(got[0].json()["data"]["job_id"], id.as_str());
    assert_eq!(got[1].json()["data"]["status"], "succeeded");
    for hook in &got {
        verify(&secret, hook);
    }
    reference_verify(
        &got.iter()
            .map(|r| (vec![secret.clone()], r))
            .collect::<Vec<_>>(),
    );
    assert_eq!(records.len(), 2, "{records:#?}");
    for record in &records {
        assert_eq!(record["endpoint_id"], endpoint.as_str(), "{record}");
        assert_eq!(record["status"], "succeeded", "{record}");
    }
    // Newest first.
    assert_eq!(records[0]["event_type"], "job.succeeded");
    assert_eq!(records[1]["event_type"], "job.started");

    let gone = stack
        .http
        .delete(stack.url(&format!("/api/v1/webhooks/{endpoint}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(gone.status(), 204);
    let list = stack.get("/api/v1/webhooks").await;
    assert_eq!(list.body["webhooks"], json!([]), "{}", list.body);
}

#[sqlx::test(migrations = "./migrations")]
async fn after_a_rotation_deliveries_verify_with_the_new_and_the_old_secret(pool: PgPool) {
    let receiver = Receiver::ok().await;
    let stack = start(&pool, options(FAST)).await;
    let (endpoint, old_endpoint) =
        register(&stack, json!({"url": receiver.url("/endpoint")})).await;
    let old_owner = owner_secret(&stack).await;

    let rotated = stack
        .post(
            &format!("/api/v1/webhooks/{endpoint}/rotate"),
            json!({}),
            &[],
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new_endpoint = rotated.body["secret"].as_str().expect("secret").to_owned();
    assert_ne!(new_endpoint, old_endpoint);
    let until = chrono::DateTime::parse_from_rfc3339(
        rotated.body["previous_valid_until"]
            .as_str()
            .expect("previous_valid_until"),
    )
    .expect("RFC 3339");
    assert!(
        until > chrono::Utc::now() + chrono::Duration::hours(23),
        "the default overlap is a day: {until}"
    );

    let rotated = stack
        .post("/api/v1/webhooks/secret/rotate", json!({}), &[])
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new_owner = rotated.body["secret"].as_str().expect("secret").to_owned();
    assert_ne!(new_owner, old_owner);
    assert!(rotated.body["previous_valid_until"].is_string());
    assert_eq!(owner_secret(&stack).await, new_owner);

    let id = submit(
        &stack,
        job_body("a ferris wheel", Some(&receiver.url("/request"))),
    )
    .await;
    stack.wait_terminal(&id).await;
    receiver.wait_for(2, WITHIN, |_| true).await;
    let by_endpoint = receiver.received_at("/endpoint");
    let by_request = receiver.received_at("/request");
    assert_eq!((by_endpoint.len(), by_request.len()), (1, 1));
    for (hook, new, old) in [
        (&by_endpoint[0], &new_endpoint, &old_endpoint),
        (&by_request[0], &new_owner, &old_owner),
    ] {
        let signatures = hook.header("webhook-signature").expect("signature");
        assert_eq!(
            signatures.split(' ').count(),
            2,
            "two signatures during the overlap: {signatures}"
        );
        verify(new, hook);
        verify(old, hook);
    }
    reference_verify(&[
        (
            vec![new_endpoint.clone(), old_endpoint.clone()],
            &by_endpoint[0],
        ),
        (vec![new_owner.clone(), old_owner.clone()], &by_request[0]),
    ]);
}

#[sqlx::test(migrations = "./migrations")]
async fn after_the_overlap_only_the_new_secret_signs(pool: PgPool) {
    let receiver = Receiver::ok().await;
    let mut options = options(FAST);
    options.api_env.push(kv("WEBHOOK_SECRET_OVERLAP_SECS", "2"));
    let stack = start(&pool, options).await;
    let old = owner_secret(&stack).await;
    let rotated = stack
        .post("/api/v1/webhooks/secret/rotate", json!({}), &[])
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new = rotated.body["secret"].as_str().expect("secret").to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let id = submit(&stack, job_body("a kite", Some(&receiver.url("/hook")))).await;
    stack.wait_terminal(&id).await;
    let got = receiver.wait_for(1, WITHIN, |_| true).await;
    let signatures = got[0].header("webhook-signature").expect("signature");
    assert_eq!(signatures.split(' ').count(), 1, "{signatures}");
    verify(&new, &got[0]);
    let key = WebhookSecret::parse(&old).expect("secret");
    assert!(
        verify_now(&key, &got[0].header_map(), got[0].body.as_bytes()).is_err(),
        "the old secret no longer signs after the overlap"
    );
    reference_verify(&[(vec![new], &got[0])]);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_receiver_down_then_up_gets_the_delivery_with_one_webhook_id(pool: PgPool) {
    let receiver =
        Receiver::start(vec![Answer::status(503), Answer::status(503)], Answer::ok()).await;
    let stack = start(&pool, options("0,1s,1s,1s")).await;
    let secret = owner_secret(&stack).await;
    let id = submit(&stack, job_body("a harbour", Some(&receiver.url("/hook")))).await;
    stack.wait_terminal(&id).await;
    receiver.wait_for(3, WITHIN, |_| true).await;
    let records = settled(&stack, &id, 1).await;
    tokio::time::sleep(QUIET).await;
    let got = receiver.received();
    assert_eq!(
        got.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [503, 503, 200],
        "{got:#?}"
    );
    let first = got[0].webhook_id();
    assert!(got.iter().all(|r| r.webhook_id() == first), "{got:#?}");
    // The schedule's second apart (plus up to a tenth of jitter).
    for pair in got.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(900), "retried after {gap:?}");
    }
    for hook in &got {
        verify(&secret, hook);
    }
    reference_verify(
        &got.iter()
            .map(|r| (vec![secret.clone()], r))
            .collect::<Vec<_>>(),
    );
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["message_id"], first);
    assert_eq!(record["attempts"], 3, "{record}");
    let statuses: Vec<Value> = record["attempt_log"]
        .as_array()
        .expect("attempt_log")
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(statuses, [json!(503), json!(503), json!(200)], "{record}");
    assert_eq!(
        record["attempt_log"]
            .as_array()
            .expect("log")
            .iter()
            .map(|a| a["attempt"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(2), json!(3)]
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn retry_after_is_honoured_and_the_last_retry_fails_the_delivery(pool: PgPool) {
    // /slow: 429 with Retry-After: 3 once, then 200; /dead: 503 to everything.
    let slow = Receiver::start(
        vec![Answer::status(429).with_header("Retry-After", "3")],
        Answer::ok(),
    )
    .await;
    let dead = Receiver::start(Vec::new(), Answer::status(503)).await;
    let stack = start(&pool, options("0,1s,1s")).await;
    let a = submit(&stack, job_body("a bridge", Some(&slow.url("/slow")))).await;
    let b = submit(&stack, job_body("a tunnel", Some(&dead.url("/dead")))).await;
    let got = slow.wait_for(2, WITHIN, |_| true).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(2900),
        "Retry-After: 3 was not honoured, retried after {gap:?}"
    );
    assert_eq!(got[0].webhook_id(), got[1].webhook_id());
    let records = settled(&stack, &a, 1).await;
    assert_eq!(records[0]["status"], "succeeded", "{:#?}", records);

    let records = settled(&stack, &b, 1).await;
    tokio::time::sleep(QUIET).await;
    let record = &records[0];
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["attempts"], 3, "the whole schedule: {record}");
    assert_eq!(record["last_status"], 503);
    assert!(
        record["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{record}"
    );
    assert_eq!(dead.received().len(), 3, "nothing after the last retry");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_receiver_answering_410_disables_its_endpoint(pool: PgPool) {
    let gone = Receiver::start(Vec::new(), Answer::status(410)).await;
    let other = Receiver::ok().await;
    let stack = start(&pool, options(FAST)).await;
    let (endpoint, _) = register(&stack, json!({"url": gone.url("/endpoint")})).await;

    let first = submit(&stack, job_body("a volcano", None)).await;
    stack.wait_terminal(&first).await;
    gone.wait_for(1, WITHIN, |_| true).await;
    let records = settled(&stack, &first, 1).await;
    let record = &records[0];
    assert!(record["status"] == "failed", "{record}");
    assert_eq!(record["last_status"], 410, "{record}");
    assert_eq!(record["attempts"], 1, "410 is not retried: {record}");
    let list = stack.get("/api/v1/webhooks").await;
    let listed = &list.body["webhooks"][0];
    assert_eq!(listed["id"], endpoint.as_str());
    assert!(listed["disabled_at"].is_string(), "{listed}");
    assert!(
        listed["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{listed}"
    );

    // The receiver is back, but its endpoint stays disabled: a later job is not sent to it.
    gone.answer(Answer::ok());
    let second = submit(&stack, job_body("a glacier", Some(&other.url("/request")))).await;
    stack.wait_terminal(&second).await;
    other.wait_for(1, WITHIN, |_| true).await;
    let records = settled(&stack, &second, 1).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(gone.received().len(), 1, "{:#?}", gone.received());
    assert!(
        records.iter().all(|d| d["endpoint_id"].is_null()),
        "{records:#?}"
    );
    assert_eq!(records.len(), 1, "{records:#?}");
}

#[sqlx::test(migrations = "./migrations")]
async fn by_default_http_is_refused_and_loopback_deliveries_fail_without_a_connection(
    pool: PgPool,
) {
    let receiver = Receiver::ok().await;
    // No WEBHOOK_ALLOW_INSECURE.
    let stack = start(
        &pool,
        Options {
            api_env: vec![kv("WEBHOOK_RETRY_SCHEDULE", FAST)],
            ..Options::default()
        },
    )
    .await;
    let http = receiver.url("/hook");
    let names = |r: &crate::support::Reply, field: &str| {
        r.assert_error(400, "validation_failed");
        assert!(
            r.body["details"].as_array().is_some_and(|d| d
                .iter()
                .any(|d| d["field"].as_str().is_some_and(|f| f.contains(field)))),
            "names {field}: {}",
            r.body
        );
    };
    let r = stack
        .post("/api/v1/jobs", job_body("over http", Some(&http)), &[])
        .await;
    names(&r, "webhook_url");
    let r = stack
        .post(
            "/api/v1/generate",
            job_body("over http", Some(&http)),
            &[("Prefer", "wait=5")],
        )
        .await;
    names(&r, "webhook_url");
    let r = stack
        .post(
            "/api/v1/generate/batch",
            json!([job_body("fine", None), job_body("over http", Some(&http))]),
            &[],
        )
        .await;
    names(&r, "webhook_url");
    let r = stack
        .post("/api/v1/webhooks", json!({"url": http}), &[])
        .await;
    names(&r, "url");
    let mut unknown = job_body("unknown event", Some("https://example.com/hook"));
    unknown["webhook_events"] = json!(["job.exploded"]);
    let r = stack.post("/api/v1/jobs", unknown, &[]).await;
    names(&r, "webhook_events");
    let r = stack
        .post(
            "/api/v1/webhooks",
            json!({"url": "https://example.com/hook", "events": ["job.exploded"]}),
            &[],
        )
        .await;
    names(&r, "events");
    assert_eq!(
        stack.count(&pool, "SELECT count(*) FROM jobs").await,
        0,
        "nothing refused was recorded"
    );

    // https to loopback: accepted, but never sent.
    let port = receiver.port();
    let (endpoint, _) = register(
        &stack,
        json!({"url": format!("https://127.0.0.1:{port}/endpoint")}),
    )
    .await;
    let mut jobs = Vec::new();
    for url in [
        format!("https://127.0.0.1:{port}/hook"),
        format!("https://localhost:{port}/hook"),
    ] {
        jobs.push(submit(&stack, job_body("to loopback", Some(&url))).await);
    }
    for id in &jobs {
        let job = stack.wait_terminal(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let records = settled(&stack, id, 2).await;
        assert_eq!(
            records.len(),
            2,
            "the request's webhook and the endpoint: {records:#?}"
        );
        for record in &records {
            assert_eq!(record["status"], "failed", "{record}");
            assert_eq!(
                record["attempts"], 1,
                "a refused destination is not retried: {record}"
            );
            assert!(
                record["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("loopback")),
                "{record}"
            );
            assert!(record["last_status"].is_null(), "{record}");
        }
        assert!(
            records
                .iter()
                .any(|d| d["endpoint_id"] == endpoint.as_str())
        );
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(receiver.connections(), 0, "no connection to loopback");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_delivery_pending_when_the_api_is_killed_is_sent_after_the_restart(pool: PgPool) {
    let receiver = Receiver::start(Vec::new(), Answer::status(503)).await;
    let mut stack = start(&pool, options("0,3s,3s,3s,3s,3s,3s,3s,3s,3s")).await;
    let secret = owner_secret(&stack).await;
    let id = submit(&stack, job_body("a comet", Some(&receiver.url("/hook")))).await;
    let job = stack.wait_terminal(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let first = receiver.wait_for(1, WITHIN, |_| true).await;
    let message = first[0].webhook_id().to_owned();
    // The 503 is recorded; the next attempt is seconds away. The dispatcher (in the API process; the standalone
    // process in standalone mode) dies without a word.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.api_proc.signal("KILL");
    tokio::time::sleep(Duration::from_millis(300)).await;
    receiver.answer(Answer::ok());
    let before = receiver.received().len();
    stack.restart_api_with(&[]).await;
    let got = receiver.wait_for(1, WITHIN, |r| r.answered == 200).await;
    assert_eq!(got[0].webhook_id(), message);
    verify(&secret, &got[0]);
    reference_verify(&[(vec![secret.clone()], &got[0])]);
    assert_eq!(got[0].json()["data"]["job_id"], id.as_str());
    let records = settled(&stack, &id, 1).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(records[0]["status"], "succeeded", "{:#?}", records);
    let all = receiver.received();
    assert_eq!(
        all.iter().filter(|r| r.answered == 200).count(),
        1,
        "delivered once: {all:#?}"
    );
    assert!(all.len() > before, "{all:#?}");
}

#[sqlx::test(migrations = "./migrations")]
async fn an_attempt_in_flight_when_the_api_is_killed_is_made_again_after_its_lease(pool: PgPool) {
    // The first attempt is held open; the API dies while it waits. Its lease (the timeout plus 30 s) has to run out
    // before the restarted API may take the delivery again.
    let receiver = Receiver::start(
        vec![Answer::ok().after(Duration::from_secs(20))],
        Answer::ok(),
    )
    .await;
    let mut options = options(FAST);
    options.api_env.push(kv("WEBHOOK_TIMEOUT_SECS", "2"));
    let mut stack = start(&pool, options).await;
    let secret = owner_secret(&stack).await;
    let id = submit(&stack, job_body("a meteor", Some(&receiver.url("/hook")))).await;
    let first = receiver.wait_for(1, WITHIN, |_| true).await;
    stack.api_proc.signal("KILL");
    stack.restart_api_with(&[]).await;
    let got = receiver
        .wait_for(2, Duration::from_secs(90), |_| true)
        .await;
    assert_eq!(got[1].webhook_id(), first[0].webhook_id());
    verify(&secret, &got[1]);
    reference_verify(&[(vec![secret], &got[1])]);
    let records = settled(&stack, &id, 1).await;
    assert_eq!(records[0]["status"], "succeeded", "{:#?}", records);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_replayed_delivery_is_sent_again_with_the_same_webhook_id(pool: PgPool) {
    let receiver = Receiver::ok().await;
    let stack = start(&pool, options(FAST)).await;
    let secret = owner_secret(&stack).await;
    let id = submit(&stack, job_body("a canyon", Some(&receiver.url("/hook")))).await;
    stack.wait_terminal(&id).await;
    receiver.wait_for(1, WITHIN, |_| true).await;
    let records = settled(&stack, &id, 1).await;
    let delivery = records[0]["id"].as_str().expect("delivery id").to_owned();

    let r = stack
        .post(
            &format!("/api/v1/webhooks/deliveries/{delivery}/replay"),
            json!({}),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["id"], delivery.as_str());
    assert_eq!(r.body["message_id"], records[0]["message_id"]);

    let got = receiver.wait_for(2, WITHIN, |_| true).await;
    assert_eq!(got[0].webhook_id(), got[1].webhook_id());
    assert_eq!(got[1].json()["type"], "job.succeeded");
    assert_eq!(got[1].json()["data"]["job_id"], id.as_str());
    verify(&secret, &got[1]);
    reference_verify(&[
        (vec![secret.clone()], &got[0]),
        (vec![secret.clone()], &got[1]),
    ]);
    tokio::time::sleep(QUIET).await;
    assert_eq!(receiver.received().len(), 2);
    let records = settled(&stack, &id, 1).await;
    assert_eq!(records[0]["status"], "succeeded", "{:#?}", records);
    assert_eq!(
        records[0]["attempt_log"].as_array().map(Vec::len),
        Some(2),
        "{:#?}",
        records
    );

    let missing = stack
        .post(
            "/api/v1/webhooks/deliveries/msg_nothing:u00/replay",
            json!({}),
            &[],
        )
        .await;
    missing.assert_error(404, "not_found");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_batch_sends_batch_completed_once(pool: PgPool) {
    let receiver = Receiver::ok().await;
    let stack = start(&pool, options(FAST)).await;
    let secret = owner_secret(&stack).await;
    let url = receiver.url("/batch");
    let r = stack
        .post(
            "/api/v1/generate/batch?wait=false",
            json!([
                job_body("a red kite", Some(&url)),
                job_body("a blue kite", Some(&url))
            ]),
            &[],
        )
        .await;
    assert!(r.status == 200 || r.status == 202, "{}", r.body);
    let batch_id = r.body["batch_id"].as_str().expect("batch id").to_owned();
    receiver
        .wait_for(1, WITHIN, |r| r.json()["type"] == "batch.completed")
        .await;
    receiver.wait_for(3, WITHIN, |_| true).await;
    tokio::time::sleep(QUIET).await;
    let got = receiver.received();
    let mut kinds = types(&got);
    kinds.sort();
    assert_eq!(
        kinds,
        ["batch.completed", "job.succeeded", "job.succeeded"],
        "{got:#?}"
    );
    let completed = got
        .iter()
        .find(|r| r.json()["type"] == "batch.completed")
        .expect("batch.completed");
    let data = completed.json()["data"].clone();
    assert_eq!(data["status"], "completed", "{data}");
    assert_eq!(data["batch_id"], batch_id.as_str(), "{data}");
    let shown = stack.get(&format!("/api/v1/batches/{batch_id}")).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(data["status"], shown.body["status"]);
    assert_eq!(data["succeeded"], 2, "{data}");
    assert_eq!(data["items"].as_array().map(Vec::len), Some(2), "{data}");
    let ids: std::collections::HashSet<&str> = got.iter().map(Received::webhook_id).collect();
    assert_eq!(ids.len(), 3, "{got:#?}");
    for hook in &got {
        verify(&secret, hook);
    }
    reference_verify(
        &got.iter()
            .map(|r| (vec![secret.clone()], r))
            .collect::<Vec<_>>(),
    );
}
