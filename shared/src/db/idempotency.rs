//! `idempotency_keys`: claimed in the same transaction that records the job (or batch), so concurrent requests
//! with one key create one job: the second waits on the unique key, then finds the first one's row.

use super::DbError;
use crate::domain::{BatchId, JobId};
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

/// Deletes up to `batch` expired keys (run by the reconciler's pass): they answer nothing any more (a new claim
/// overwrites them), so they would only take space.
pub(crate) async fn purge_expired(conn: super::Conn<'_>, batch: i64) -> Result<u64, DbError> {
    let removed = super::on_conn!(conn, |c, sql| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM idempotency_keys WHERE (owner, key) IN \
             (SELECT owner, key FROM idempotency_keys WHERE expires_at <= {now} LIMIT $1)",
            now = sql.now,
        )))
        .bind(batch)
        .execute(&mut *c)
        .await?
        .rows_affected()
    });
    Ok(removed)
}

/// What `owner`'s `key` already stands for, if it is live: checked before anything is spent on a request, so a replay
/// costs no quota and is never refused by a limit. The same key with another request is `Err(Mismatch)`.
pub async fn lookup(
    db: &super::Db,
    owner: &str,
    key: &str,
    request_hash: &str,
) -> Result<Option<Existing>, KeyError> {
    lookup_in(&mut db.session().await?, owner, key, request_hash).await
}

/// [`lookup`] on a connection the caller holds (a submission's).
pub async fn lookup_in(
    session: &mut super::Session,
    owner: &str,
    key: &str,
    request_hash: &str,
) -> Result<Option<Existing>, KeyError> {
    super::on_session!(session, |conn, sql| Ok(find!(
        conn,
        sql,
        owner,
        key,
        request_hash
    )))
}

/// A live key's target inside a transaction (a macro: the connection's type differs per database); evaluates to
/// `Option<Existing>` and returns `Err(KeyError::Mismatch)` from the caller for another request.
macro_rules! find {
    ($conn:expr, $sql:expr, $owner:expr, $key:expr, $hash:expr) => {{
        let row: Option<(
            String,
            Option<$crate::domain::JobId>,
            Option<$crate::domain::BatchId>,
        )> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT request_hash, job_id, batch_id FROM idempotency_keys \
                 WHERE owner = $1 AND key = $2 AND expires_at > {now}",
            now = $sql.now,
        )))
        .bind($owner)
        .bind($key)
        .fetch_optional(&mut *$conn)
        .await?;
        match row {
            None => None,
            Some((hash, _, _)) if hash != $hash => {
                return Err($crate::db::idempotency::KeyError::Mismatch);
            }
            Some((_, Some(j), _)) => Some($crate::db::idempotency::Existing::Job(j)),
            Some((_, None, Some(b))) => Some($crate::db::idempotency::Existing::Batch(b)),
            Some((_, None, None)) => None,
        }
    }};
}
pub(crate) use find;

/// A macro because the transaction's type differs per database; evaluates to `Option<Existing>` and returns
/// `Err(KeyError)` from the caller on a mismatch.
macro_rules! claim {
    ($tx:expr, $sql:expr, $claim:expr, $target:expr) => {{
        let claim: &$crate::db::idempotency::KeyClaim<'_> = $claim;
        let (job, batch) = match $target {
            $crate::db::idempotency::Existing::Job(j) => (Some(j), None),
            $crate::db::idempotency::Existing::Batch(b) => (None, Some(b)),
        };
        let inserted: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO idempotency_keys (owner, key, request_hash, job_id, batch_id, expires_at) \
             VALUES ($1, $2, $3, $4, $5, {expires}) \
             ON CONFLICT (owner, key) DO UPDATE SET request_hash = excluded.request_hash, \
                 job_id = excluded.job_id, batch_id = excluded.batch_id, created_at = {now}, \
                 expires_at = excluded.expires_at \
               WHERE idempotency_keys.expires_at <= {now} \
             RETURNING key",
            expires = $sql.now_plus("$6"),
            now = $sql.now,
        )))
        .bind(claim.owner)
        .bind(claim.key)
        .bind(claim.request_hash)
        .bind(job)
        .bind(batch)
        .bind(claim.ttl.as_secs_f64())
        .fetch_optional(&mut *$tx)
        .await?;
        if inserted.is_some() {
            None
        } else {
            let (hash, job, batch): (
                String,
                Option<$crate::domain::JobId>,
                Option<$crate::domain::BatchId>,
            ) = sqlx::query_as(
                "SELECT request_hash, job_id, batch_id FROM idempotency_keys WHERE owner = $1 AND key = $2",
            )
            .bind(claim.owner)
            .bind(claim.key)
            .fetch_one(&mut *$tx)
            .await?;
            if hash != claim.request_hash {
                return Err($crate::db::idempotency::KeyError::Mismatch);
            }
            match (job, batch) {
                (Some(j), _) => Some($crate::db::idempotency::Existing::Job(j)),
                (None, Some(b)) => Some($crate::db::idempotency::Existing::Batch(b)),
                (None, None) => None,
            }
        }
    }};
}
pub(crate) use claim;
