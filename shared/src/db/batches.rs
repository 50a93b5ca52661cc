//! `batches` table: a batch and all its jobs are written in one transaction, so a batch is never half-recorded.

use super::DbError;
use super::idempotency::{Existing, KeyClaim, KeyError, claim};
use super::jobs::{Inserted, JobRecord, NewJob, insert_job};
use super::{Db, on_db};
use crate::domain::BatchId;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRecord {
    pub id: BatchId,
    pub owner: crate::domain::OwnerId,
    pub correlation_id: crate::domain::CorrelationId,
    pub item_count: i32,
    pub created_at: DateTime<Utc>,
}

/// Records a batch with its jobs, or nothing at all.
pub async fn insert_batch(
    db: &Db,
    id: BatchId,
    owner: &str,
    correlation_id: &str,
    jobs: &[NewJob],
) -> Result<(BatchRecord, Vec<JobRecord>), DbError> {
    match insert_batch_with_key(db, id, owner, correlation_id, jobs, None, None).await {
        Ok(Inserted::New(rows)) => Ok(rows),
        Ok(Inserted::Existing(_) | Inserted::OverActiveLimit { .. }) => Err(DbError::Corrupt(
            "a batch without a key or a limit is always recorded".into(),
        )),
        Err(KeyError::Db(e)) => Err(e),
        Err(KeyError::Mismatch) => Err(DbError::Corrupt(
            "a batch without a key cannot mismatch".into(),
        )),
    }
}

/// Records a batch with its jobs (and its Idempotency-Key, if any), or nothing at all.
pub async fn insert_batch_with_key(
    db: &Db,
    id: BatchId,
    owner: &str,
    correlation_id: &str,
    jobs: &[NewJob],
    key: Option<&KeyClaim<'_>>,
    max_active: Option<i64>,
) -> Result<Inserted<(BatchRecord, Vec<JobRecord>)>, KeyError> {
    let item_count =
        i32::try_from(jobs.len()).map_err(|_| DbError::Corrupt("batch too large".into()))?;
    // Blocked items are recorded finished; only the queued ones count against the limit.
    let adding =
        i64::try_from(jobs.iter().filter(|j| !j.status.is_terminal()).count()).unwrap_or(i64::MAX);
    on_db!(db, |pool, sql| {
        let mut tx = pool.begin_with(sql.begin).await?;
        super::jobs::admit_or_return!(tx, sql, owner, adding, max_active, key);
        let batch = sqlx::query_as::<_, BatchRecord>(
            "INSERT INTO batches (id, owner, correlation_id, item_count) VALUES ($1, $2, $3, $4) \
             RETURNING id, owner, correlation_id, item_count, created_at",
        )
        .bind(id)
        .bind(owner)
        .bind(correlation_id)
        .bind(item_count)
        .fetch_one(&mut *tx)
        .await?;
        let mut rows = Vec::with_capacity(jobs.len());
        for (index, job) in (0i32..).zip(jobs) {
            rows.push(insert_job!(tx, sql, job, Some((id, index))));
        }
        if let Some(key) = key
            && let Some(existing) = claim!(tx, sql, key, Existing::Batch(id))
        {
            tx.rollback().await?;
            return Ok(Inserted::Existing(existing));
        }
        tx.commit().await?;
        Ok(Inserted::New((batch, rows)))
    })
}

pub async fn get_batch(db: &Db, owner: &str, id: BatchId) -> Result<Option<BatchRecord>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, BatchRecord>(
            "SELECT id, owner, correlation_id, item_count, created_at FROM batches WHERE id = $1 AND owner = $2",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Undoes a batch that could not be fully queued; its jobs go with it.
pub async fn delete_batch(db: &Db, id: BatchId) -> Result<(), DbError> {
    on_db!(db, |pool, sql| {
        sqlx::query("DELETE FROM batches WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}
