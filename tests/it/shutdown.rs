//! Shutdown: a second SIGTERM during a worker's grace period ends it at once, its running job handed back to the
//! queue first (as at the end of the grace period) and taken up by the next worker. Signals a worker process of
//! its own, so the standalone run of scripts/test.sh leaves this module out (`not_standalone!` stays as a guard).

use crate::support::{Options, Proc, generate_body, kv, not_standalone, start};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

/// Waits (bounded) until `proc` has logged a line containing `text`.
async fn until_logged(proc: &Proc, text: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !proc.output().contains(text) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never logged {text:?}; output:\n{}",
            proc.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn a_second_sigterm_hands_the_running_job_back_and_exits_at_once(pool: PgPool) {
    not_standalone!("signals a worker process of its own");
    let options = Options {
        // Far longer than the test waits: only the second signal can end it in time.
        worker_env: vec![kv("SHUTDOWN_GRACE_SECONDS", "120")],
        ..Options::default()
    };
    let mut stack = start(&pool, options).await;
    stack.emulator_config(json!({"hang_next": 1})).await;
    let r = stack
        .post("/api/v1/jobs", generate_body("stopped twice"), &[])
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let job_id = r.body["job_id"].as_str().expect("id").to_owned();
    stack.until_provider_busy("openai").await;

    let worker = stack.worker_proc.as_mut().expect("worker");
    worker.signal("TERM");
    // The first signal taken in (two sent at once could reach the process as one).
    until_logged(worker, "shutting down: no new jobs").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        worker.child.try_wait().expect("try_wait").is_none(),
        "still in its grace period after one signal"
    );
    let running = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(running.body["status"], "running", "{}", running.body);

    let worker = stack.worker_proc.as_mut().expect("worker");
    let started = std::time::Instant::now();
    worker.signal("TERM");
    let exit = worker.wait_exit(Duration::from_secs(2)).await;
    assert!(exit.success(), "{exit:?}");
    assert!(
        worker.output().contains("second shutdown signal"),
        "says why it did not wait:\n{}",
        worker.output()
    );
    eprintln!("exited {:?} after the second signal", started.elapsed());

    let job = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(
        job.body["status"], "queued",
        "handed back, not left running until its lease expires: {}",
        job.body
    );
    let _next = Proc::spawn("worker-2", &["worker"], &stack.env.clone());
    let done = stack.wait_terminal(&job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}
