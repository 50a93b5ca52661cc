//! `jobs` table: insert, read (always scoped to the owner), and every state transition, each a conditional UPDATE:
//! the worker's (claim, attempt, complete, release, deadline cancel), the client's cancel, and the reconciler's
//! (deadline cancel of queued jobs, expired leases failed or requeued), which run inside its transaction (`Conn`).
//!
//! Longer than the house's ~500 lines on purpose: every transition of a job, whoever makes it, is in this one file,
//! so the state machine reads in one place and a second copy of a transition (or one that moves a job backwards)
//! shows here.

use super::DbError;
use super::costs::Settlement;
use super::images::{ImageRecord, NewImage};
use super::job_parts::JobParts;
use super::{Conn, Db, on_conn, on_db};
use crate::cost::Charge;
use crate::domain::{
    AttemptRecord, BatchId, CorrelationId, FailureCode, GenerationRequest, JobId, JobStatus,
    Moderation, OwnerId, ProviderId,
};
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::types::Json;
use std::time::Duration;

/// Serde for the answer a job event carries (`queue::signals::JobEvent::answer`): the row as Postgres returned it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub owner: OwnerId,
    pub batch_id: Option<BatchId>,
    pub batch_index: Option<i32>,
    pub correlation_id: CorrelationId,
    pub status: JobStatus,
    /// The provider first in line at submission (seed-era rows' `dalle3`/`flux_schnell` read as openai/flux).
    pub provider: ProviderId,
    pub request: Json<GenerationRequest>,
    pub attempts: i32,
    /// Calls per route.
    pub max_attempts: i32,
    /// Calls over all routes (`None` for jobs recorded before the budget existed: `max_attempts`).
    pub max_calls: Option<i32>,
    pub worker_id: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub error_code: Option<FailureCode>,
    pub error_message: Option<String>,
    pub moderation: Option<Json<Moderation>>,
    pub provider_meta: Option<Json<serde_json::Value>>,
    pub generation_time_ms: Option<i64>,
    /// The route that produced the images, `provider:model` (`openai:gpt-image-2`, `bfl:flux-2-pro`, ...).
    pub served_by: Option<String>,
    /// What was changed to suit a failover target (size, options dropped, ...).
    pub translations: Option<Json<Vec<String>>>,
    /// Provider calls per route.
    pub provider_attempts: Json<std::collections::BTreeMap<String, i32>>,
    /// Not started by then, the job ends canceled without a provider call.
    pub deadline_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The API key it was submitted with (its budget applies too).
    pub api_key_id: Option<uuid::Uuid>,
    /// The sum of its charges so far, and how they were priced (see `db::costs`).
    pub cost_usd_micros: i64,
    pub cost_basis: String,
    pub cost_estimated: bool,
    /// What its budget reserved at submission; settled to the cost when the job ends.
    pub reserved_usd_micros: i64,
}

impl JobRecord {
    /// The job's budget of provider calls over all its routes.
    pub fn call_budget(&self) -> i32 {
        self.max_calls.unwrap_or(self.max_attempts)
    }

    pub fn cost(&self) -> crate::cost::Cost {
        crate::cost::Cost {
            usd_micros: self.cost_usd_micros,
            basis: crate::cost::CostBasis::parse(&self.cost_basis),
            estimated: self.cost_estimated,
        }
    }
}

/// A job about to be recorded. `status` is `queued`, or `moderated` when the API's keyword filter blocked it.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub owner: OwnerId,
    pub correlation_id: CorrelationId,
    pub request: GenerationRequest,
    /// The provider first in line for it at submission (the `provider` column; `served_by` says who served it).
    pub provider: crate::domain::ProviderId,
    /// Calls per route, and over all routes.
    pub max_attempts: i32,
    pub max_calls: i32,
    pub status: JobStatus,
    pub moderation: Option<Moderation>,
    pub error: Option<(FailureCode, String)>,
    /// Seconds from now by which the job must have started.
    pub deadline_secs: Option<u32>,
    pub api_key_id: Option<uuid::Uuid>,
    /// What the owner's (and key's) budget reserved for it; 0 when no budget applies.
    pub reserved_usd_micros: i64,
    /// An edit's inputs (already stored, or URLs for the worker to fetch), recorded in the job's transaction.
    pub inputs: Vec<crate::db::job_inputs::JobInput>,
}

