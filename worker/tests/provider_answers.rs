//! Oversized provider answers through the real worker (`run_with`, SQLite job store, in-process queue, memory
//! storage) against a fake OpenAI on 127.0.0.1: the worker stops reading at its cap, so its memory stays bounded
//! whatever the provider sends, and the job fails at once, naming MAX_IMAGE_BYTES, without paying for a retry.

use axum::body::Body;
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use imagegen_shared::backends::Backends;
use imagegen_shared::db::{self, JobRecord, NewJob};
use imagegen_shared::domain::{JobId, JobStatus, ProviderId};
use imagegen_shared::queue::JobMessage;
use imagegen_worker::WorkerArgs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1024 * 1024;
/// MAX_IMAGE_BYTES for these workers.
const MAX_IMAGE_BYTES: u64 = MIB;

/// What the fake provider did: calls answered, bytes of answer sent (counted as each chunk leaves), and whether its
/// last answer stopped streaming (ended, or hung up on).
#[derive(Default)]
struct Provider {
    calls: AtomicU32,
    sent: AtomicU64,
    stopped: AtomicBool,
}

struct StopGuard(Arc<Provider>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy)]
enum Answer {
    /// A 200 whose body starts like an Images API answer and goes on for 200 MiB, streamed with no length.
    Endless,
    /// A well-formed answer whose one picture is 1 KiB more than MAX_IMAGE_BYTES.
    PictureOverMax,
}

/// A PNG of `size` bytes: a real signature and header (1024x1024), then padding.
fn png_of(size: usize) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x04\x00\x00\x00\x04\x00\x08\x06\x00\x00\x00"
        .to_vec();
    png.resize(size, 0);
    png
}

