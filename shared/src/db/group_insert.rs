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
//!
//! A row may be inserted [`Check::UnlessBudgeted`]: only if its owner has no budget, checked by the INSERT itself
//! (issue 19, one round trip less per submission). Where nothing but the owner's budget row could limit a job (no
//! default budget, no key budget), the API submits it that way instead of reading the row first; an owner who
//! has a budget gets [`GroupInserted::Budgeted`] back, nothing written, and takes the reading path.

use super::DbError;
use super::jobs::{JOB_COLUMNS, JobRecord, NewJob};
use crate::gather::Gather;
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::sync::Arc;

/// The most rows one flush writes (18 parameters each, far below Postgres's 65,535).
pub const MAX_ROWS: usize = 64;
/// Inserts running at once: two, so one slow commit does not hold up every submission behind it.
const FLUSH_SLOTS: usize = 2;

/// Whether a row is written whatever its owner's budget, or only when the owner has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The caller read the owner's budget and reserved what it needs.
    Read,
    /// Written only if the owner has no budget row with a limit (the same test as the API's: a row whose limits
    /// are both empty limits nothing).
    UnlessBudgeted,
}

/// Whether a row's commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The client hears of the job at once (a 202, a stream): it is on disk before that.
    Flushed,
    /// The client hears of the job only with its outcome (wait mode), so the commit need not wait for the disk:
    /// the outcome's own write is an ordinary commit, and the WAL is flushed in order, so it takes the job with it.
    /// A wait that ends before the outcome calls [`super::jobs::make_durable`] before answering. A flush writes
    /// unflushed only when every row of it may be.
    Unflushed,
}

/// What became of one row.
#[derive(Debug)]
pub enum GroupInserted {
    New(Box<JobRecord>),
    /// Not written: its owner has a budget ([`Check::UnlessBudgeted`]). The job comes back as it was given.
    Budgeted(Box<NewJob>),
}

/// One row to write, as the caller asked.
type Row = (NewJob, Check, Commit);

/// Gathers plain job inserts into flushes; one per API process.
pub struct GroupInsert {
    gather: Arc<Gather<Row, Result<GroupInserted, DbError>>>,
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
        match self
            .insert_checked(job, Check::Read, Commit::Flushed)
            .await?
        {
            GroupInserted::New(record) => Ok(*record),
            GroupInserted::Budgeted(job) => Err(DbError::Corrupt(format!(
                "job {} refused by a budget it was not checked against",
                job.id
            ))),
        }
    }

    /// Records `job` as [`GroupInsert::insert`] does, but under `check`, committed as `commit` says.
    pub async fn insert_checked(
        &self,
        job: NewJob,
        check: Check,
        commit: Commit,
    ) -> Result<GroupInserted, DbError> {
        self.gather
            .call((job, check, commit))
            .await
            .map_err(|e| DbError::Corrupt(e.to_string()))?
    }

    /// (flushes, rows) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.gather.stats()
    }
}

async fn flush(pool: PgPool, jobs: Vec<Row>) -> Vec<Result<GroupInserted, DbError>> {
    let rows: Vec<(&NewJob, Check)> = jobs.iter().map(|(job, check, _)| (job, *check)).collect();
    let commit = if jobs.iter().all(|(_, _, c)| *c == Commit::Unflushed) {
        Commit::Unflushed
    } else {
        Commit::Flushed
    };
    match insert_rows(&pool, &rows, commit).await {
        Ok(records) => {
            let mut by_id: std::collections::HashMap<_, _> =
                records.into_iter().map(|r| (r.id, r)).collect();
            jobs.into_iter()
                .map(|(job, check, _)| outcome(by_id.remove(&job.id), job, check))
                .collect()
        }
        Err(e) if jobs.len() == 1 => vec![Err(e)],
        Err(e) => {
            tracing::debug!(rows = jobs.len(), error = %e, "group insert failed; inserting its rows one by one");
            let mut outcomes = Vec::with_capacity(jobs.len());
            for (job, check, commit) in jobs {
                outcomes.push(
                    insert_rows(&pool, &[(&job, check)], commit)
                        .await
                        .and_then(|mut rows| outcome(rows.pop(), job, check)),
                );
            }
            outcomes
        }
    }
}

/// A row the INSERT returned is recorded; one it did not was refused by its owner's budget, or is lost.
fn outcome(
    returned: Option<JobRecord>,
    job: NewJob,
    check: Check,
) -> Result<GroupInserted, DbError> {
    match (returned, check) {
        (Some(record), _) => Ok(GroupInserted::New(Box::new(record))),
        (None, Check::UnlessBudgeted) => Ok(GroupInserted::Budgeted(Box::new(job))),
        (None, Check::Read) => Err(DbError::Corrupt(format!(
            "job {} missing from its group insert",
            job.id
        ))),
    }
}

/// One INSERT of `jobs` (autocommit: one round trip, one commit), the same columns and values as
/// `jobs::insert_job!` writes for a job outside a batch; a row under [`Check::UnlessBudgeted`] only if its owner
/// has no budget, seen in the INSERT's own snapshot.
pub(crate) async fn insert_rows(
    pool: &PgPool,
    jobs: &[(&NewJob, Check)],
    commit: Commit,
) -> Result<Vec<JobRecord>, DbError> {
    // The VALUES list is a FROM item here, so every column whose value is not a typed parameter carries its type.
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(
        "INSERT INTO jobs (id, owner, batch_id, batch_index, correlation_id, status, provider, request, \
            max_attempts, moderation, error_code, error_message, finished_at, deadline_at, api_key_id, \
            reserved_usd_micros, budget_settled, max_calls) \
         SELECT id, owner, batch_id, batch_index, correlation_id, status, provider, request, max_attempts, \
            moderation, error_code, error_message, finished_at, deadline_at, api_key_id, reserved_usd_micros, \
            budget_settled, max_calls \
         FROM (",
    );
    query.push_values(jobs, |mut row, (job, check)| {
        let terminal = job.status.is_terminal();
        let (code, message) = job.error.clone().unzip();
        row.push_bind(job.id)
            .push_bind(&job.owner)
            .push("NULL::uuid")
            .push("NULL::integer")
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
            .push_bind(job.max_calls)
            .push_bind(*check == Check::UnlessBudgeted);
    });
    query.push(
        ") AS v (id, owner, batch_id, batch_index, correlation_id, status, provider, request, max_attempts, \
            moderation, error_code, error_message, finished_at, deadline_at, api_key_id, reserved_usd_micros, \
            budget_settled, max_calls, unless_budgeted) ",
    );
    if commit == Commit::Unflushed {
        query.push(", ").push(super::UNFLUSHED_COMMIT_ITEM);
    }
    query.push(
        " WHERE NOT (v.unless_budgeted AND EXISTS (SELECT 1 FROM budgets b WHERE b.owner = v.owner \
            AND (b.usd_micros_per_day IS NOT NULL OR b.usd_micros_per_month IS NOT NULL))) \
         RETURNING ",
    );
    query.push(JOB_COLUMNS);
    Ok(query.build_query_as::<JobRecord>().fetch_all(pool).await?)
}