/// Which route served a job and what was changed to suit it.
#[derive(Debug, Clone, Default)]
pub struct Served {
    pub route: String,
    pub translations: Vec<String>,
}

/// What a job canceled by its deadline says (whether the worker or the reconciler cancels it).
const DEADLINE_MESSAGE: &str = "The job's deadline passed before it could start";

/// What a running job whose worker died says once its attempts are used up.
const LEASE_EXPIRED_MESSAGE: &str =
    "The worker running this job stopped and its attempts are used up";

/// How a job ended when it did not succeed.
#[derive(Debug, Clone)]
pub struct JobFailure {
    pub status: JobStatus,
    pub code: FailureCode,
    pub message: String,
    pub moderation: Option<Moderation>,
}

pub(crate) const JOB_COLUMNS: &str = "id, owner, batch_id, batch_index, correlation_id, status, provider, request, attempts, \
    max_attempts, worker_id, lease_until, error_code, error_message, moderation, provider_meta, generation_time_ms, \
    served_by, translations, provider_attempts, deadline_at, created_at, updated_at, started_at, finished_at, \
    api_key_id, cost_usd_micros, cost_basis, cost_estimated, reserved_usd_micros, max_calls";

pub(crate) fn lease_secs(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

/// Inserts one job inside the caller's transaction (`$tx`), returning its record. A macro because the
/// transaction's type differs per database.
macro_rules! insert_job {
    ($tx:expr, $sql:expr, $job:expr, $batch:expr) => {{
        let job: &$crate::db::jobs::NewJob = $job;
        let batch: Option<($crate::domain::BatchId, i32)> = $batch;
        let terminal = job.status.is_terminal();
        let (code, message) = job.error.clone().unzip();
        let record = sqlx::query_as::<_, $crate::db::jobs::JobRecord>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO jobs (id, owner, batch_id, batch_index, correlation_id, status, provider, request, \
                max_attempts, moderation, error_code, error_message, finished_at, deadline_at, api_key_id, \
                reserved_usd_micros, budget_settled, max_calls) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, CASE WHEN $13 THEN {now} END, {deadline}, \
                $15, $16, $13, $17) \
             RETURNING {columns}",
            now = $sql.now,
            deadline = $sql.now_plus("$14"),
            columns = $crate::db::jobs::JOB_COLUMNS,
        )))
        .bind(job.id)
        .bind(&job.owner)
        .bind(batch.map(|b| b.0))
        .bind(batch.map(|b| b.1))
        .bind(&job.correlation_id)
        .bind(job.status)
        .bind(job.provider.as_str())
        .bind(sqlx::types::Json(&job.request))
        .bind(job.max_attempts)
        .bind(job.moderation.as_ref().map(sqlx::types::Json))
        .bind(code)
        .bind(message)
        .bind(terminal)
        .bind(job.deadline_secs.map(f64::from))
        .bind(job.api_key_id)
        .bind(job.reserved_usd_micros)
        .bind(job.max_calls)
        .fetch_one(&mut *$tx)
        .await?;
        if !job.inputs.is_empty() {
            $crate::db::job_inputs::insert_all($crate::db::Conn::from(&mut *$tx), &job.inputs).await?;
        }
        record
    }};
}
pub(crate) use insert_job;

/// A job as its owner may see it; another owner's id looks exactly like one that does not exist.
pub async fn get_job(db: &Db, owner: &str, id: JobId) -> Result<Option<JobRecord>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, JobRecord>(sqlx::AssertSqlSafe(GET_JOB_SQL.as_str()))
            .bind(id)
            .bind(owner)
            .fetch_optional(pool)
            .await?
    });
    Ok(row)
}

