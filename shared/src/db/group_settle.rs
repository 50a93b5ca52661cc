//! Budget settlements gathered (issue 19, item 1, the worker's side): the jobs a worker finishes at the same moment
//! have their `budget_settled` flag flipped in one UPDATE instead of one each. Each caller still gets its own
//! settlement, or `None` when somebody settled the job already, exactly as [`super::costs::settle`] answers.
//!
//! Adaptive, without a timer ([`crate::gather`]): a lone settlement runs at once. Postgres only. A failed flush
//! settles its jobs again one by one, so each caller sees its own answer or error.

use super::costs::{Settlement, settle};
use super::{Db, DbError};
use crate::domain::JobId;
use crate::gather::Gather;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;

/// The most jobs one flush settles.
const MAX_SETTLES: usize = 128;
/// Flushes running at once.
const FLUSH_SLOTS: usize = 2;

/// One process's gathered settlements.
pub struct GroupSettles {
    gather: Arc<Gather<JobId, Option<Option<Settlement>>>>,
}

#[derive(sqlx::FromRow)]
struct Settled {
    id: JobId,
    #[sqlx(flatten)]
    settlement: Settlement,
}

impl GroupSettles {
    pub fn new(pool: PgPool) -> Self {
        let gather = Gather::new(
            "budget_settle",
            MAX_SETTLES,
            FLUSH_SLOTS,
            Box::new(move |ids| Box::pin(flush(pool.clone(), ids))),
        );
        Self { gather }
    }

    /// Marks job `id`'s budget settled with whatever else this process settles now: `Some` for the one caller
    /// that flips it.
    pub async fn settle(&self, db: &Db, id: JobId) -> Result<Option<Settlement>, DbError> {
        match self.gather.call(id).await {
            Ok(Some(settled)) => Ok(settled),
            Ok(None) | Err(_) => settle(db, id).await,
        }
    }

    /// (flushes, settlements) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.gather.stats()
    }
}

/// One flush: `None` for every caller when it failed (each then settles alone).
async fn flush(pool: PgPool, ids: Vec<JobId>) -> Vec<Option<Option<Settlement>>> {
    // The same condition as `costs::settle`, for every id at once.
    let settled = sqlx::query_as::<_, Settled>(
        "UPDATE jobs SET budget_settled = TRUE \
         WHERE id = ANY($1) AND NOT budget_settled \
           AND status IN ('succeeded', 'failed', 'moderated', 'canceled') \
         RETURNING id, owner, api_key_id, created_at, reserved_usd_micros, cost_usd_micros",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await;
    match settled {
        Ok(rows) => {
            let mut by_id: HashMap<JobId, Settlement> =
                rows.into_iter().map(|r| (r.id, r.settlement)).collect();
            // A job asked for twice in one flush is settled for the first caller only, as two `settle` calls would.
            ids.iter().map(|id| Some(by_id.remove(id))).collect()
        }
        Err(e) => {
            tracing::debug!(settles = ids.len(), error = %e, "gathered settlement failed; settling one by one");
            ids.iter().map(|_| None).collect()
        }
    }
}
