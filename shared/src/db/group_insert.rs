//! Group commit for submissions (issue 19): submissions that arrive while a flush is running are recorded together,
//! in one multi-row INSERT and one commit, instead of one statement and one WAL flush each. Each caller still gets
//! its own record or its own error.
//!
//! Adaptive, without a timer: a lone submission starts a flush at once (it is never delayed); what arrives while a
//! flush runs is the next flush (at most [`MAX_ROWS`]). Only the plain case takes part, on Postgres: no
//! Idempotency-Key, no active-jobs limit and no edit inputs (those need their own transaction, `insert_admitted`).
//!
//! A multi-row INSERT is all or nothing, so when it fails the rows are inserted again one by one: a bad row fails
//! only its own submission.

use super::DbError;
use super::jobs::{JOB_COLUMNS, JobRecord, NewJob};
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;

/// The most rows one flush writes (18 parameters each, far below Postgres's 65,535).
pub const MAX_ROWS: usize = 64;

type Answer = oneshot::Sender<Result<JobRecord, DbError>>;

/// Gathers plain job inserts into flushes; one per API process.
pub struct GroupInsert {
    pool: PgPool,
    state: Mutex<Gathered>,
}

#[derive(Default)]
struct Gathered {
    waiting: Vec<(NewJob, Answer)>,
    /// A flush task is running; it takes what is waiting when it is done.
    flushing: bool,
    /// Flushes so far and rows in them (tests and the bench read how well submissions were grouped).
    flushes: u64,
    rows: u64,
}

impl GroupInsert {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            state: Mutex::new(Gathered::default()),
        })
    }

    /// Records `job` (plain: no key, limit or inputs) with whatever else is being submitted now.
    pub async fn insert(self: &Arc<Self>, job: NewJob) -> Result<JobRecord, DbError> {
        let (answer, answered) = oneshot::channel();
        let start_flush = {
            let mut state = self.lock();
            state.waiting.push((job, answer));
            !std::mem::replace(&mut state.flushing, true)
        };
        if start_flush {
            // A task, not the caller: a caller that goes away (its client hung up) does not strand the others.
            tokio::spawn(self.clone().flush_while_waiting());
        }
        answered.await.map_err(|_| {
            DbError::Corrupt("the group insert stopped before recording the job".into())
        })?
    }

    /// (flushes, rows) so far.
    pub fn stats(&self) -> (u64, u64) {
        let state = self.lock();
        (state.flushes, state.rows)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gathered> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn flush_while_waiting(self: Arc<Self>) {
        // Should a flush panic, the guard still lets the next submission start one (and the stranded callers get
        // an error when their answers are dropped).
        let _reset = ResetOnDrop(&self);
        loop {
            let batch: Vec<(NewJob, Answer)> = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    state.flushing = false;
                    return;
                }
                let n = state.waiting.len().min(MAX_ROWS);
                state.flushes += 1;
                state.rows += n as u64;
                state.waiting.drain(..n).collect()
            };
            metrics::histogram!("imagegen_submit_group_rows").record(batch.len() as f64);
            flush(&self.pool, batch).await;
        }
    }
}

struct ResetOnDrop<'a>(&'a GroupInsert);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.0.lock();
            state.flushing = false;
            state.waiting.clear();
        }
    }
}

async fn flush(pool: &PgPool, batch: Vec<(NewJob, Answer)>) {
    let jobs: Vec<&NewJob> = batch.iter().map(|(job, _)| job).collect();
    match insert_rows(pool, &jobs).await {
        Ok(records) => {
            let mut by_id: std::collections::HashMap<_, _> =
                records.into_iter().map(|r| (r.id, r)).collect();
            for (job, answer) in batch {
                let result = by_id.remove(&job.id).ok_or_else(|| {
                    DbError::Corrupt(format!("job {} missing from its group insert", job.id))
                });
                let _ = answer.send(result);
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some((_, answer)) = batch.into_iter().next() {
                let _ = answer.send(Err(e));
            }
        }
        Err(e) => {
            tracing::debug!(rows = batch.len(), error = %e, "group insert failed; inserting its rows one by one");
            for (job, answer) in batch {
                let result = insert_rows(pool, &[&job]).await.and_then(|mut rows| {
                    rows.pop().ok_or_else(|| {
                        DbError::Corrupt(format!("job {} not returned by its insert", job.id))
                    })
                });
                let _ = answer.send(result);
            }
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