/// `get_job`'s statement, built once: formatted per call, it was a string held by every read waiting for a
/// connection (10,000 event streams opening at once).
static GET_JOB_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND owner = $2")
});

/// A job read by the worker fleet, which acts for every owner.
pub async fn get_job_unscoped(db: &Db, id: JobId) -> Result<Option<JobRecord>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, JobRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// The owner's jobs, newest first, starting after the cursor `(created_at, id)`.
pub async fn list_jobs(
    db: &Db,
    owner: &str,
    after: Option<(DateTime<Utc>, JobId)>,
    limit: i64,
) -> Result<Vec<JobRecord>, DbError> {
    let (ts, id) = after.unzip();
    let rows = on_db!(db, |pool, sql| {
        let query = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE owner = $1 \
               AND ({ts} IS NULL OR created_at < {ts} OR (created_at = {ts} AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4",
            ts = sql.timestamp("$2"),
        );
        let ts_text = ts.map(|t| sql.format_timestamp(t));
        sqlx::query_as::<_, JobRecord>(sqlx::AssertSqlSafe(query))
            .bind(owner)
            .bind(ts_text)
            .bind(id)
            .bind(limit)
            .fetch_all(pool)
            .await?
    });
    Ok(rows)
}

pub async fn jobs_in_batch(
    db: &Db,
    owner: &str,
    batch: BatchId,
) -> Result<Vec<JobRecord>, DbError> {
    let rows = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, JobRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = $1 AND owner = $2 ORDER BY batch_index"
        )))
        .bind(batch)
        .bind(owner)
        .fetch_all(pool)
        .await?
    });
    Ok(rows)
}

/// Puts job `id` on disk, and every commit made before now with it, for a job recorded without a flush
/// ([`super::group_insert::Commit::Unflushed`]) whose client is about to hear of it. The job's row is rewritten as it
/// is (an UPDATE that changes nothing still writes WAL): a transaction that writes no WAL commits without a flush, and
/// the WAL is flushed in order, so this commit's flush takes the job's INSERT with it. SQLite: nothing to do.
pub async fn make_durable(db: &Db, id: JobId) -> Result<(), DbError> {
    if let Db::Postgres(pool) = db {
        sqlx::query("UPDATE jobs SET updated_at = updated_at WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Takes a job for this worker: a queued job, or a running one whose lease ran out (its worker died).
/// `None` means it is finished or another live worker holds it.
///
/// The claim's commit does not wait for the disk ([`super::Dialect::unflushed_commit`]): it is on the path from submit to
/// the provider call, and losing it costs nothing. A claim lost in a Postgres crash leaves the job as it was
/// (queued, or on its old lease), and the attempt count written beside the provider call, an ordinary commit that
/// would have flushed the claim with it, fails in the same crash, which drops that call (see the worker's
/// `route_run`).
pub async fn claim_job(
    db: &Db,
    id: JobId,
    worker_id: &str,
    lease: Duration,
) -> Result<Option<JobRecord>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, JobRecord>(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'running', worker_id = $2, lease_until = {lease}, \
                started_at = COALESCE(started_at, {now}), updated_at = {now} {unflushed} \
             WHERE id = $1 AND (status = 'queued' OR (status = 'running' AND lease_until < {now})) \
             RETURNING {JOB_COLUMNS}",
            lease = sql.now_plus("$3"),
            now = sql.now,
            unflushed = sql.unflushed_commit(),
        )))
        .bind(id)
        .bind(worker_id)
        .bind(lease_secs(lease))
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Keeps a lease alive; `false` means this worker no longer holds the job and must stop working on it.
pub async fn extend_lease(
    db: &Db,
    id: JobId,
    worker_id: &str,
    lease: Duration,
) -> Result<bool, DbError> {
    let affected = on_db!(db, |pool, sql| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET lease_until = {lease} WHERE id = $1 AND worker_id = $2 AND status = 'running'",
            lease = sql.now_plus("$3"),
        )))
        .bind(id)
        .bind(worker_id)
        .bind(lease_secs(lease))
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(affected == 1)
}

