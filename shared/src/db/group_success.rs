//! Successes gathered (issue 19, item 1, the worker's side): the jobs a worker finishes at the same moment are marked
//! succeeded, their images recorded and their intents cleared in one statement and one commit instead of one each.
//! Each caller still gets its own answer, exactly as [`super::jobs::complete_succeeded`] gives it: the job with its
//! images and charges as written, and its budget's settlement; `None`, with nothing written for it, when the job
//! was no longer this worker's. A job's own writes stay together: its images are inserted and its intents cleared
//! only if its row changed.
//!
//! Adaptive, without a timer ([`crate::gather`]): a lone success runs at once, as the single statement. Postgres only;
//! SQLite keeps the single transaction. A failed flush writes its successes again one by one, so each caller sees its
//! own answer or error.

use super::images::{IMAGE_COLUMNS, NewImage, bind_new_images};
use super::job_parts::{charges_in, charges_of_sql, images_of};
use super::jobs::{JOB_COLUMNS, JobRecord, Served, Succeeded, complete_succeeded};
use super::{Db, DbError};
use crate::domain::JobId;
use crate::gather::{Gather, first_of_each};
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// The most successes one flush writes.
const MAX_SUCCESSES: usize = 64;
/// Flushes running at once.
const FLUSH_SLOTS: usize = 2;

/// `complete_succeeded`'s statement for many jobs: the jobs side by side (`$1` to `$5`, one array per column, named
/// `s_*` so the job's own columns stay unambiguous), the worker (`$6`), every job's images flattened (`$7` to `$16`)
/// with the job each belongs to (`$17`).
static SUCCEED_MANY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH input AS (SELECT * FROM UNNEST($1::uuid[], $2::jsonb[], $3::int8[], $4::text[], $5::jsonb[]) \
            AS s(s_id, s_meta, s_time_ms, s_served_by, s_translations)), \
         prev AS (SELECT jobs.id AS prev_id, jobs.budget_settled FROM jobs JOIN input ON jobs.id = input.s_id), \
         done AS ( \
            UPDATE jobs SET status = 'succeeded', provider_meta = s_meta, generation_time_ms = s_time_ms, \
                served_by = s_served_by, translations = s_translations, lease_until = NULL, finished_at = now(), \
                updated_at = now(), budget_settled = TRUE \
            FROM input WHERE jobs.id = input.s_id AND jobs.worker_id = $6 AND jobs.status = 'running' \
            RETURNING {JOB_COLUMNS}), \
         stored AS ( \
            INSERT INTO images (id, job_id, owner, position, storage_key, content_type, size_bytes, sha256, width, \
                height, revised_prompt, seed) \
            SELECT p.p_id, done.id, done.owner, p.position, p.storage_key, p.content_type, p.size_bytes, p.sha256, \
                p.width, p.height, p.revised_prompt, p.seed \
            FROM UNNEST($7::uuid[], $8::int4[], $9::text[], $10::text[], $11::int8[], $12::text[], $13::int4[], \
                $14::int4[], $15::text[], $16::int8[], $17::uuid[]) \
                AS p(p_id, position, storage_key, content_type, size_bytes, sha256, width, height, revised_prompt, \
                    seed, p_job) \
            JOIN done ON done.id = p.p_job \
            RETURNING {IMAGE_COLUMNS}), \
         unpended AS (DELETE FROM pending_objects WHERE job_id IN (SELECT id FROM done)) \
         SELECT done.*, (SELECT json_agg(json_build_array({IMAGE_COLUMNS}) ORDER BY position) FROM stored \
                WHERE stored.job_id = done.id) AS stored_images, \
            {CHARGES} AS parts_charges, \
            (SELECT NOT budget_settled FROM prev WHERE prev.prev_id = done.id) AS settles_budget \
         FROM done",
        CHARGES = charges_of_sql("done"),
    )
});

/// One job's success, owned (a flush outlives its callers' borrows).
struct Success {
    id: JobId,
    images: Vec<NewImage>,
    meta: serde_json::Value,
    time_ms: i64,
    served: Served,
}

/// A flush's answer to one caller, as `complete_succeeded` would give it (`None`: not written by the flush).
type Written = Result<Option<Succeeded>, DbError>;

/// One worker process's gathered successes (its id is every success's).
pub struct GroupSuccesses {
    gather: Arc<Gather<Success, Option<Written>>>,
    worker_id: String,
}

