//! `JobQueue::consume` on both backends: a handler that panics on a message does not stop the consumer; the panic
//! is logged with the job's id and counted; the next message is still handled. In process the panicking message
//! also comes back a second later. On Redis (the real one at $REDIS_URL) it does not, yet: apalis-redis only acts
//! on a task's result when results are persisted, which `queue::redis` turns off, so a failed or panicked message
//! is never rescheduled by apalis (the job comes back through the reconciler once its lease expires).
//!
//! Each test runs on tokio's current-thread runtime, so the log and metrics recorders it installs for its own
//! thread see every task the consumer spawns.

use imagegen_shared::domain::JobId;
use imagegen_shared::queue::{ConsumerSettings, Delivery, JobMessage, JobQueue, redis_connection};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Long enough for a redelivery on either backend (in process after 1 s; apalis-redis after a second or two plus
/// its next fetch).
const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// A log sink the test reads back.
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn message(name: &str) -> JobMessage {
    JobMessage {
        job_id: JobId::new(),
        correlation_id: name.to_owned(),
    }
}

/// Pushes a message whose first delivery panics, then one that does not; consumes until the second is done (and,
/// with `redelivers`, the first has come back and is done too). Returns what was logged and the rendered metrics.
async fn panic_then_carry_on(
    queue: JobQueue,
    worker_id: String,
    redelivers: bool,
) -> (String, String) {
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || Capture(logs.clone())
        })
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _metrics = metrics::set_default_local_recorder(&recorder);

    let panics = message("panics");
    let calm = message("calm");
    let calls: Arc<Mutex<HashMap<JobId, u32>>> = Arc::default();
    let handler = {
        let calls = calls.clone();
        let panicky = panics.job_id;
        move |message: JobMessage| {
            let calls = calls.clone();
            async move {
                let n = {
                    let mut calls = calls.lock().expect("calls");
                    let n = calls.entry(message.job_id).or_default();
                    *n += 1;
                    *n
                };
                if message.job_id == panicky && n == 1 {
                    panic!("a bad job");
                }
                Delivery::Done
            }
        }
    };
    let stop = CancellationToken::new();
    let consumer = tokio::spawn({
        let (queue, stop) = (queue.clone(), stop.clone());
        async move {
            let settings = ConsumerSettings {
                worker_id,
                concurrency: 1,
            };
            queue.consume(settings, handler, stop).await;
        }
    });
    queue.push(panics.clone()).await.expect("push");
    queue.push(calm.clone()).await.expect("push");

    let count = |id: JobId| calls.lock().expect("calls").get(&id).copied().unwrap_or(0);
    let started = tokio::time::Instant::now();
    let deliveries_of_panicky = if redelivers { 2 } else { 1 };
    while count(calm.job_id) == 0 || count(panics.job_id) < deliveries_of_panicky {
        assert!(
            !consumer.is_finished(),
            "the consumer stopped after a panic"
        );
        assert!(
            started.elapsed() < DEADLINE,
            "calm handled {} times, panicking one {} times; logs:\n{}",
            count(calm.job_id),
            count(panics.job_id),
            String::from_utf8_lossy(&logs.lock().expect("logs"))
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(count(calm.job_id), 1, "the next message was handled once");
    if redelivers {
        assert_eq!(
            count(panics.job_id),
            2,
            "the panicking message came back once"
        );
    }
    stop.cancel();
    tokio::time::timeout(DEADLINE, consumer)
        .await
        .expect("the consumer stops")
        .expect("the consumer did not panic");

    let logs = String::from_utf8(logs.lock().expect("logs").clone()).expect("utf-8 logs");
    (logs, metrics.render())
}

fn assert_reported(logs: &str, metrics: &str, panics: usize) {
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("job handler panicked"))
        .collect();
    assert_eq!(lines.len(), panics, "logs:\n{logs}");
    assert!(
        lines.iter().all(|l| l.contains("ERROR")
            && l.contains("job_id=")
            && l.contains("correlation_id=panics")
            && l.contains("a bad job")),
        "the panic is logged as an error naming the job: {lines:?}"
    );
    assert!(
        metrics.contains(&format!("imagegen_job_panics_total {panics}")),
        "metrics:\n{metrics}"
    );
}

#[tokio::test]
async fn in_process_a_panicking_job_is_caught_reported_and_delivered_again() {
    let (logs, metrics) = panic_then_carry_on(JobQueue::local(), "local-panics".into(), true).await;
    assert_reported(&logs, &metrics, 1);
}

#[tokio::test]
async fn on_redis_a_panicking_job_is_caught_reported_and_delivered_again() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (client, conn) = redis_connection(&url).expect("redis");
    let name = format!("panic-test-{}", uuid::Uuid::new_v4().simple());
    let queue = JobQueue::redis(Some(client), conn.clone(), &name);
    let (logs, metrics) = panic_then_carry_on(queue, format!("{name}-worker"), true).await;
    assert_reported(&logs, &metrics, 1);

    let mut conn = conn;
    // Handled messages are acknowledged: nothing is left in flight (apalis drops an empty set).
    let in_flight: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{name}*inflight*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert_eq!(
        in_flight,
        Vec::<String>::new(),
        "every handled message acknowledged"
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{name}*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
}
