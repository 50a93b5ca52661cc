//! The reconciler against real Postgres and Redis: lost work is found in Postgres and queued again; work whose
//! attempts are used up fails; a healthy backlog is not flooded with duplicates.

use imagegen_shared::db::{self, Db, NewJob};
use imagegen_shared::domain::{JobId, JobStatus, ProviderId};
use imagegen_shared::queue::{JobMessage, JobQueue, redis_connection};
use imagegen_worker::reconciler::{ReconcilerSettings, reconcile_once};
use sqlx::PgPool;
use std::time::Duration;

fn new_job(max_attempts: i32) -> NewJob {
    NewJob {
        provider: ProviderId::OpenAi,
        id: JobId::new(),
        owner: "anonymous".into(),
        correlation_id: "corr".into(),
        request: serde_json::from_value(serde_json::json!({"prompt": "a fox", "model": "gpt-image-2", "size": "1024x1024", "num_images": 1, "allow_failover": true})).expect("valid"),
        max_attempts,
        max_calls: max_attempts,
        status: JobStatus::Queued,
        moderation: None,
        error: None,
        deadline_secs: None,
        api_key_id: None,
        reserved_usd_micros: 0,
        inputs: Vec::new(),
    }
}

fn queue() -> JobQueue {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (_, conn) = redis_connection(&url).expect("redis");
    JobQueue::new(
        conn,
        &format!("reconciler-test-{}", uuid::Uuid::new_v4().simple()),
    )
}

const SETTINGS: ReconcilerSettings = ReconcilerSettings {
    every: Duration::from_secs(1),
    queued_after: Duration::from_millis(100),
};

async fn age(pool: &PgPool) {
    sqlx::query("UPDATE jobs SET updated_at = now() - interval '1 hour'")
        .execute(pool)
        .await
        .expect("age rows");
}

#[sqlx::test(migrations = "../migrations")]
async fn lost_messages_are_queued_again_and_only_as_many_as_are_missing(pool: PgPool) {
    let db = Db::from(pool.clone());
    let queue = queue();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(db::jobs::insert(&db, &new_job(3)).await.expect("insert").id);
    }
    // One of the three still has its message; two were lost.
    queue
        .push(JobMessage {
            job_id: ids[0],
            correlation_id: "corr".into(),
        })
        .await
        .expect("push");
    age(&pool).await;
    let (stale, expired, failed) = reconcile_once(&db, &queue, &SETTINGS)
        .await
        .expect("pass")
        .expect("lock");
    assert_eq!((stale, expired, failed), (2, 0, 0));
    assert_eq!(queue.depth().await.expect("depth"), 3);
    // Nothing is missing now: a second pass queues nothing.
    age(&pool).await;
    let again = reconcile_once(&db, &queue, &SETTINGS)
        .await
        .expect("pass")
        .expect("lock");
    assert_eq!(again, (0, 0, 0));
}

#[sqlx::test(migrations = "../migrations")]
async fn expired_leases_are_requeued_or_failed_when_out_of_attempts(pool: PgPool) {
    let db = Db::from(pool.clone());
    let queue = queue();
    let retry = db::jobs::insert(&db, &new_job(3)).await.expect("insert");
    let spent = db::jobs::insert(&db, &new_job(1)).await.expect("insert");
    for job in [&retry, &spent] {
        db::jobs::claim_job(&db, job.id, "dead-worker", Duration::from_millis(1))
            .await
            .expect("claim")
            .expect("claimed");
        db::jobs::record_attempt(&db, job.id, "dead-worker", "dalle3:openai")
            .await
            .expect("attempt");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, expired, failed) = reconcile_once(&db, &queue, &SETTINGS)
        .await
        .expect("pass")
        .expect("lock");
    assert_eq!((expired, failed), (1, 1));
    let retry = db::jobs::get_job_unscoped(&db, retry.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        (retry.status, retry.attempts, retry.worker_id),
        (JobStatus::Queued, 1, None)
    );
    let spent = db::jobs::get_job_unscoped(&db, spent.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(spent.status, JobStatus::Failed);
    assert_eq!(queue.depth().await.expect("depth"), 1);
}

/// Waiters hear of a job the reconciler fails, as they do of a worker's.
#[sqlx::test(migrations = "../migrations")]
async fn a_job_the_reconciler_fails_publishes_its_event(pool: PgPool) {
    use imagegen_shared::queue::signals::Signal;
    let db = Db::from(pool.clone());
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (client, conn) = redis_connection(&url).expect("redis");
    let queue = JobQueue::redis(
        Some(client),
        conn,
        &format!("reconciler-test-{}", uuid::Uuid::new_v4().simple()),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let mut signals = queue.signals(stop.clone());
    // Subscribed before the pass, so nothing is missed.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), signals.recv()).await {
            Ok(Some(Signal::Connected)) => break,
            Ok(Some(_)) => {}
            other => panic!("no subscription: {other:?}"),
        }
    }
    let spent = db::jobs::insert(&db, &new_job(1)).await.expect("insert");
    db::jobs::claim_job(&db, spent.id, "dead-worker", Duration::from_millis(1))
        .await
        .expect("claim")
        .expect("claimed");
    db::jobs::record_attempt(&db, spent.id, "dead-worker", "openai:gpt-image-2")
        .await
        .expect("attempt");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, _, failed) = reconcile_once(&db, &queue, &SETTINGS)
        .await
        .expect("pass")
        .expect("lock");
    assert_eq!(failed, 1);
    let event = loop {
        match tokio::time::timeout(Duration::from_secs(5), signals.recv()).await {
            Ok(Some(Signal::Event(e))) => break e,
            Ok(Some(_)) => {}
            other => panic!("no event: {other:?}"),
        }
    };
    assert_eq!((event.job_id, event.status), (spent.id, JobStatus::Failed));
    stop.cancel();
}

