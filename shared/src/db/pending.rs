//! `pending_objects`: an intent log for storage writes, so a worker that dies between writing an image and recording
//! its job's success leaves no unreachable object behind.

use super::DbError;
use super::{Db, on_db};
use crate::domain::JobId;

/// Recorded before the object is written.
pub async fn record(db: &Db, key: &str, job: JobId, worker_id: &str) -> Result<(), DbError> {
    on_db!(db, |pool, sql| {
        sqlx::query(
            "INSERT INTO pending_objects (storage_key, job_id, worker_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(key)
        .bind(job)
        .bind(worker_id)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// [`record`] for several objects of one job, in one statement.
pub async fn record_all(
    db: &Db,
    keys: &[String],
    job: JobId,
    worker_id: &str,
) -> Result<(), DbError> {
    match db {
        Db::Postgres(pool) => {
            sqlx::query(
                "INSERT INTO pending_objects (storage_key, job_id, worker_id) \
                 SELECT key, $2, $3 FROM UNNEST($1::text[]) AS key ON CONFLICT DO NOTHING",
            )
            .bind(keys)
            .bind(job)
            .bind(worker_id)
            .execute(pool)
            .await?;
        }
        // Standalone: one process, no round trips to save.
        Db::Sqlite(_) => {
            for key in keys {
                record(db, key, job, worker_id).await?;
            }
        }
    }
    Ok(())
}

/// Forgotten once the object is deleted again (a failed attempt, a discarded late result).
pub async fn forget(db: &Db, keys: &[String]) -> Result<(), DbError> {
    if keys.is_empty() {
        return Ok(());
    }
    match db {
        Db::Postgres(pool) => {
            sqlx::query("DELETE FROM pending_objects WHERE storage_key = ANY($1)")
                .bind(keys)
                .execute(pool)
                .await?;
        }
        Db::Sqlite(pool) => {
            let sql = format!(
                "DELETE FROM pending_objects WHERE {}",
                super::SQLITE.in_list("storage_key", 1, keys.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for key in keys {
                query = query.bind(key);
            }
            query.execute(pool).await?;
        }
    }
    Ok(())
}

/// The writer name the API records its edit inputs under (between writing them and inserting their job).
pub const API_WRITER: &str = "api:edit-inputs";

/// How long an API intent may wait for its job's insert before its object counts as abandoned (a crashed request).
const API_GRACE_SECS: &str = "600.0";

/// Objects whose writer can no longer record them: the job is no longer running under that worker, or (written by
/// the API) no job was inserted within the grace period. An object a job's `job_inputs` names is never an orphan.
pub async fn orphans(db: &Db, limit: i64) -> Result<Vec<String>, DbError> {
    let rows = on_db!(db, |pool, sql| {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT p.storage_key FROM pending_objects p LEFT JOIN jobs j ON j.id = p.job_id \
             WHERE NOT EXISTS (SELECT 1 FROM job_inputs i WHERE i.storage_key = p.storage_key) \
             AND ((p.worker_id = $2 AND j.id IS NULL AND p.created_at < {cutoff}) \
               OR (p.worker_id <> $2 AND (j.id IS NULL OR j.status <> 'running' OR j.worker_id {distinct} p.worker_id))) \
             ORDER BY p.created_at LIMIT $1",
            distinct = sql.distinct,
            cutoff = sql.now_minus(API_GRACE_SECS),
        )))
        .bind(limit)
        .bind(API_WRITER)
        .fetch_all(pool)
        .await?
    });
    Ok(rows)
}
