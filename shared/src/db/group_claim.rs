//! Claims gathered (issue 19, item 1, the worker's side): the jobs a worker takes at the same moment (apalis hands
//! them over a batch at a time) are claimed in one UPDATE and one commit instead of one each. Each caller still gets
//! its own job, or `None` when it is not this worker's to run, exactly as [`super::jobs::claim_job`] answers.
//!
//! Adaptive, without a timer ([`crate::gather`]): a lone claim runs at once. Postgres only; SQLite keeps the
//! single claim. A failed flush (a deadlock with another worker's flush over a twice-delivered job, a lost
//! connection) claims its jobs again one by one, so each caller sees its own claim's answer or error.

use super::jobs::{JOB_COLUMNS, JobRecord, claim_job, lease_secs};
use super::{Db, DbError, POSTGRES};
use crate::domain::JobId;
use crate::gather::Gather;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// The most jobs one flush claims.
const MAX_CLAIMS: usize = 128;
/// Flushes running at once.
const FLUSH_SLOTS: usize = 2;

/// The same claim as `claim_job`, for every id at once: queued, or running on a lease that ran out.
static CLAIM_MANY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = 'running', worker_id = $2, lease_until = {lease}, \
            started_at = COALESCE(started_at, now()), updated_at = now() {unflushed} \
         WHERE id = ANY($1) AND (status = 'queued' OR (status = 'running' AND lease_until < now())) \
         RETURNING {JOB_COLUMNS}",
        lease = POSTGRES.now_plus("$3"),
        unflushed = POSTGRES.unflushed_commit(),
    )
});

/// One worker process's gathered claims (its id and lease are every claim's).
pub struct GroupClaims {
    gather: Arc<Gather<JobId, Option<Option<JobRecord>>>>,
    worker_id: String,
    lease: Duration,
}

impl GroupClaims {
    pub fn new(pool: PgPool, worker_id: String, lease: Duration) -> Self {
        let flush_worker = worker_id.clone();
        let gather = Gather::new(
            "job_claim",
            MAX_CLAIMS,
            FLUSH_SLOTS,
            Box::new(move |ids| Box::pin(flush(pool.clone(), flush_worker.clone(), lease, ids))),
        );
        Self {
            gather,
            worker_id,
            lease,
        }
    }

    /// Claims job `id` for this worker with whatever else it is claiming now.
    pub async fn claim(&self, db: &Db, id: JobId) -> Result<Option<JobRecord>, DbError> {
        match self.gather.call(id).await {
            Ok(Some(claimed)) => Ok(claimed),
            Ok(None) | Err(_) => claim_job(db, id, &self.worker_id, self.lease).await,
        }
    }

    /// (flushes, claims) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.gather.stats()
    }
}

/// One flush: `None` for every caller when it failed (each then claims alone).
async fn flush(
    pool: PgPool,
    worker_id: String,
    lease: Duration,
    ids: Vec<JobId>,
) -> Vec<Option<Option<JobRecord>>> {
    let claimed = sqlx::query_as::<_, JobRecord>(sqlx::AssertSqlSafe(CLAIM_MANY_SQL.as_str()))
        .bind(&ids)
        .bind(&worker_id)
        .bind(lease_secs(lease))
        .fetch_all(&pool)
        .await;
    match claimed {
        Ok(rows) => {
            let mut by_id: HashMap<JobId, JobRecord> =
                rows.into_iter().map(|r| (r.id, r)).collect();
            // A job asked for twice in one flush (its message delivered twice) goes to the first caller only; the
            // other finds it running on a live lease, as a second `claim_job` would.
            ids.iter().map(|id| Some(by_id.remove(id))).collect()
        }
        Err(e) => {
            tracing::debug!(claims = ids.len(), error = %e, "gathered claim failed; claiming one by one");
            ids.iter().map(|_| None).collect()
        }
    }
}
