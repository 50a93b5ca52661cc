//! IMAGE_RETENTION_DAYS: finished jobs older than that go away with their images, objects first and rows after,
//! so an object never outlives its row: a failed object delete keeps the row, and the next pass tries again. One pass runs at a time across the fleet (a Postgres advisory lock held on its own
//! connection; SQLite has a single process).

use super::{Db, DbError, on_db};
use crate::domain::JobId;
use sqlx::pool::PoolConnection;
use std::time::Duration;

/// Any fixed number works; it only has to be the same across the fleet, and differ from the reconciler's.
const LOCK_KEY: i64 = 0x1_6e_67_65_6f;

/// Held while a pass runs; released by [`RetentionLock::release`] (or, if dropped, by closing its connection).
pub struct RetentionLock {
    conn: Option<PoolConnection<sqlx::Postgres>>,
}

impl RetentionLock {
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(LOCK_KEY)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                // A session lock must never go back to the pool: closing the connection releases it.
                conn.close_on_drop();
            }
        }
    }
}

impl Drop for RetentionLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// Takes the fleet-wide retention lock, or `None` when another process holds it.
pub async fn try_lock(db: &Db) -> Result<Option<RetentionLock>, DbError> {
    match db {
        Db::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut *conn)
                .await?;
            Ok(locked.then_some(RetentionLock { conn: Some(conn) }))
        }
        Db::Sqlite(_) => Ok(Some(RetentionLock { conn: None })),
    }
}

/// Finished jobs older than `age`, oldest first, with the storage keys of their images and of an edit's stored inputs.
pub async fn expired_jobs(
    db: &Db,
    age: Duration,
    limit: i64,
) -> Result<Vec<(JobId, Vec<String>)>, DbError> {
    let rows: Vec<(JobId, Option<String>)> = on_db!(db, |pool, sql| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT j.id, i.storage_key FROM \
               (SELECT id, finished_at FROM jobs \
                WHERE status IN ('succeeded', 'failed', 'moderated', 'canceled') AND finished_at < {cutoff} \
                ORDER BY finished_at LIMIT $2) j \
             LEFT JOIN (SELECT job_id, storage_key FROM images \
                        UNION ALL SELECT job_id, storage_key FROM job_inputs WHERE storage_key IS NOT NULL) i \
               ON i.job_id = j.id ORDER BY j.finished_at, j.id",
            cutoff = sql.now_minus("$1"),
        )))
        .bind(age.as_secs_f64())
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    let mut jobs: Vec<(JobId, Vec<String>)> = Vec::new();
    for (job, key) in rows {
        match jobs.last_mut() {
            Some((last, keys)) if *last == job => keys.extend(key),
            _ => jobs.push((job, key.into_iter().collect())),
        }
    }
    Ok(jobs)
}

/// Deletes jobs (their image rows, idempotency keys and webhook deliveries go with them) and batches left empty. Intent-log rows stay:
/// the reconciler's orphan sweep deletes any object they name whose job is gone.
pub async fn delete_jobs(db: &Db, jobs: &[JobId]) -> Result<u64, DbError> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let deleted = match db {
        Db::Postgres(pool) => {
            let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.0).collect();
            let mut tx = pool.begin().await?;
            let n = sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM webhook_deliveries WHERE job_id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "DELETE FROM batches b WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id)",
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            n
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_with(super::SQLITE.begin).await?;
            let list = super::SQLITE.in_list("id", 1, jobs.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM jobs WHERE {list}"
            )));
            for job in jobs {
                query = query.bind(*job);
            }
            let n = query.execute(&mut *tx).await?.rows_affected();
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM webhook_deliveries WHERE {}",
                super::SQLITE.in_list("job_id", 1, jobs.len())
            )));
            for job in jobs {
                query = query.bind(*job);
            }
            query.execute(&mut *tx).await?;
            sqlx::query(
                "DELETE FROM batches WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = batches.id)",
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            n
        }
    };
    Ok(deleted)
}
