//! Metrics: `imagegen_jobs_finished_total{status}` counts each job once, in the component that ended it (the
//! worker for the jobs it runs to the end, the API for client cancels), summed over the API's `/metrics` and the
//! worker's WORKER_METRICS_PORT; in standalone mode the one `/metrics` has them all.

use crate::support::{self, Options, Stack, generate_body, kv, start};
use serde_json::json;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;

const FINISHED: &str = "imagegen_jobs_finished_total";

/// `imagegen_jobs_finished_total` by status in one Prometheus text exposition.
fn finished_by_status(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(FINISHED) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once("} ")) else {
            continue;
        };
        let Some(status) = labels.split(',').find_map(|l| {
            l.strip_prefix("status=\"")
                .and_then(|s| s.strip_suffix('"'))
        }) else {
            continue;
        };
        let value: f64 = value.trim().parse().expect("counter value");
        *counts.entry(status.to_owned()).or_default() += value as u64;
    }
    counts
}

/// The counter by status, summed over the metrics endpoints this stack has (an endpoint not answering yet counts
/// as empty).
async fn finished_totals(stack: &Stack, worker_metrics_port: Option<u16>) -> BTreeMap<String, u64> {
    let mut urls = vec![stack.url("/metrics")];
    if let Some(port) = worker_metrics_port {
        urls.push(format!("http://127.0.0.1:{port}/metrics"));
    }
    let mut totals = BTreeMap::new();
    for url in urls {
        let Ok(response) = stack.http.get(&url).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        for (status, n) in finished_by_status(&text) {
            *totals.entry(status).or_default() += n;
        }
    }
    totals
}

#[sqlx::test(migrations = "./migrations")]
async fn each_finished_job_is_counted_once_by_whoever_ended_it(pool: PgPool) {
    // In standalone mode the worker port would serve the same registry as /metrics: read /metrics alone there.
    let worker_metrics_port = (!support::standalone()).then(support::free_port);
    let options = Options {
        worker_env: worker_metrics_port
            .map(|port| vec![kv("WORKER_METRICS_PORT", port.to_string())])
            .unwrap_or_default(),
        ..Options::default()
    };
    let stack = start(&pool, options).await;

    for prompt in ["count me once", "and me once"] {
        let r = stack
            .post("/api/v1/generate", generate_body(prompt), &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    }

    // A running job canceled by its client: the API ends it, its worker finds it no longer its own.
    stack.emulator_config(json!({"hang_next": 1})).await;
    let r = stack
        .post("/api/v1/jobs", generate_body("cancel me"), &[])
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["job_id"].as_str().expect("job id").to_owned();
    stack.until_provider_busy("openai").await;
    let c = stack
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}), &[])
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.body["status"], "canceled", "{}", c.body);

    let expected = BTreeMap::from([("canceled".to_owned(), 1), ("succeeded".to_owned(), 2)]);
    // The counters move just after the state change is visible: wait for them, then give any second count (an
    // event heard, the worker dropping its call) time to show before comparing exactly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = finished_totals(&stack, worker_metrics_port).await;
        let reached = expected
            .iter()
            .all(|(status, n)| got.get(status).is_some_and(|g| g >= n));
        if reached || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = finished_totals(&stack, worker_metrics_port).await;
    assert_eq!(
        got, expected,
        "{FINISHED} by status, summed over the endpoints"
    );
}
