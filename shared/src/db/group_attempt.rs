//! Attempt counts gathered (issue 19, item 1, the worker's side): the provider calls a worker starts at the same
//! moment (the jobs it claimed together start their calls together) are counted in one UPDATE and one commit
//! instead of one each. Each caller still gets its own counts, or `None` when the job is no longer this worker's,
//! exactly as [`super::jobs::record_attempt`] answers.
//!
//! The count is an ordinary commit (it is what keeps a crash mid-call from handing out a free call), so one flush
//! here is one disk flush for all its calls. Adaptive, without a timer ([`crate::gather`]): a lone count runs at
//! once, as the single statement. Postgres only; SQLite keeps the single count. A failed flush counts its calls
//! again one by one, so each caller sees its own answer or error.

use super::jobs::{RouteAttempt, record_attempt};
use super::{Db, DbError, POSTGRES};
use crate::domain::JobId;
use crate::gather::{Gather, first_of_each};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// The most calls one flush counts.
const MAX_ATTEMPTS: usize = 128;
/// Flushes running at once.
const FLUSH_SLOTS: usize = 2;

/// The same count as `record_attempt`, for every (job, route) pair at once.
static COUNT_MANY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET attempts = jobs.attempts + 1, provider_attempts = {incremented}, updated_at = now() \
         FROM UNNEST($1::uuid[], $2::text[]) AS counted(id, route) \
         WHERE jobs.id = counted.id AND jobs.worker_id = $3 AND jobs.status = 'running' \
         RETURNING jobs.id, jobs.attempts, CAST(jobs.provider_attempts ->> counted.route AS INTEGER)",
        incremented = POSTGRES.json_increment("jobs.provider_attempts", "counted.route"),
    )
});

/// One call to count: the job, and the route it goes to.
type Call = (JobId, String);
/// A count as `record_attempt` answers it.
type Counted = Result<Option<RouteAttempt>, DbError>;

/// One worker process's gathered attempt counts (its id is every count's).
pub struct GroupAttempts {
    gather: Arc<Gather<Call, Option<Counted>>>,
    worker_id: String,
}

impl GroupAttempts {
    pub fn new(pool: PgPool, worker_id: String) -> Self {
        let flush_worker = worker_id.clone();
        let gather = Gather::new(
            "attempt_count",
            MAX_ATTEMPTS,
            FLUSH_SLOTS,
            Box::new(move |calls| Box::pin(flush(pool.clone(), flush_worker.clone(), calls))),
        );
        Self { gather, worker_id }
    }

    /// Counts one call of job `id` on `route` with whatever else this worker counts now.
    pub async fn record(
        &self,
        db: &Db,
        id: JobId,
        route: &str,
    ) -> Result<Option<RouteAttempt>, DbError> {
        match self.gather.call((id, route.to_owned())).await {
            Ok(Some(counted)) => counted,
            Ok(None) | Err(_) => record_attempt(db, id, &self.worker_id, route).await,
        }
    }

    /// (flushes, counts) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.gather.stats()
    }
}

/// One flush: `None` for a caller whose call was not counted here (the flush failed, or its job came twice), who
/// then counts alone.
async fn flush(pool: PgPool, worker_id: String, calls: Vec<Call>) -> Vec<Option<Counted>> {
    // A lone call takes the single statement, cheaper to run than the arrays (and holding the flush's slot while it
    // runs, so that the calls arriving meanwhile gather).
    if let [(id, route)] = calls.as_slice() {
        return vec![Some(
            record_attempt(&Db::from(pool), *id, &worker_id, route).await,
        )];
    }
    // One row per job: an UPDATE joined to the same job twice changes it once. A job's calls are made one after
    // another, so a second one in the same flush is a job run twice at once; it counts alone, after this flush.
    let first = first_of_each(&calls, |(id, _)| *id);
    let (ids, routes): (Vec<JobId>, Vec<&str>) = calls
        .iter()
        .zip(&first)
        .filter(|(_, first)| **first)
        .map(|((id, route), _)| (*id, route.as_str()))
        .unzip();
    let counted =
        sqlx::query_as::<_, (JobId, i32, i32)>(sqlx::AssertSqlSafe(COUNT_MANY_SQL.as_str()))
            .bind(&ids)
            .bind(&routes)
            .bind(&worker_id)
            .fetch_all(&pool)
            .await;
    match counted {
        Ok(rows) => {
            let by_id: HashMap<JobId, RouteAttempt> = rows
                .into_iter()
                .map(|(id, total, on_route)| (id, RouteAttempt { total, on_route }))
                .collect();
            calls
                .iter()
                .zip(first)
                .map(|((id, _), first)| first.then(|| Ok(by_id.get(id).copied())))
                .collect()
        }
        Err(e) => {
            tracing::debug!(counts = calls.len(), error = %e, "gathered attempt count failed; counting one by one");
            calls.iter().map(|_| None).collect()
        }
    }
}
