//! A job with everything its view shows (its images once it succeeded, its charges once it cost something), read in
//! one statement on Postgres. Wait mode's answer and `GET /api/v1/jobs/{id}` read this instead of the job, then its
//! images, then its charges: one round trip where there were three (issue 19).

use super::images::ImageRecord;
use super::jobs::{JOB_COLUMNS, JobRecord};
use super::{Db, DbError};
use crate::cost::{Charge, CostBasis};
use crate::domain::{JobId, JobStatus};
use sqlx::Row;
use sqlx::types::Json;

/// A job, its images (empty unless it succeeded) in position order, and its charges in attempt order (empty when it
/// cost nothing).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JobParts {
    pub job: JobRecord,
    pub images: Vec<ImageRecord>,
    pub charges: Vec<Charge>,
}

/// Whether a job's charges are worth reading: it cost something, or was priced at all.
pub fn has_charges(job: &JobRecord) -> bool {
    job.cost_usd_micros > 0 || job.cost_basis != "none"
}

/// A charge row: attempt, provider, model, usd_micros, basis, estimated, images.
pub(crate) type ChargeTuple = (i32, String, String, i64, String, bool, i32);

pub(crate) fn charge(
    (attempt, provider, model, usd_micros, basis, estimated, images): ChargeTuple,
) -> Charge {
    Charge {
        attempt,
        route: format!("{provider}:{model}"),
        usd_micros,
        basis: CostBasis::parse(&basis),
        estimated,
        images,
    }
}

/// The statement of `get_job_parts`, built once (formatted per call it was a 1 KiB string held by every read queued
/// for a connection). The subqueries name their own tables' columns; the job's come from `jobs j`. Each part is read
/// only when the job's row says there is something to read. The images are found by job alone (the job is
/// owner-scoped and its images are its owner's): with an owner condition too, a planner without statistics (a young
/// table) combined the owner's index, every picture the owner has, with the job's (EXPLAIN: 0.80 ms against 0.23).
static JOB_PARTS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {JOB_COLUMNS}, \
            CASE WHEN j.status = 'succeeded' THEN ( \
                SELECT json_agg(json_build_array({IMAGE_COLUMNS}) ORDER BY position) \
                FROM images WHERE images.job_id = j.id) END AS parts_images, \
            {CHARGES} AS parts_charges \
         FROM jobs j WHERE j.id = $1 AND j.owner = $2",
        IMAGE_COLUMNS = super::images::IMAGE_COLUMNS,
        CHARGES = charges_of_sql("j"),
    )
});

/// The charges of the job row `job` as a JSON array of [`ChargeTuple`]s in attempt order, read only when the row
/// says it cost something (NULL otherwise); the success statement returns the same (`jobs::complete_succeeded`).
pub(crate) fn charges_of_sql(job: &str) -> String {
    format!(
        "CASE WHEN {job}.cost_usd_micros > 0 OR {job}.cost_basis <> 'none' THEN ( \
            SELECT json_agg(json_build_array(c.attempt, c.provider, c.model, c.usd_micros, c.basis, \
                c.estimated, c.images) ORDER BY c.attempt) \
            FROM charges c WHERE c.job_id = {job}.id) END"
    )
}

/// The charges a row carries in `column` (see [`charges_of_sql`]).
pub(crate) fn charges_in(
    row: &sqlx::postgres::PgRow,
    column: &str,
) -> Result<Vec<Charge>, DbError> {
    let charges: Option<Json<Vec<ChargeTuple>>> = row.try_get(column)?;
    Ok(charges
        .map(|Json(rows)| rows.into_iter().map(charge).collect())
        .unwrap_or_default())
}

/// The job as its owner may see it, with its images and charges; `None` for another owner's id or none at all.
pub async fn get_job_parts(db: &Db, owner: &str, id: JobId) -> Result<Option<JobParts>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        // The embedded database is local: three reads cost no network, and SQLite's JSON differs.
        Db::Sqlite(_) => return read_apart(db, owner, id).await,
    };
    let row = sqlx::query(sqlx::AssertSqlSafe(JOB_PARTS_SQL.as_str()))
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let job = <JobRecord as sqlx::FromRow<_>>::from_row(&row)?;
    let images = images_of(&row, "parts_images")?;
    let charges = charges_in(&row, "parts_charges")?;
    Ok(Some(JobParts {
        job,
        images,
        charges,
    }))
}

/// The images a row carries in `column`: a JSON array of arrays of `IMAGE_COLUMNS` (NULL: none).
pub(crate) fn images_of(
    row: &sqlx::postgres::PgRow,
    column: &str,
) -> Result<Vec<ImageRecord>, DbError> {
    let images: Option<Json<Vec<ImageRecord>>> = row.try_get(column)?;
    Ok(images.map(|Json(images)| images).unwrap_or_default())
}

/// The same parts read one by one.
async fn read_apart(db: &Db, owner: &str, id: JobId) -> Result<Option<JobParts>, DbError> {
    let Some(job) = super::jobs::get_job(db, owner, id).await? else {
        return Ok(None);
    };
    let images = if job.status == JobStatus::Succeeded {
        super::images::images_for_jobs(db, owner, &[id]).await?
    } else {
        Vec::new()
    };
    let charges = if has_charges(&job) {
        super::costs::charges_of(db, id).await?
    } else {
        Vec::new()
    };
    Ok(Some(JobParts {
        job,
        images,
        charges,
    }))
}
