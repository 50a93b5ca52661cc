//! IMAGE_RETENTION_DAYS: a periodic pass, one at a time across the fleet, that deletes finished jobs older than the
//! retention with their images: objects first, then rows. A job whose objects cannot all be deleted keeps its rows
//! and is tried again on the next pass, so nothing is orphaned silently.

use imagegen_shared::db::{self, Db};
use imagegen_shared::storage::ImageStorage;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Jobs handled per batch, and batches per pass, so a pass stays bounded.
const BATCH: i64 = 100;
const BATCHES_PER_PASS: usize = 50;

#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    pub age: Duration,
    pub every: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub jobs: u64,
    pub objects: u64,
    /// Objects that could not be deleted now (their jobs are kept for the next pass).
    pub failed: u64,
}

/// One pass; `None` when another process is running one.
pub async fn sweep_once(
    db: &Db,
    storage: &ImageStorage,
    age: Duration,
) -> Result<Option<Swept>, db::DbError> {
    let Some(lock) = db::retention::try_lock(db).await? else {
        return Ok(None);
    };
    let result = sweep_locked(db, storage, age).await;
    lock.release().await;
    result.map(Some)
}

async fn sweep_locked(
    db: &Db,
    storage: &ImageStorage,
    age: Duration,
) -> Result<Swept, db::DbError> {
    let mut swept = Swept::default();
    let mut skipped: std::collections::HashSet<imagegen_shared::domain::JobId> = Default::default();
    for _ in 0..BATCHES_PER_PASS {
        let limit = BATCH + i64::try_from(skipped.len()).unwrap_or(0);
        let batch = db::retention::expired_jobs(db, age, limit).await?;
        let candidates: Vec<_> = batch
            .into_iter()
            .filter(|(job, _)| !skipped.contains(job))
            .collect();
        if candidates.is_empty() {
            break;
        }
        let mut done = Vec::with_capacity(candidates.len());
        for (job, keys) in candidates {
            let mut all_gone = true;
            for key in keys {
                match storage.delete_image(&key).await {
                    Ok(()) => swept.objects += 1,
                    Err(e) => {
                        all_gone = false;
                        swept.failed += 1;
                        tracing::warn!(job_id = %job, %key, error = %e, "retention could not delete an object; will retry");
                    }
                }
            }
            if all_gone {
                done.push(job);
            } else {
                skipped.insert(job);
            }
        }
        swept.jobs += db::retention::delete_jobs(db, &done).await?;
    }
    if swept.jobs > 0 || swept.failed > 0 {
        metrics::counter!("imagegen_retention_deleted_total", "kind" => "job")
            .increment(swept.jobs);
        metrics::counter!("imagegen_retention_deleted_total", "kind" => "object")
            .increment(swept.objects);
        metrics::counter!("imagegen_retention_delete_failures_total").increment(swept.failed);
    }
    Ok(swept)
}

/// Runs a pass every `settings.every` (the first at once) until `stop`.
pub async fn run(
    db: Db,
    storage: ImageStorage,
    settings: RetentionSettings,
    stop: CancellationToken,
) {
    let mut ticks = imagegen_shared::ticker::every(settings.every, &stop);
    while ticks.next().await {
        match sweep_once(&db, &storage, settings.age).await {
            Ok(Some(swept)) if swept.jobs > 0 || swept.failed > 0 => tracing::info!(
                jobs = swept.jobs,
                objects = swept.objects,
                failed = swept.failed,
                "retention deleted expired jobs and images"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
        }
    }
}
