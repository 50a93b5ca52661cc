//! Live event streams (`GET /api/v1/jobs/{id}/events`, `/batches/{id}/events`): every status of a job in order,
//! ending with the job as `GET /api/v1/jobs/{id}` shows it; a reconnect with `Last-Event-ID` resumes without a gap
//! or a repeat; after the end, 204.

use crate::support::{Options, Stack, start};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;

/// One server-sent event: its `event`, `id` (if any) and `data` as JSON.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    name: String,
    id: Option<String>,
    data: Value,
}

async fn open(stack: &Stack, path: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = stack.http.get(stack.url(path));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    request.send().await.expect("request")
}

/// Reads events until the stream ends, or until one named `until` has been read (then drops the connection).
async fn read(response: reqwest::Response, until: Option<&str>) -> Vec<Sse> {
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/event-stream"))
    );
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut name, mut id, mut data) = (String::from("message"), None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_owned();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).expect("one line of JSON"));
                }
            }
            if let Some(data) = data {
                let stop = until == Some(name.as_str());
                events.push(Sse { name, id, data });
                if stop {
                    return events;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("the stream ends in time");
        match chunk {
            Some(Ok(bytes)) => buffer.push_str(std::str::from_utf8(&bytes).expect("utf-8")),
            Some(Err(e)) => panic!("stream broke: {e}"),
            None => return events,
        }
    }
}

async fn submit(stack: &Stack, body: Value) -> String {
    let r = stack.post("/api/v1/jobs", body, &[]).await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.body["job_id"].as_str().expect("job id").to_owned()
}

/// A stream that connects before anything happened starts with the job's state (no id): dropped for comparing.
fn without_snapshot(mut events: Vec<Sse>) -> Vec<Sse> {
    if events
        .first()
        .is_some_and(|e| e.id.is_none() && e.name == "status")
    {
        events.remove(0);
    }
    events
}

fn names(events: &[Sse]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

/// Ids strictly increase (`<ms>-<seq>`), so a resume point is unambiguous.
fn assert_ids_increase(events: &[Sse]) {
    let ids: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| e.id.as_deref())
        .map(|id| {
            let (a, b) = id.split_once('-').expect("ms-seq");
            (a.parse().expect("ms"), b.parse().expect("seq"))
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_job_stream_shows_every_status_in_order_then_the_job(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    // The first call fails (retried on the same route), the second succeeds a moment later.
    stack
        .emulator_config(json!({"fail_next": 1, "error_status": 500, "latency_ms": 200}))
        .await;
    let id = submit(
        &stack,
        json!({"prompt": "a lighthouse", "model": "gpt-image-2"}),
    )
    .await;
    let events = without_snapshot(
        read(
            open(&stack, &format!("/api/v1/jobs/{id}/events"), None).await,
            None,
        )
        .await,
    );
    assert_eq!(
        names(&events),
        ["status", "retrying", "status", "succeeded"],
        "{events:#?}"
    );
    let running: Vec<&Sse> = events
        .iter()
        .filter(|e| e.name == "status" && e.data["status"] == "running")
        .collect();
    assert_eq!(running[0].data["attempt"], 1);
    assert_eq!(running[1].data["attempt"], 2);
    assert_eq!(running[0].data["provider"], "openai");
    assert_eq!(running[0].data["route"], "openai:gpt-image-2");
    let retrying = events.iter().find(|e| e.name == "retrying").expect("retry");
    assert!(retrying.data["error"]["code"].is_string(), "{retrying:?}");
    assert!(retrying.data["retry_in_ms"].as_u64().is_some());
    // The end is the job as GET shows it.
    let end = events.last().expect("end");
    let job = stack.get(&format!("/api/v1/jobs/{id}")).await.body;
    assert_eq!(end.data["status"], "succeeded");
    assert_eq!(end.data["images"].as_array().map(Vec::len), Some(1));
    assert_eq!(end.data["job_id"], job["job_id"]);
    assert_eq!(end.data["cost"], job["cost"]);
    assert!(events.iter().all(|e| e.id.is_some()), "{events:#?}");
    assert_ids_increase(&events);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    stack
        .emulator_config(json!({"fail_next": 1, "error_status": 500, "latency_ms": 300}))
        .await;
    let id = submit(
        &stack,
        json!({"prompt": "a lighthouse", "model": "gpt-image-2"}),
    )
    .await;
    let path = format!("/api/v1/jobs/{id}/events");
    // Connection lost right after the retry is announced.
    let first = read(open(&stack, &path, None).await, Some("retrying")).await;
    let resume_at = first.last().and_then(|e| e.id.clone()).expect("an id");
    let rest = read(open(&stack, &path, Some(&resume_at)).await, None).await;
    let joined: Vec<Sse> = first.iter().chain(rest.iter()).cloned().collect();
    // A client connecting after the end gets the same events from the history.
    let replay = read(open(&stack, &path, None).await, None).await;
    let joined = without_snapshot(joined);
    assert_eq!(joined, replay);
    assert_eq!(names(&rest).last(), Some(&"succeeded"), "{rest:#?}");
    assert_ids_increase(&joined);
    // Resuming after the end: nothing more will come.
    let end_id = replay
        .last()
        .and_then(|e| e.id.clone())
        .expect("the end's id");
    let after_end = open(&stack, &path, Some(&end_id)).await;
    assert_eq!(after_end.status(), 204);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_batch_stream_follows_every_item_then_says_completed(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let r = stack
        .http
        .post(stack.url("/api/v1/generate/batch?wait=false"))
        .json(&json!([{"prompt": "a red kite", "model": "gpt-image-2"},
            {"prompt": "a blue kite", "model": "gpt-image-2"}]))
        .send()
        .await
        .expect("batch");
    let status = r.status().as_u16();
    let batch: Value = r.json().await.expect("json");
    assert!(status == 200 || status == 202, "{status} {batch}");
    let batch_id = batch["batch_id"].as_str().expect("batch id");
    let events = read(
        open(&stack, &format!("/api/v1/batches/{batch_id}/events"), None).await,
        None,
    )
    .await;
    let ends: Vec<&Sse> = events.iter().filter(|e| e.name == "succeeded").collect();
    assert_eq!(ends.len(), 2, "{events:#?}");
    let last = events.last().expect("completed");
    assert_eq!(last.name, "completed");
    assert_eq!(last.data["status"], "completed");
    assert_eq!(last.data["succeeded"], 2);
}

#[sqlx::test(migrations = "./migrations")]
async fn event_streams_refuse_unknown_jobs_and_malformed_resume_points(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let unknown = stack
        .get(&format!("/api/v1/jobs/{}/events", uuid::Uuid::now_v7()))
        .await;
    unknown.assert_error(404, "not_found");
    let id = submit(&stack, json!({"prompt": "a lighthouse"})).await;
    let bad = stack
        .http
        .get(stack.url(&format!("/api/v1/jobs/{id}/events")))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("request");
    crate::support::Reply::from(bad)
        .await
        .assert_error(400, "validation_failed");
}
