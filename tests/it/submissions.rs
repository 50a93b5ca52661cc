//! Submitting under load: SUBMIT_CONCURRENCY lets that many submissions talk to the database at once and the
//! rest wait their turn (none refused, none lost); SUBMIT_GROUP_COMMIT switches the gathered INSERT on and off.

use crate::support::{self, Options, Stack, generate_body, kv, start};
use sqlx::PgPool;

/// Submits `n` jobs at once and returns their ids, each answered 202.
async fn submit_together(stack: &Stack, n: usize) -> Vec<String> {
    let replies = futures::future::join_all((0..n).map(|i| {
        stack.post(
            "/api/v1/jobs",
            generate_body(&format!("submitted together {i}")),
            &[],
        )
    }))
    .await;
    replies
        .into_iter()
        .map(|r| {
            assert_eq!(r.status, 202, "{}", r.body);
            r.body["job_id"].as_str().expect("job id").to_owned()
        })
        .collect()
}

#[sqlx::test(migrations = "./migrations")]
async fn submissions_past_submit_concurrency_wait_their_turn_and_all_are_recorded(pool: PgPool) {
    let options = Options {
        api_env: vec![kv("SUBMIT_CONCURRENCY", "1")],
        start_worker: false,
        ..Options::default()
    };
    let stack = start(&pool, options).await;
    let mut ids = submit_together(&stack, 24).await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 24, "each submission its own job");
    for id in &ids {
        let r = stack.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "queued", "{}", r.body);
    }
    // The waiting gauge, when any submission waited, is counted back down to zero.
    let text = stack.metrics_text().await;
    if let Some(line) = text
        .lines()
        .find(|l| l.starts_with("imagegen_submissions_waiting "))
    {
        assert_eq!(line, "imagegen_submissions_waiting 0", "{text}");
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn group_commit_is_on_by_default_and_submit_group_commit_false_switches_it_off(pool: PgPool) {
    if support::standalone() {
        // Standalone runs on SQLite, which never gathers inserts.
        return;
    }
    let on = start(
        &pool,
        Options {
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    submit_together(&on, 8).await;
    // Each of the 8 had its row inserted and its message pushed in a gathered flush; with no budget configured
    // anywhere, its owner's budget row was checked by the INSERT, not read before it.
    let text = on.metrics_text().await;
    for gather in ["job_insert", "queue_push"] {
        assert_eq!(
            gathered_items(&text, gather),
            Some(8.0),
            "{gather} gathered every submission: {text}"
        );
    }
    assert_eq!(gathered_items(&text, "budget_read"), None, "{text}");
    drop(on);
    let off = start(
        &pool,
        Options {
            api_env: vec![kv("SUBMIT_GROUP_COMMIT", "false")],
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    submit_together(&off, 8).await;
    let text = off.metrics_text().await;
    for gather in ["budget_read", "job_insert"] {
        assert_eq!(
            gathered_items(&text, gather),
            None,
            "no {gather} flush when it is off"
        );
    }
    // Queue pushes are gathered whatever the setting.
    assert_eq!(gathered_items(&text, "queue_push"), Some(8.0), "{text}");
}

/// How many items the gatherer named `gather` has flushed, from the API's /metrics text.
fn gathered_items(metrics: &str, gather: &str) -> Option<f64> {
    let prefix = format!("imagegen_gathered_items_sum{{gather=\"{gather}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}
