//! `idempotency_keys`: claimed in the same transaction that records the job (or batch), so concurrent requests
//! with one key create one job: the second waits on the unique key, then finds the first one's row.

use super::DbError;
use crate::domain::{BatchId, JobId};
use sqlx::{Postgres, Transaction};
use std::time::Duration;

/// What a key already stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    Job(JobId),
    Batch(BatchId),
}

#[derive(Debug, Clone)]
pub struct KeyClaim<'a> {
    pub owner: &'a str,
    pub key: &'a str,
    pub request_hash: &'a str,
    pub ttl: Duration,
}

/// Either this request owns the key now (`Ok(None)`), or the key already names a job or batch made from the same
/// request (`Ok(Some)`); the same key with another request is `Err(Mismatch)`.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("this Idempotency-Key was used with a different request")]
    Mismatch,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for KeyError {
    fn from(e: sqlx::Error) -> Self {
        KeyError::Db(e.into())
    }
}

pub async fn claim<'c>(
    tx: &mut Transaction<'c, Postgres>,
    claim: &KeyClaim<'_>,
    target: Existing,
) -> Result<Option<Existing>, KeyError> {
    let (job, batch) = match target {
        Existing::Job(j) => (Some(j), None),
        Existing::Batch(b) => (None, Some(b)),
    };
    // An expired key is taken over; a live one is left alone.
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (owner, key, request_hash, job_id, batch_id, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) \
         ON CONFLICT (owner, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, job_id = EXCLUDED.job_id, \
             batch_id = EXCLUDED.batch_id, created_at = now(), expires_at = EXCLUDED.expires_at \
           WHERE idempotency_keys.expires_at <= now() \
         RETURNING key",
    )
    .bind(claim.owner)
    .bind(claim.key)
    .bind(claim.request_hash)
    .bind(job)
    .bind(batch)
    .bind(claim.ttl.as_secs_f64())
    .fetch_optional(&mut **tx)
    .await?;
    if inserted.is_some() {
        return Ok(None);
    }
    let (hash, job, batch): (String, Option<JobId>, Option<BatchId>) = sqlx::query_as(
        "SELECT request_hash, job_id, batch_id FROM idempotency_keys WHERE owner = $1 AND key = $2",
    )
    .bind(claim.owner)
    .bind(claim.key)
    .fetch_one(&mut **tx)
    .await?;
    if hash != claim.request_hash {
        return Err(KeyError::Mismatch);
    }
    Ok(match (job, batch) {
        (Some(j), _) => Some(Existing::Job(j)),
        (None, Some(b)) => Some(Existing::Batch(b)),
        (None, None) => None,
    })
}
