//! `job_inputs`: the images and mask an edit job starts from. Written in the job's own transaction (so a job and its
//! inputs exist together or not at all), each naming its stored object (`storage_key`, written before the row) or
//! the https URL a worker is to fetch; the first worker to fetch one stores the bytes and sets `storage_key` and
//! the facts once (`record_fetched`), so every retry or failover sends the same bytes. Rows go with their job (ON DELETE
//! CASCADE); retention deletes the objects they name (`db::retention::expired_jobs` reads their keys with the
//! images').

use super::{Conn, Db, DbError, on_conn, on_db};
use crate::domain::JobId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRole {
    Image,
    Mask,
}

impl InputRole {
    pub fn as_str(self) -> &'static str {
        match self {
            InputRole::Image => "image",
            InputRole::Mask => "mask",
        }
    }
}

/// One input of an edit job, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInput {
    pub job_id: JobId,
    pub owner: String,
    pub role: InputRole,
    /// 0.. in the order given; the mask is position 0.
    pub position: i32,
    /// The stored object; `None` until a worker has fetched `source_url`.
    pub storage_key: Option<String>,
    /// Where a URL input came from (https, checked by `net_guard` at submission and again at fetch).
    pub source_url: Option<String>,
    /// The service's own image it was copied from, when named by id.
    pub source_image: Option<uuid::Uuid>,
    pub content_type: Option<String>,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
}

#[derive(sqlx::FromRow)]
struct Row {
    job_id: JobId,
    owner: String,
    role: String,
    position: i32,
    storage_key: Option<String>,
    source_url: Option<String>,
    source_image: Option<uuid::Uuid>,
    content_type: Option<String>,
    size_bytes: Option<i64>,
    sha256: Option<String>,
    width: Option<i32>,
    height: Option<i32>,
}

impl TryFrom<Row> for JobInput {
    type Error = DbError;
    fn try_from(r: Row) -> Result<Self, DbError> {
        let role = match r.role.as_str() {
            "image" => InputRole::Image,
            "mask" => InputRole::Mask,
            other => return Err(DbError::Corrupt(format!("job input role '{other}'"))),
        };
        Ok(JobInput {
            job_id: r.job_id,
            owner: r.owner,
            role,
            position: r.position,
            storage_key: r.storage_key,
            source_url: r.source_url,
            source_image: r.source_image,
            content_type: r.content_type,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            width: r.width,
            height: r.height,
        })
    }
}

const COLUMNS: &str = "job_id, owner, role, position, storage_key, source_url, source_image, content_type, \
    size_bytes, sha256, width, height";

/// Records `inputs` inside the transaction that inserts their job.
pub(crate) async fn insert_all(mut conn: Conn<'_>, inputs: &[JobInput]) -> Result<(), DbError> {
    for input in inputs {
        on_conn!(&mut conn, |c, sql| {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO job_inputs ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            )))
            .bind(input.job_id)
            .bind(&input.owner)
            .bind(input.role.as_str())
            .bind(input.position)
            .bind(&input.storage_key)
            .bind(&input.source_url)
            .bind(input.source_image)
            .bind(&input.content_type)
            .bind(input.size_bytes)
            .bind(&input.sha256)
            .bind(input.width)
            .bind(input.height)
            .execute(&mut **c)
            .await?;
        });
    }
    Ok(())
}

/// A job's inputs: the images by position, then the mask.
pub async fn load(db: &Db, job: JobId) -> Result<Vec<JobInput>, DbError> {
    let rows = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM job_inputs WHERE job_id = $1 \
             ORDER BY CASE role WHEN 'image' THEN 0 ELSE 1 END, position"
        )))
        .bind(job)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter().map(JobInput::try_from).collect()
}

/// What a worker found at an input's `source_url`, stored under `storage_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedInput {
    pub storage_key: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub width: i32,
    pub height: i32,
}

/// Records a fetched URL input on its row, only if no other attempt recorded one first (`storage_key IS NULL`) and
/// the job is still running under `worker_id`, so two racing fetches settle on one object and a worker that lost
/// the job never names an object the orphan sweep may be deleting. `false`: the caller deletes its own object and
/// reads the row again.
pub async fn record_fetched(
    db: &Db,
    job: JobId,
    role: InputRole,
    position: i32,
    worker_id: &str,
    fetched: &FetchedInput,
) -> Result<bool, DbError> {
    let changed = on_db!(db, |pool, sql| {
        sqlx::query(
            "UPDATE job_inputs SET storage_key = $5, content_type = $6, size_bytes = $7, sha256 = $8, \
                width = $9, height = $10 \
             WHERE job_id = $1 AND role = $2 AND position = $3 AND storage_key IS NULL \
               AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = $1 AND j.worker_id = $4 AND j.status = 'running')",
        )
        .bind(job)
        .bind(role.as_str())
        .bind(position)
        .bind(worker_id)
        .bind(&fetched.storage_key)
        .bind(&fetched.content_type)
        .bind(fetched.size_bytes)
        .bind(&fetched.sha256)
        .bind(fetched.width)
        .bind(fetched.height)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(changed == 1)
}
