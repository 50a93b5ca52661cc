//! Charges gathered (issue 19, item 1, the worker's side): the answers a worker gets at the same moment have their
//! charges, and the storage intents of their pictures, written in one statement and one commit instead of one each.
//! Each caller still gets its own answer, exactly as [`super::costs::record_charge_and_intents`] gives it: a late
//! settlement when its job's budget was settled meanwhile, nothing when the charge was recorded before. A job's
//! charge and its intents stay together: both or neither.
//!
//! Adaptive, without a timer ([`crate::gather`]): a lone charge runs at once, as the single statement. Postgres only;
//! SQLite keeps the single statement. A failed flush writes its charges again one by one, so each caller sees its own
//! answer or error.

use super::costs::{NewCharge, Settlement, late_settlement, record_charge_and_intents};
use super::{Db, DbError};
use crate::cost::Cost;
use crate::domain::JobId;
use crate::gather::{Gather, first_of_each};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;

/// The most charges one flush writes.
const MAX_CHARGES: usize = 128;
/// Flushes running at once.
const FLUSH_SLOTS: usize = 2;

/// `costs::record_charge_and_intents`'s statement for many charges: the charges side by side (`$1` to `$10`, one
/// array per column), the intents as (key, job) pairs (`$11`, `$12`), the worker (`$13`). A job's cost moves only
/// by a charge row that was new.
const CHARGE_MANY_SQL: &str = "WITH charged AS (\
        INSERT INTO charges (job_id, attempt, owner, api_key_id, provider, model, usd_micros, basis, estimated, \
            images) \
        SELECT * FROM UNNEST($1::uuid[], $2::integer[], $3::text[], $4::uuid[], $5::text[], $6::text[], \
            $7::bigint[], $8::text[], $9::boolean[], $10::integer[]) \
        ON CONFLICT (job_id, attempt) DO NOTHING \
        RETURNING job_id, usd_micros, basis, estimated), \
     intents AS (INSERT INTO pending_objects (storage_key, job_id, worker_id) \
        SELECT key, job_id, $13 FROM UNNEST($11::text[], $12::uuid[]) AS intent(key, job_id) \
        ON CONFLICT DO NOTHING) \
     UPDATE jobs SET cost_usd_micros = jobs.cost_usd_micros + charged.usd_micros, \
        cost_basis = CASE WHEN jobs.cost_basis = 'none' OR jobs.cost_basis = charged.basis THEN charged.basis \
            ELSE 'mixed' END, \
        cost_estimated = (jobs.cost_estimated OR charged.estimated) \
     FROM charged WHERE jobs.id = charged.job_id \
     RETURNING jobs.id, jobs.budget_settled, jobs.created_at";

/// A charge and its intents, owned (a flush outlives its callers' borrows).
struct Gathered {
    job_id: JobId,
    attempt: i32,
    owner: String,
    api_key_id: Option<uuid::Uuid>,
    provider: String,
    model: String,
    cost: Cost,
    images: i32,
    keys: Vec<String>,
}

impl Gathered {
    fn charge(&self) -> NewCharge<'_> {
        NewCharge {
            job_id: self.job_id,
            attempt: self.attempt,
            owner: &self.owner,
            api_key_id: self.api_key_id,
            provider: &self.provider,
            model: &self.model,
            cost: self.cost,
            images: self.images,
        }
    }
}

/// A charge written, as `record_charge_and_intents` answers.
type Written = Result<Option<Settlement>, DbError>;

/// One worker process's gathered charges (its id is every intent's).
pub struct GroupCharges {
    gather: Arc<Gather<Gathered, Option<Written>>>,
    worker_id: String,
}

impl GroupCharges {
    pub fn new(pool: PgPool, worker_id: String) -> Self {
        let flush_worker = worker_id.clone();
        let gather = Gather::new(
            "charge",
            MAX_CHARGES,
            FLUSH_SLOTS,
            Box::new(move |charges| Box::pin(flush(pool.clone(), flush_worker.clone(), charges))),
        );
        Self { gather, worker_id }
    }

