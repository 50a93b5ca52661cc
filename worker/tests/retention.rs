//! IMAGE_RETENTION_DAYS against real Postgres: finished jobs older than the retention go away with their images
//! (objects first, then rows); recent and unfinished jobs stay; one pass runs at a time.

use bytes::Bytes;
use imagegen_shared::db::{self, Db, NewImage, NewJob, Served};
use imagegen_shared::domain::{ImageId, JobId, JobStatus, ProviderId};
use imagegen_shared::storage::{ImageMetadata, ImageStorage};
use imagegen_worker::retention::sweep_once;
use sqlx::PgPool;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

fn new_job() -> NewJob {
    NewJob {
        provider: ProviderId::OpenAi,
        id: JobId::new(),
        owner: "anonymous".into(),
        correlation_id: "corr".into(),
        request: serde_json::from_value(serde_json::json!({"prompt": "an old fox", "model": "gpt-image-2", "size": "1024x1024", "num_images": 1, "allow_failover": true})).expect("valid"),
        max_attempts: 3,
        max_calls: 3,
        status: JobStatus::Queued,
        moderation: None,
        error: None,
        deadline_secs: None,
        api_key_id: None,
        reserved_usd_micros: 0,
        inputs: Vec::new(),
    }
}

/// A succeeded job with one stored image; returns (job, storage key).
async fn finished_job(db: &Db, storage: &ImageStorage) -> (JobId, String) {
    let job = db::jobs::insert(db, &new_job()).await.expect("insert");
    db::jobs::claim_job(db, job.id, "w1", Duration::from_secs(30))
        .await
        .expect("claim")
        .expect("claimed");
    let id = ImageId::new();
    let key = ImageStorage::key_for(id, chrono::Utc::now(), "png");
    let meta = ImageMetadata {
        image_id: id,
        job_id: job.id,
        owner: "anonymous".into(),
        prompt: "an old fox".into(),
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
    storage
        .put_image(&key, Bytes::from_static(b"png"), &meta)
        .await
        .expect("put");
    let image = NewImage {
        id,
        position: 0,
        storage_key: key.clone(),
        content_type: "image/png".into(),
        size_bytes: 3,
        sha256: "00".into(),
        width: 1,
        height: 1,
        revised_prompt: None,
        seed: None,
    };
    db::jobs::complete_succeeded(
        db,
        job.id,
        "w1",
        &[image],
        &serde_json::json!({}),
        1,
        &Served::default(),
    )
    .await
    .expect("complete")
    .expect("ours");
    (job.id, key)
}

#[sqlx::test(migrations = "../migrations")]
async fn an_expired_edit_job_takes_its_stored_inputs_with_it(pool: PgPool) {
    let db = Db::from(pool.clone());
    let storage = ImageStorage::memory();
    let mut job = new_job();
    let key = format!("inputs/{}/image-0.png", job.id);
    storage
        .put_input(&key, Bytes::from_static(b"png"), "image/png")
        .await
        .expect("put");
    job.inputs = vec![db::job_inputs::JobInput {
        job_id: job.id,
        owner: "anonymous".into(),
        role: db::job_inputs::InputRole::Image,
        position: 0,
        storage_key: Some(key.clone()),
        source_url: None,
        source_image: None,
        content_type: Some("image/png".into()),
        size_bytes: Some(3),
        sha256: Some("00".into()),
        width: Some(1),
        height: Some(1),
    }];
    let job = db::jobs::insert(&db, &job).await.expect("insert");
    sqlx::query(
        "UPDATE jobs SET status = 'failed', finished_at = now() - interval '40 days', \
            created_at = now() - interval '40 days' WHERE id = $1",
    )
    .bind(job.id)
    .execute(&pool)
    .await
    .expect("age");

    let swept = sweep_once(&db, &storage, 30 * DAY)
        .await
        .expect("sweep")
        .expect("lock");
    assert_eq!((swept.jobs, swept.objects, swept.failed), (1, 1, 0));
    assert!(storage.get(&key).await.is_err(), "the input object is gone");
    let inputs: i64 = sqlx::query_scalar("SELECT count(*) FROM job_inputs")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(inputs, 0, "its row went with the job");
}

#[sqlx::test(migrations = "../migrations")]
async fn expired_jobs_go_with_their_images_and_recent_ones_stay(pool: PgPool) {
    let db = Db::from(pool.clone());
    let storage = ImageStorage::memory();
    let (old, old_key) = finished_job(&db, &storage).await;
    let (recent, recent_key) = finished_job(&db, &storage).await;
    let unfinished = db::jobs::insert(&db, &new_job()).await.expect("insert");
    sqlx::query(
        "UPDATE jobs SET finished_at = now() - interval '40 days', created_at = now() - interval '40 days' \
         WHERE id = $1 OR id = $2",
    )
    .bind(old)
    .bind(unfinished.id)
    .execute(&pool)
    .await
    .expect("age");

    let swept = sweep_once(&db, &storage, 30 * DAY)
        .await
        .expect("sweep")
        .expect("lock");
    assert_eq!((swept.jobs, swept.objects, swept.failed), (1, 1, 0));
    assert!(
        db::jobs::get_job_unscoped(&db, old)
            .await
            .expect("read")
            .is_none()
    );
    assert!(storage.get(&old_key).await.is_err(), "the object is gone");
    let images: i64 = sqlx::query_scalar("SELECT count(*) FROM images")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(images, 1, "only the recent job's image row is left");
    assert!(
        db::jobs::get_job_unscoped(&db, recent)
            .await
            .expect("read")
            .is_some()
    );
    assert!(storage.get(&recent_key).await.is_ok());
    assert!(
        db::jobs::get_job_unscoped(&db, unfinished.id)
            .await
            .expect("read")
            .is_some(),
        "an unfinished job is never removed, however old"
    );

    // Nothing left to do; and while another process holds the lock, a pass stands aside.
    let again = sweep_once(&db, &storage, 30 * DAY)
        .await
        .expect("sweep")
        .expect("lock");
    assert_eq!(again.jobs, 0);
    let mut holder = pool.acquire().await.expect("conn");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(0x1_6e_67_65_6f_i64)
        .execute(&mut *holder)
        .await
        .expect("lock");
    assert!(
        sweep_once(&db, &storage, 30 * DAY)
            .await
            .expect("sweep")
            .is_none()
    );
}