/// Counts one provider call (in total and per route) before it is made, so a crash mid-call still uses up an
/// attempt. `None` when the job is no longer this worker's.
pub async fn record_attempt(
    db: &Db,
    id: JobId,
    worker_id: &str,
    route: &str,
) -> Result<Option<RouteAttempt>, DbError> {
    let row: Option<(i32, i32)> = on_db!(db, |pool, sql| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET attempts = attempts + 1, provider_attempts = {incremented}, updated_at = {now} \
             WHERE id = $1 AND worker_id = $2 AND status = 'running' \
             RETURNING attempts, CAST(provider_attempts ->> $3 AS INTEGER)",
            incremented = sql.json_increment("provider_attempts", "$3"),
            now = sql.now,
        )))
        .bind(id)
        .bind(worker_id)
        .bind(route)
        .fetch_optional(pool)
        .await?
    });
    Ok(row.map(|(total, on_route)| RouteAttempt { total, on_route }))
}

/// Attempt counts after one more call: on the job, and on the route being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteAttempt {
    pub total: i32,
    pub on_route: i32,
}

/// The binds `complete_succeeded`'s job UPDATE takes first ($1 to $6), on either database.
macro_rules! bind_success {
    ($query:expr, $id:expr, $worker_id:expr, $meta:expr, $time_ms:expr, $served:expr) => {
        $query
            .bind($id)
            .bind($worker_id)
            .bind(Json($meta))
            .bind($time_ms)
            .bind(&$served.route)
            .bind(Json(&$served.translations))
    };
}

/// `complete_succeeded`'s statement on Postgres, built once (it runs for every job that succeeds). One statement,
/// so one round trip and its own transaction: the images are inserted and the intents deleted only if the job's
/// UPDATE matched (every part reads `done`).
static SUCCEED_AND_STORE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH prev AS (SELECT budget_settled FROM jobs WHERE id = $1), \
         done AS ( \
            UPDATE jobs SET status = 'succeeded', provider_meta = $3, generation_time_ms = $4, served_by = $5, \
                translations = $6, lease_until = NULL, finished_at = now(), updated_at = now(), \
                budget_settled = TRUE \
            WHERE id = $1 AND worker_id = $2 AND status = 'running' RETURNING {JOB_COLUMNS}), \
         stored AS ( \
            INSERT INTO images (id, job_id, owner, position, storage_key, content_type, size_bytes, sha256, width, \
                height, revised_prompt, seed) \
            SELECT p.id, done.id, done.owner, p.position, p.storage_key, p.content_type, p.size_bytes, p.sha256, \
                p.width, p.height, p.revised_prompt, p.seed \
            FROM done, UNNEST($7::uuid[], $8::int4[], $9::text[], $10::text[], $11::int8[], $12::text[], \
                $13::int4[], $14::int4[], $15::text[], $16::int8[]) \
                AS p(id, position, storage_key, content_type, size_bytes, sha256, width, height, revised_prompt, seed) \
            RETURNING {IMAGE_COLUMNS}), \
         unpended AS (DELETE FROM pending_objects WHERE job_id IN (SELECT id FROM done)) \
         SELECT done.*, (SELECT json_agg(json_build_array({IMAGE_COLUMNS}) ORDER BY position) FROM stored) \
            AS stored_images, \
            {CHARGES} AS parts_charges, \
            (SELECT NOT budget_settled FROM prev) AS settles_budget \
         FROM done",
        IMAGE_COLUMNS = super::images::IMAGE_COLUMNS,
        CHARGES = super::job_parts::charges_of_sql("done"),
    )
});

/// What a success wrote: the job with its images and charges, as its owner's next read would find it, and the
/// settlement of its budget, made by the same write (`None` only for a job whose budget was settled already).
#[derive(Debug)]
pub struct Succeeded {
    pub parts: JobParts,
    pub settlement: Option<Settlement>,
}

