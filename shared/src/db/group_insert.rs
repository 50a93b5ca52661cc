//! Group commit for submissions (issue 19): submissions that arrive while a flush is running are recorded together,
//! in one multi-row INSERT and one commit, instead of one statement and one WAL flush each. Each caller still gets
//! its own record or its own error.
//!
//! Adaptive, without a timer ([`crate::gather`]): a lone submission starts a flush at once; what arrives while a
//! flush runs is the next flush (at most [`MAX_ROWS`]). Only the plain case takes part, on Postgres: no
//! Idempotency-Key, no active-jobs limit and no edit inputs (those need their own transaction, `insert_admitted`).
//!
//! A multi-row INSERT is all or nothing, so when it fails the rows are inserted again one by one: a bad row fails
//! only its own submission.

use super::DbError;
use super::jobs::{JOB_COLUMNS, JobRecord, NewJob};
use crate::gather::Gather;
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::sync::Arc;

/// The most rows one flush writes (18 parameters each, far below Postgres's 65,535).
pub const MAX_ROWS: usize = 64;
/// Inserts running at once: two, so one slow commit does not hold up every submission behind it.
const FLUSH_SLOTS: usize = 2;

/// Gathers plain job inserts into flushes; one per API process.
pub struct GroupInsert {
    gather: Arc<Gather<NewJob, Result<JobRecord, DbError>>>,
}

impl GroupInsert {
    pub fn new(pool: PgPool) -> Arc<Self> {
        let gather = Gather::new(
            "job_insert",
            MAX_ROWS,
            FLUSH_SLOTS,
            Box::new(move |jobs| Box::pin(flush(pool.clone(), jobs))),
        );
        Arc::new(Self { gather })
    }

    /// Records `job` (plain: no key, limit or inputs) with whatever else is being submitted now.
    pub async fn insert(&self, job: NewJob) -> Result<JobRecord, DbError> {
        self.gather
            .call(job)
            .await
            .map_err(|e| DbError::Corrupt(e.to_string()))?
    }

    /// (flushes, rows) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.gather.stats()
    }
}

async fn flush(pool: PgPool, jobs: Vec<NewJob>) -> Vec<Result<JobRecord, DbError>> {
    let rows: Vec<&NewJob> = jobs.iter().collect();
    match insert_rows(&pool, &rows).await {
        Ok(records) => {
            let mut by_id: std::collections::HashMap<_, _> =
                records.into_iter().map(|r| (r.id, r)).collect();
            jobs.iter()
                .map(|job| {
                    by_id.remove(&job.id).ok_or_else(|| {
                        DbError::Corrupt(format!("job {} missing from its group insert", job.id))
                    })
                })
                .collect()
        }
        Err(e) if jobs.len() == 1 => vec![Err(e)],
        Err(e) => {
            tracing::debug!(rows = jobs.len(), error = %e, "group insert failed; inserting its rows one by one");
            let mut outcomes = Vec::with_capacity(jobs.len());
            for job in &jobs {
                outcomes.push(insert_rows(&pool, &[job]).await.and_then(|mut rows| {
                    rows.pop().ok_or_else(|| {
                        DbError::Corrupt(format!("job {} not returned by its insert", job.id))
                    })
                }));
            }
            outcomes
        }
    }
}

/// One INSERT of `jobs` (autocommit: one round trip, one commit), the same columns and values as
/// `jobs::insert_job!` writes for a job outside a batch.
pub(crate) async fn insert_rows(
    pool: &PgPool,
    jobs: &[&NewJob],
) -> Result<Vec<JobRecord>, DbError> {
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(
        "INSERT INTO jobs (id, owner, batch_id, batch_index, correlation_id, status, provider, request, \
            max_attempts, moderation, error_code, error_message, finished_at, deadline_at, api_key_id, \
            reserved_usd_micros, budget_settled, max_calls) ",
    );
    query.push_values(jobs, |mut row, job| {
        let terminal = job.status.is_terminal();
        let (code, message) = job.error.clone().unzip();
        row.push_bind(job.id)
            .push_bind(&job.owner)
            .push("NULL")
            .push("NULL")
            .push_bind(&job.correlation_id)
            .push_bind(job.status)
            .push_bind(job.provider.as_str())
            .push_bind(sqlx::types::Json(&job.request))
            .push_bind(job.max_attempts)
            .push_bind(job.moderation.as_ref().map(sqlx::types::Json))
            .push_bind(code)
            .push_bind(message);
        row.push("CASE WHEN ")
            .push_bind_unseparated(terminal)
            .push_unseparated(" THEN now() END");
        row.push("(now() + make_interval(secs => (")
            .push_bind_unseparated(job.deadline_secs.map(f64::from))
            .push_unseparated(")::double precision))");
        row.push_bind(job.api_key_id)
            .push_bind(job.reserved_usd_micros)
            .push_bind(terminal)
            .push_bind(job.max_calls);
    });
    query.push(" RETURNING ");
    query.push(JOB_COLUMNS);
    Ok(query.build_query_as::<JobRecord>().fetch_all(pool).await?)
}