impl GroupSuccesses {
    pub fn new(pool: PgPool, worker_id: String) -> Self {
        let flush_worker = worker_id.clone();
        let gather = Gather::new(
            "job_success",
            MAX_SUCCESSES,
            FLUSH_SLOTS,
            Box::new(move |successes| {
                Box::pin(flush(pool.clone(), flush_worker.clone(), successes))
            }),
        );
        Self { gather, worker_id }
    }

    /// [`complete_succeeded`] of job `id`, with whatever else this worker finishes now.
    pub async fn complete(
        &self,
        db: &Db,
        id: JobId,
        images: &[NewImage],
        provider_meta: &serde_json::Value,
        generation_time_ms: i64,
        served: &Served,
    ) -> Result<Option<Succeeded>, DbError> {
        let success = Success {
            id,
            images: images.to_vec(),
            meta: provider_meta.clone(),
            time_ms: generation_time_ms,
            served: served.clone(),
        };
        match self.gather.call(success).await {
            Ok(Some(written)) => written,
            Ok(None) | Err(_) => {
                complete_succeeded(
                    db,
                    id,
                    &self.worker_id,
                    images,
                    provider_meta,
                    generation_time_ms,
                    served,
                )
                .await
            }
        }
    }

    /// (flushes, successes) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.gather.stats()
    }
}

/// One flush: `None` for a caller whose success was not written here (the flush failed, or its job came twice), who
/// then writes alone.
async fn flush(pool: PgPool, worker_id: String, successes: Vec<Success>) -> Vec<Option<Written>> {
    // A lone success takes the single statement, cheaper to run than the arrays (and holding the flush's slot while
    // it runs, so that the successes arriving meanwhile gather).
    if let [s] = successes.as_slice() {
        let db = Db::from(pool);
        let one = complete_succeeded(
            &db, s.id, &worker_id, &s.images, &s.meta, s.time_ms, &s.served,
        );
        return vec![Some(one.await)];
    }
    // One row per job: a job finished twice at once is a job run twice; its second success is written alone.
    let first = first_of_each(&successes, |s| s.id);
    let taken: Vec<&Success> = successes
        .iter()
        .zip(&first)
        .filter(|(_, first)| **first)
        .map(|(s, _)| s)
        .collect();
    let images: Vec<&NewImage> = taken.iter().flat_map(|s| &s.images).collect();
    let image_jobs: Vec<JobId> = taken
        .iter()
        .flat_map(|s| s.images.iter().map(|_| s.id))
        .collect();
    let query = sqlx::query(sqlx::AssertSqlSafe(SUCCEED_MANY_SQL.as_str()))
        .bind(taken.iter().map(|s| s.id).collect::<Vec<_>>())
        .bind(taken.iter().map(|s| Json(&s.meta)).collect::<Vec<_>>())
        .bind(taken.iter().map(|s| s.time_ms).collect::<Vec<_>>())
        .bind(
            taken
                .iter()
                .map(|s| s.served.route.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            taken
                .iter()
                .map(|s| Json(&s.served.translations))
                .collect::<Vec<_>>(),
        )
        .bind(&worker_id);
    let rows = bind_new_images(query, &images)
        .bind(image_jobs)
        .fetch_all(&pool)
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        // Nothing was written: each caller writes alone.
        Err(e) => {
            tracing::debug!(successes = successes.len(), error = %e, "gathered success failed; finishing one by one");
            return successes.iter().map(|_| None).collect();
        }
    };
    // Written: from here on every caller gets this flush's answer, never a second try that would find its job
    // finished and take it for another worker's. A row that cannot be read is its caller's error, as it would be
    // from `complete_succeeded`.
    let mut by_id = HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: JobId = match row.try_get("id") {
            Ok(id) => id,
            Err(e) => {
                let unread = format!("a gathered success's row: {e}");
                return first
                    .into_iter()
                    .map(|first| first.then(|| Err(DbError::Corrupt(unread.clone()))))
                    .collect();
            }
        };
        by_id.insert(id, succeeded(row));
    }
    successes
        .iter()
        .zip(first)
        .map(|(s, first)| first.then(|| by_id.remove(&s.id).transpose()))
        .collect()
}

/// One row of the flush's answer, read as `complete_succeeded` reads its own.
fn succeeded(row: &sqlx::postgres::PgRow) -> Result<Succeeded, DbError> {
    let job = <JobRecord as sqlx::FromRow<_>>::from_row(row)?;
    let stored = images_of(row, "stored_images")?;
    let charges = charges_in(row, "parts_charges")?;
    let settles: Option<bool> = row.try_get("settles_budget")?;
    Ok(Succeeded::of(job, stored, charges, settles == Some(true)))
}