impl Succeeded {
    pub(crate) fn of(
        job: JobRecord,
        images: Vec<ImageRecord>,
        charges: Vec<Charge>,
        settles: bool,
    ) -> Self {
        let settlement = settles.then(|| Settlement {
            owner: job.owner.as_str().to_owned(),
            api_key_id: job.api_key_id,
            created_at: job.created_at,
            reserved_usd_micros: job.reserved_usd_micros,
            cost_usd_micros: job.cost_usd_micros,
        });
        let charges = if super::job_parts::has_charges(&job) {
            charges
        } else {
            Vec::new()
        };
        Self {
            parts: JobParts {
                job,
                images,
                charges,
            },
            settlement,
        }
    }
}

/// Marks the job succeeded, records its images and settles its budget in one transaction; `None` (and nothing
/// written) when the job was no longer this worker's, so the caller must delete the objects it stored.
pub async fn complete_succeeded(
    db: &Db,
    id: JobId,
    worker_id: &str,
    images: &[NewImage],
    provider_meta: &serde_json::Value,
    generation_time_ms: i64,
    served: &Served,
) -> Result<Option<Succeeded>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        // SQLite has no data-modifying CTEs: the same writes as a transaction of several statements.
        Db::Sqlite(pool) => {
            let sql = &super::SQLITE;
            let mut tx = pool.begin_with(sql.begin).await?;
            let settled: Option<bool> =
                sqlx::query_scalar("SELECT budget_settled FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let job = bind_success!(sqlx::query_as::<_, JobRecord>(sqlx::AssertSqlSafe(format!(
                "UPDATE jobs SET status = 'succeeded', provider_meta = $3, generation_time_ms = $4, served_by = $5, \
                    translations = $6, lease_until = NULL, finished_at = {now}, updated_at = {now}, \
                    budget_settled = TRUE \
                 WHERE id = $1 AND worker_id = $2 AND status = 'running' RETURNING {JOB_COLUMNS}",
                now = sql.now,
            ))), id, worker_id, provider_meta, generation_time_ms, served)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(job) = job else {
                tx.rollback().await?;
                return Ok(None);
            };
            let mut stored = Vec::with_capacity(images.len());
            for image in images {
                stored.push(super::images::insert_image!(tx, sql, &job.owner, id, image));
            }
            // In position order, as a read gives them.
            stored.sort_by_key(|i| i.position);
            // The objects are now reachable through their rows: no longer pending.
            sqlx::query("DELETE FROM pending_objects WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let charges: Vec<super::job_parts::ChargeTuple> =
                sqlx::query_as(super::costs::CHARGES_OF_JOB)
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
            tx.commit().await?;
            let charges = charges.into_iter().map(super::job_parts::charge).collect();
            return Ok(Some(Succeeded::of(
                job,
                stored,
                charges,
                settled == Some(false),
            )));
        }
    };
    let images: Vec<&NewImage> = images.iter().collect();
    let query = bind_success!(
        sqlx::query(sqlx::AssertSqlSafe(SUCCEED_AND_STORE.as_str())),
        id,
        worker_id,
        provider_meta,
        generation_time_ms,
        served
    );
    let row = super::images::bind_new_images(query, &images)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let job = <JobRecord as sqlx::FromRow<_>>::from_row(&row)?;
    let stored = super::job_parts::images_of(&row, "stored_images")?;
    let charges = super::job_parts::charges_in(&row, "parts_charges")?;
    let settles: Option<bool> = row.try_get("settles_budget")?;
    Ok(Some(Succeeded::of(
        job,
        stored,
        charges,
        settles == Some(true),
    )))
}

/// Ends a running job without images (failed or moderated), keeping its retry history. `None` when it was no
/// longer this worker's.
pub async fn complete_unsuccessful(
    db: &Db,
    id: JobId,
    worker_id: &str,
    failure: &JobFailure,
    history: &[AttemptRecord],
) -> Result<Option<JobRecord>, DbError> {
    let meta = serde_json::json!({ "retries": history });
    end_without_images(db, id, worker_id, failure, &meta).await
}