    /// Records charge `c` and the intents of the pictures about to be stored under `keys` (none for a charge alone)
    /// with whatever else this worker charges now.
    pub async fn record(
        &self,
        db: &Db,
        c: &NewCharge<'_>,
        keys: &[String],
    ) -> Result<Option<Settlement>, DbError> {
        let gathered = Gathered {
            job_id: c.job_id,
            attempt: c.attempt,
            owner: c.owner.to_owned(),
            api_key_id: c.api_key_id,
            provider: c.provider.to_owned(),
            model: c.model.to_owned(),
            cost: c.cost,
            images: c.images,
            keys: keys.to_vec(),
        };
        match self.gather.call(gathered).await {
            Ok(Some(written)) => written,
            Ok(None) | Err(_) => record_charge_and_intents(db, c, keys, &self.worker_id).await,
        }
    }

    /// (flushes, charges) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.gather.stats()
    }
}

/// One flush: `None` for a caller whose charge was not written here (the flush failed, or its job came twice), who
/// then writes alone.
async fn flush(pool: PgPool, worker_id: String, charges: Vec<Gathered>) -> Vec<Option<Written>> {
    // A lone charge takes the single statement, cheaper to run than the arrays (and holding the flush's slot while
    // it runs, so that the charges arriving meanwhile gather).
    if let [c] = charges.as_slice() {
        return vec![Some(
            record_charge_and_intents(&Db::from(pool), &c.charge(), &c.keys, &worker_id).await,
        )];
    }
    // One row per job: an UPDATE joined to the same job twice adds only one of its charges. A job's calls are made
    // one after another, so a second charge in the same flush is a job run twice at once; it is written alone.
    let first = first_of_each(&charges, |c| c.job_id);
    let taken = || {
        charges
            .iter()
            .zip(&first)
            .filter(|(_, first)| **first)
            .map(|(c, _)| c)
    };
    let (keys, key_jobs): (Vec<&str>, Vec<JobId>) = taken()
        .flat_map(|c| c.keys.iter().map(|key| (key.as_str(), c.job_id)))
        .unzip();
    let written = sqlx::query_as::<_, (JobId, bool, DateTime<Utc>)>(CHARGE_MANY_SQL)
        .bind(taken().map(|c| c.job_id).collect::<Vec<_>>())
        .bind(taken().map(|c| c.attempt).collect::<Vec<_>>())
        .bind(taken().map(|c| c.owner.as_str()).collect::<Vec<_>>())
        .bind(taken().map(|c| c.api_key_id).collect::<Vec<_>>())
        .bind(taken().map(|c| c.provider.as_str()).collect::<Vec<_>>())
        .bind(taken().map(|c| c.model.as_str()).collect::<Vec<_>>())
        .bind(taken().map(|c| c.cost.usd_micros).collect::<Vec<_>>())
        .bind(taken().map(|c| c.cost.basis.as_str()).collect::<Vec<_>>())
        .bind(taken().map(|c| c.cost.estimated).collect::<Vec<_>>())
        .bind(taken().map(|c| c.images).collect::<Vec<_>>())
        .bind(&keys)
        .bind(&key_jobs)
        .bind(&worker_id)
        .fetch_all(&pool)
        .await;
    match written {
        Ok(rows) => {
            let by_id: HashMap<JobId, (bool, DateTime<Utc>)> = rows
                .into_iter()
                .map(|(id, settled, created_at)| (id, (settled, created_at)))
                .collect();
            charges
                .iter()
                .zip(first)
                .map(|(c, first)| {
                    first.then(|| Ok(late_settlement(&c.charge(), by_id.get(&c.job_id).copied())))
                })
                .collect()
        }
        Err(e) => {
            tracing::debug!(charges = charges.len(), error = %e, "gathered charge failed; charging one by one");
            charges.iter().map(|_| None).collect()
        }
    }
}