fn answer(kind: Answer, provider: Arc<Provider>) -> Body {
    provider.calls.fetch_add(1, Ordering::SeqCst);
    provider.stopped.store(false, Ordering::SeqCst);
    let chunks: Vec<Bytes> = match kind {
        Answer::Endless => vec![Bytes::from_static(br#"{"created":1,"data":[{"b64_json":""#)],
        Answer::PictureOverMax => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(png_of(
                usize::try_from(MAX_IMAGE_BYTES).expect("size") + 1024,
            ));
            vec![Bytes::from(
                serde_json::to_vec(&serde_json::json!({"created": 1, "data": [{"b64_json": b64}]}))
                    .expect("json"),
            )]
        }
    };
    let endless = matches!(kind, Answer::Endless);
    let filler = Bytes::from(vec![b'A'; 64 * 1024]);
    let stream = futures::stream::unfold(
        (chunks.into_iter(), 0u64, StopGuard(provider)),
        move |(mut chunks, filled, guard)| {
            let filler = filler.clone();
            async move {
                let next = match chunks.next() {
                    Some(chunk) => chunk,
                    None if endless && filled < 200 * MIB => filler,
                    None => return None,
                };
                guard.0.sent.fetch_add(next.len() as u64, Ordering::SeqCst);
                let filled = filled + next.len() as u64;
                Some((
                    Ok::<_, std::convert::Infallible>(next),
                    (chunks, filled, guard),
                ))
            }
        },
    );
    Body::from_stream(stream)
}

/// Serves the fake OpenAI Images API on 127.0.0.1; its `/v1` base URL.
async fn fake_openai(kind: Answer, provider: Arc<Provider>) -> String {
    let app = axum::Router::new().route(
        "/v1/images/generations",
        axum::routing::post(move || {
            let provider = provider.clone();
            async move {
                axum::response::Response::builder()
                    .header("content-type", "application/json")
                    .body(answer(kind, provider))
                    .expect("response")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
}

/// Runs one job on a real worker against `base_url` until it ends; its record.
async fn run_one_job(base_url: &str) -> JobRecord {
    let dir = std::env::temp_dir().join(format!(
        "imagegen-provider-answers-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let database_url = format!("sqlite:{}", dir.join("jobs.db").display());
    let max = MAX_IMAGE_BYTES.to_string();
    let args = Cli::try_parse_from([
        "imagegen",
        "--database-url",
        &database_url,
        "--redis-url",
        "redis://unused",
        "--enabled-providers",
        "openai",
        "--openai-api-key",
        "k",
        "--openai-base-url",
        base_url,
        "--storage-backend",
        "memory",
        "--max-image-bytes",
        &max,
        "--reconcile-enabled",
        "false",
        "--worker-concurrency",
        "1",
        "--shutdown-grace-secs",
        "0",
    ])
    .expect("arguments")
    .worker;
    let settings = args.settings().expect("settings");
    let backends = Backends::connect(&database_url, 2, None, "provider-answers").expect("stores");
    db::migrate(&backends.db).await.expect("migrate");
    let job = db::jobs::insert(
        &backends.db,
        &NewJob {
            provider: ProviderId::OpenAi,
            id: JobId::new(),
            owner: "anonymous".into(),
            correlation_id: "corr".into(),
            request: serde_json::from_value(
                serde_json::json!({"prompt": "a fox", "model": "gpt-image-2",
                "size": "1024x1024", "num_images": 1, "allow_failover": false}),
            )
            .expect("valid"),
            max_attempts: 3,
            max_calls: 3,
            status: JobStatus::Queued,
            moderation: None,
            error: None,
            deadline_secs: None,
            api_key_id: None,
            reserved_usd_micros: 0,
            inputs: Vec::new(),
        },
    )
    .await
    .expect("insert");
    backends
        .queue
        .push(JobMessage {
            job_id: job.id,
            correlation_id: "corr".into(),
        })
        .await
        .expect("push");

    let stop = CancellationToken::new();
    let worker = imagegen_worker::run_with(settings, backends.clone(), {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    let watch = async {
        let started = Instant::now();
        let record = loop {
            let record = db::jobs::get_job_unscoped(&backends.db, job.id)
                .await
                .expect("read")
                .expect("row");
            if record.status.is_terminal() {
                break record;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "job still {:?} after a minute",
                record.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        stop.cancel();
        record
    };
    // Side by side in this task (the worker's future is not `Send`-provable to `tokio::spawn`).
    let (ran, record) = tokio::join!(worker, watch);
    ran.expect("the worker ran and stopped");
    let _ = std::fs::remove_dir_all(&dir);
    record
}

async fn bytes_sent_by_the_end(provider: &Provider) -> u64 {
    for _ in 0..200 {
        if provider.stopped.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        provider.stopped.load(Ordering::SeqCst),
        "the provider is still sending"
    );
    provider.sent.load(Ordering::SeqCst)
}

/// A 200 MiB answer: the worker hangs up after about its cap (1 MiB picture: 1.4 MiB of base64 and JSON, plus what
/// the sockets buffer), and the job fails after that one paid call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_answer_is_cut_off_at_the_cap_and_fails_the_job_without_retries() {
    let provider = Arc::new(Provider::default());
    let url = fake_openai(Answer::Endless, provider.clone()).await;
    let job = run_one_job(&url).await;
    let sent = bytes_sent_by_the_end(&provider).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    assert_eq!(
        (job.attempts, provider.calls.load(Ordering::SeqCst)),
        (1, 1),
        "one paid call, no retry"
    );
    let message = job.error_message.unwrap_or_default();
    assert!(message.contains("MAX_IMAGE_BYTES"), "{message}");
    assert!(
        sent < 20 * MIB,
        "the worker read on: the provider sent {sent} bytes"
    );
}

/// A well-formed answer whose picture is just over MAX_IMAGE_BYTES gets past the answer's cap (base64 of the limit
/// plus room for the JSON) but is refused while it is decoded (its bytes dropped at the limit), and the job fails
/// without a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picture_over_max_image_bytes_fails_the_job_without_retries() {
    let provider = Arc::new(Provider::default());
    let url = fake_openai(Answer::PictureOverMax, provider.clone()).await;
    let job = run_one_job(&url).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    assert_eq!(
        (job.attempts, provider.calls.load(Ordering::SeqCst)),
        (1, 1),
        "one paid call, no retry"
    );
    let message = job.error_message.unwrap_or_default();
    assert!(
        message.contains("MAX_IMAGE_BYTES") && message.contains(&(MIB + 1024).to_string()),
        "{message}"
    );
}