/// Cancels a job this worker claimed after its deadline passed, before any provider call. `None` when it was no
/// longer this worker's.
pub async fn cancel_claimed_past_deadline(
    db: &Db,
    id: JobId,
    worker_id: &str,
) -> Result<Option<JobRecord>, DbError> {
    let failure = JobFailure {
        status: JobStatus::Canceled,
        code: FailureCode::DeadlineExceeded,
        message: DEADLINE_MESSAGE.into(),
        moderation: None,
    };
    end_without_images(db, id, worker_id, &failure, &serde_json::json!({})).await
}

async fn end_without_images(
    db: &Db,
    id: JobId,
    worker_id: &str,
    failure: &JobFailure,
    provider_meta: &serde_json::Value,
) -> Result<Option<JobRecord>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, JobRecord>(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = $3, error_code = $4, error_message = $5, moderation = $6, provider_meta = $7, \
                lease_until = NULL, finished_at = {now}, updated_at = {now} \
             WHERE id = $1 AND worker_id = $2 AND status = 'running' RETURNING {JOB_COLUMNS}",
            now = sql.now,
        )))
        .bind(id)
        .bind(worker_id)
        .bind(failure.status)
        .bind(&failure.code)
        .bind(&failure.message)
        .bind(failure.moderation.as_ref().map(Json))
        .bind(Json(provider_meta))
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Gives a running job back to the queue (a worker stopping before it could finish); its attempts stay counted.
pub async fn release_job(db: &Db, id: JobId, worker_id: &str) -> Result<bool, DbError> {
    let affected = on_db!(db, |pool, sql| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_until = NULL, updated_at = {now} \
             WHERE id = $1 AND worker_id = $2 AND status = 'running'",
            now = sql.now,
        )))
        .bind(id)
        .bind(worker_id)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(affected == 1)
}

/// Undoes an accepted job that could not be queued (Redis down), as long as no worker has started it.
pub async fn delete_unstarted(db: &Db, id: JobId) -> Result<bool, DbError> {
    let affected = on_db!(db, |pool, sql| {
        sqlx::query("DELETE FROM jobs WHERE id = $1 AND status = 'queued' AND batch_id IS NULL")
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(affected == 1)
}

/// Records one job outside a batch: a single statement, so no transaction (one round trip instead of three).
pub async fn insert(db: &Db, job: &NewJob) -> Result<JobRecord, DbError> {
    on_db!(db, |pool, sql| {
        let mut conn = pool.acquire().await?;
        Ok(insert_job!(conn, sql, job, None))
    })
}

/// A new row, the one an Idempotency-Key already stands for, or nothing because the owner is at its limit.
#[derive(Debug)]
pub enum Inserted<T> {
    New(T),
    Existing(super::idempotency::Existing),
    /// MAX_ACTIVE_JOBS_PER_OWNER: this many of the owner's jobs are queued or running.
    OverActiveLimit {
        active: i64,
    },
}

/// Inside an inserting transaction: whether `owner` may add `adding` active jobs under `max` (`None`: no limit).
/// Postgres takes a transaction-scoped advisory lock on the owner first, so concurrent submissions from any number
/// of API processes count one after another and cannot overshoot; SQLite's `BEGIN IMMEDIATE` already serialises
/// writers. Over the limit it rolls back and returns from the caller: with the job or batch `key` already stands for
/// (a replay is never refused), else `OverActiveLimit`.
macro_rules! admit_or_return {
    ($tx:expr, $sql:expr, $owner:expr, $adding:expr, $max:expr, $key:expr) => {{
        let max: Option<i64> = $max;
        if let Some(max) = max {
            if !$sql.is_sqlite() {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 2231))")
                    .bind($owner)
                    .execute(&mut *$tx)
                    .await?;
            }
            let active: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE owner = $1 AND status IN ('queued', 'running')",
            )
            .bind($owner)
            .fetch_one(&mut *$tx)
            .await?;
            if active + $adding > max {
                let key: Option<&$crate::db::idempotency::KeyClaim<'_>> = $key;
                let replay = match key {
                    Some(k) => {
                        $crate::db::idempotency::find!($tx, $sql, k.owner, k.key, k.request_hash)
                    }
                    None => None,
                };
                $tx.rollback().await?;
                return Ok(match replay {
                    Some(existing) => $crate::db::jobs::Inserted::Existing(existing),
                    None => $crate::db::jobs::Inserted::OverActiveLimit { active },
                });
            }
        }
    }};
}
pub(crate) use admit_or_return;