/// A worker that dies mid-failover (its first route's attempts used up, the job's budget not): the job goes back to
/// the queue for the routes it has left, and waiters hear of a job the reconciler fails.
#[sqlx::test(migrations = "../migrations")]
async fn a_job_with_calls_left_in_its_budget_is_requeued_not_failed(pool: PgPool) {
    let db = Db::from(pool.clone());
    let queue = queue();
    let mid_failover = db::jobs::insert(
        &db,
        &NewJob {
            max_calls: 4,
            ..new_job(2)
        },
    )
    .await
    .expect("insert");
    db::jobs::claim_job(
        &db,
        mid_failover.id,
        "dead-worker",
        Duration::from_millis(1),
    )
    .await
    .expect("claim")
    .expect("claimed");
    for route in [
        "openai:gpt-image-2",
        "openai:gpt-image-2",
        "flux:flux-schnell",
    ] {
        db::jobs::record_attempt(&db, mid_failover.id, "dead-worker", route)
            .await
            .expect("attempt");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, expired, failed) = reconcile_once(&db, &queue, &SETTINGS)
        .await
        .expect("pass")
        .expect("lock");
    assert_eq!(
        (expired, failed),
        (1, 0),
        "3 calls of a budget of 4: its second route has calls left"
    );
    let job = db::jobs::get_job_unscoped(&db, mid_failover.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!((job.status, job.attempts), (JobStatus::Queued, 3));
}

#[sqlx::test(migrations = "../migrations")]
async fn objects_of_a_writer_that_died_are_swept(pool: PgPool) {
    let db = Db::from(pool.clone());
    use imagegen_shared::storage::{ImageMetadata, ImageStorage};
    let storage = ImageStorage::memory();
    let job = db::jobs::insert(&db, &new_job(3)).await.expect("insert");
    db::jobs::claim_job(&db, job.id, "w1", Duration::from_secs(30))
        .await
        .expect("claim")
        .expect("claimed");
    let meta = |id| ImageMetadata {
        image_id: id,
        job_id: job.id,
        owner: "anonymous".into(),
        prompt: "a fox".into(),
        revised_prompt: None,
        provider: "dalle3:openai".into(),
        width: 1,
        height: 1,
        seed: None,
        sha256: "00".into(),
        content_type: "image/png".into(),
        size_bytes: 3,
        created_at: chrono::Utc::now(),
    };
    let (a, b) = (
        imagegen_shared::domain::ImageId::new(),
        imagegen_shared::domain::ImageId::new(),
    );
    for (id, key) in [(a, "2026/11/24/a.png"), (b, "2026/11/24/b.png")] {
        db::pending::record(&db, key, job.id, "w1")
            .await
            .expect("intent");
        storage
            .put_image(key, bytes::Bytes::from_static(b"png"), &meta(id))
            .await
            .expect("put");
    }
    // Its writer still holds the job: nothing is swept.
    assert_eq!(
        imagegen_worker::reconciler::sweep_orphans(&db, &storage)
            .await
            .expect("sweep"),
        0
    );
    // The writer died and another worker took the job over: both objects are orphans now.
    sqlx::query("UPDATE jobs SET worker_id = 'w2' WHERE id = $1")
        .bind(job.id)
        .execute(&pool)
        .await
        .expect("takeover");
    assert_eq!(
        imagegen_worker::reconciler::sweep_orphans(&db, &storage)
            .await
            .expect("sweep"),
        2
    );
    assert!(storage.get("2026/11/24/a.png").await.is_err());
    assert_eq!(
        imagegen_worker::reconciler::sweep_orphans(&db, &storage)
            .await
            .expect("sweep"),
        0
    );
}