/// Records one job, under its Idempotency-Key when it has one and within the owner's active-jobs limit (`max_active`),
/// in one transaction: a live key's job comes back untouched (no limit applies to a replay); over the limit nothing
/// is written.
pub async fn insert_admitted(
    db: &Db,
    job: &NewJob,
    key: Option<&super::idempotency::KeyClaim<'_>>,
    max_active: Option<i64>,
) -> Result<Inserted<JobRecord>, super::idempotency::KeyError> {
    let mut session = db.session().await?;
    insert_admitted_in(&mut session, job, key, max_active).await
}

/// [`insert_admitted`] on a connection the caller holds (a submission's, which read its key and budget on it).
pub async fn insert_admitted_in(
    session: &mut super::Session,
    job: &NewJob,
    key: Option<&super::idempotency::KeyClaim<'_>>,
    max_active: Option<i64>,
) -> Result<Inserted<JobRecord>, super::idempotency::KeyError> {
    super::on_session!(session, |conn, sql| {
        if max_active.is_none() && key.is_none() && job.inputs.is_empty() {
            // Nothing to lock, count or claim: the INSERT alone, one round trip instead of BEGIN, INSERT, COMMIT.
            let row = insert_job!(conn, sql, job, None);
            return Ok(Inserted::New(row));
        }
        let mut tx = sqlx::Connection::begin_with(conn, sql.begin).await?;
        admit_or_return!(tx, sql, job.owner.as_str(), 1, max_active, key);
        let row = insert_job!(tx, sql, job, None);
        let Some(key) = key else {
            tx.commit().await?;
            return Ok(Inserted::New(row));
        };
        let existing =
            super::idempotency::claim!(tx, sql, key, super::idempotency::Existing::Job(row.id));
        match existing {
            None => {
                tx.commit().await?;
                Ok(Inserted::New(row))
            }
            Some(existing) => {
                tx.rollback().await?;
                Ok(Inserted::Existing(existing))
            }
        }
    })
}

/// Cancels a job that has not finished. A running job's worker notices at once (the cancel event) or at its next
/// lease renewal, drops the provider call and removes anything it stored. `None`: no such job, or already finished.
pub async fn cancel(
    db: &Db,
    owner: &str,
    id: JobId,
    code: FailureCode,
    message: &str,
) -> Result<Option<JobRecord>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, JobRecord>(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'canceled', error_code = $3, error_message = $4, lease_until = NULL, \
                finished_at = {now}, updated_at = {now} \
             WHERE id = $1 AND owner = $2 AND status IN ('queued', 'running') RETURNING {JOB_COLUMNS}",
            now = sql.now,
        )))
        .bind(id)
        .bind(owner)
        .bind(code)
        .bind(message)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// The owner's jobs waiting or running (MAX_ACTIVE_JOBS_PER_OWNER).
pub async fn active_count(db: &Db, owner: &str) -> Result<i64, DbError> {
    let n = on_db!(db, |pool, sql| {
        sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE owner = $1 AND status IN ('queued', 'running')",
        )
        .bind(owner)
        .fetch_one(pool)
        .await?
    });
    Ok(n)
}

// The reconciler's transitions, run inside its pass (one transaction under an advisory lock, see `db::reconcile`).
// Each takes at most `batch` rows, skipping rows another pass has locked.

/// Queued jobs whose deadline passed never start: canceled. Their waiters learn it when they next read.
pub(crate) async fn cancel_queued_past_deadline(
    conn: Conn<'_>,
    batch: i64,
) -> Result<Vec<(JobId, Option<BatchId>)>, DbError> {
    let rows = on_conn!(conn, |c, sql| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'canceled', error_code = $2, error_message = $3, finished_at = {now}, \
                updated_at = {now} \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND deadline_at <= {now} AND attempts = 0 \
                          LIMIT $1 {skip}) \
             RETURNING id, batch_id",
            now = sql.now,
            skip = sql.skip_locked(),
        )))
        .bind(batch)
        .bind(FailureCode::DeadlineExceeded)
        .bind(DEADLINE_MESSAGE)
        .fetch_all(&mut *c)
        .await?
    });
    Ok(rows)
}

/// Running jobs whose lease expired (their worker died) with their budget of calls used up: failed. (One with
/// calls left is requeued: the next worker goes on with the routes that have attempts left.)
pub(crate) async fn fail_expired_out_of_attempts(
    conn: Conn<'_>,
    batch: i64,
) -> Result<Vec<(JobId, Option<BatchId>)>, DbError> {
    let rows = on_conn!(conn, |c, sql| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'failed', error_code = $2, error_message = $3, \
                lease_until = NULL, finished_at = {now}, updated_at = {now} \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_until < {now} \
                          AND attempts >= COALESCE(max_calls, max_attempts) LIMIT $1 {skip}) \
             RETURNING id, batch_id",
            now = sql.now,
            skip = sql.skip_locked(),
        )))
        .bind(batch)
        .bind(FailureCode::ProviderError)
        .bind(LEASE_EXPIRED_MESSAGE)
        .fetch_all(&mut *c)
        .await?
    });
    Ok(rows)
}

/// Running jobs whose lease expired: back to queued, to be pushed again. Returns (id, correlation id).
pub(crate) async fn requeue_expired_leases(
    conn: Conn<'_>,
    batch: i64,
) -> Result<Vec<(JobId, String)>, DbError> {
    let rows = on_conn!(conn, |c, sql| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_until = NULL, updated_at = {now} \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_until < {now} LIMIT $1 {skip}) \
             RETURNING id, correlation_id",
            now = sql.now,
            skip = sql.skip_locked(),
        )))
        .bind(batch)
        .fetch_all(&mut *c)
        .await?
    });
    Ok(rows)
}

/// How many jobs are queued.
pub(crate) async fn queued_count(conn: Conn<'_>) -> Result<i64, DbError> {
    let n = on_conn!(conn, |c, sql| {
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'queued'")
            .fetch_one(&mut *c)
            .await?
    });
    Ok(n)
}

/// Up to `limit` queued jobs nobody touched for `untouched_for`, oldest first, marked touched now (so the next
/// pass does not pick them again at once): to be pushed again. Returns (id, correlation id).
pub(crate) async fn touch_stale_queued(
    conn: Conn<'_>,
    untouched_for: Duration,
    limit: i64,
) -> Result<Vec<(JobId, String)>, DbError> {
    let rows = on_conn!(conn, |c, sql| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET updated_at = {now} \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND updated_at < {before} \
                          ORDER BY updated_at LIMIT $2 {skip}) \
             RETURNING id, correlation_id",
            now = sql.now,
            before = sql.now_minus("$1"),
            skip = sql.skip_locked(),
        )))
        .bind(untouched_for.as_secs_f64())
        .bind(limit)
        .fetch_all(&mut *c)
        .await?
    });
    Ok(rows)
}

/// Every running job back to queued (a single process restarting: their worker was this process).
pub(crate) async fn requeue_all_running(conn: Conn<'_>) -> Result<(), DbError> {
    on_conn!(conn, |c, sql| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_until = NULL, updated_at = {now} \
             WHERE status = 'running'",
            now = sql.now,
        )))
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// The oldest `limit` queued jobs, (id, correlation id).
pub(crate) async fn oldest_queued(
    conn: Conn<'_>,
    limit: i64,
) -> Result<Vec<(JobId, String)>, DbError> {
    let rows = on_conn!(conn, |c, sql| {
        sqlx::query_as(
            "SELECT id, correlation_id FROM jobs WHERE status = 'queued' ORDER BY created_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *c)
        .await?
    });
    Ok(rows)
}
