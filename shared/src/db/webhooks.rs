//! Webhooks: registered endpoints (`webhook_endpoints`), each owner's secret for the webhook of single requests
//! (`webhook_secrets`), and the outbox (`webhook_deliveries`, with `webhook_attempts`). Outbox rows are written by
//! the database's triggers in the transaction that changes a job's state (see the `webhooks` migration); here they
//! are claimed under a lease by the dispatchers, and their attempts recorded.

use super::{Db, DbError, on_db};
use crate::domain::{BatchId, JobId};
use chrono::{DateTime, Utc};
use sqlx::types::Json;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRecord {
    pub id: uuid::Uuid,
    pub owner: String,
    pub url: String,
    pub events: Json<Vec<String>>,
    pub description: Option<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub link_base: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str = "id, owner, url, events, description, secret, previous_secret, \
    previous_secret_until, link_base, disabled_at, disabled_reason, created_at";

/// An owner's secret for the webhooks of single requests.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecretRecord {
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub id: String,
    pub message_id: String,
    pub owner: String,
    pub event_type: String,
    pub job_id: Option<JobId>,
    pub batch_id: Option<BatchId>,
    pub endpoint_id: Option<uuid::Uuid>,
    pub url: String,
    pub link_base: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

const DELIVERY_COLUMNS: &str = "id, message_id, owner, event_type, job_id, batch_id, endpoint_id, url, link_base, \
    status, attempts, next_attempt_at, last_status, last_error, created_at, delivered_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRecord {
    pub delivery_id: String,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
}

pub async fn create_endpoint(
    db: &Db,
    owner: &str,
    url: &str,
    events: &[String],
    description: Option<&str>,
    secret: &str,
    link_base: Option<&str>,
) -> Result<EndpointRecord, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, EndpointRecord>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO webhook_endpoints (id, owner, url, events, description, secret, link_base) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ENDPOINT_COLUMNS}"
        )))
        .bind(uuid::Uuid::now_v7())
        .bind(owner)
        .bind(url)
        .bind(Json(events))
        .bind(description)
        .bind(secret)
        .bind(link_base)
        .fetch_one(pool)
        .await?
    });
    Ok(row)
}

pub async fn list_endpoints(db: &Db, owner: &str) -> Result<Vec<EndpointRecord>, DbError> {
    let rows = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, EndpointRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE owner = $1 ORDER BY created_at, id"
        )))
        .bind(owner)
        .fetch_all(pool)
        .await?
    });
    Ok(rows)
}

pub async fn get_endpoint(db: &Db, id: uuid::Uuid) -> Result<Option<EndpointRecord>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, EndpointRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Removes an endpoint and its deliveries. `false`: no such endpoint of this owner.
pub async fn delete_endpoint(db: &Db, owner: &str, id: uuid::Uuid) -> Result<bool, DbError> {
    let affected = on_db!(db, |pool, sql| {
        sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(affected == 1)
}

/// Gives an endpoint a new secret; the old one still signs for `overlap_secs`. `None`: no such endpoint.
pub async fn rotate_endpoint(
    db: &Db,
    owner: &str,
    id: uuid::Uuid,
    secret: &str,
    overlap_secs: f64,
) -> Result<Option<EndpointRecord>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, EndpointRecord>(sqlx::AssertSqlSafe(format!(
            "UPDATE webhook_endpoints SET previous_secret = secret, secret = $3, previous_secret_until = {until} \
             WHERE id = $1 AND owner = $2 RETURNING {ENDPOINT_COLUMNS}",
            until = sql.now_plus("$4"),
        )))
        .bind(id)
        .bind(owner)
        .bind(secret)
        .bind(overlap_secs)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// The owner's secret, made with `secret` when it has none yet.
pub async fn owner_secret(db: &Db, owner: &str, secret: &str) -> Result<SecretRecord, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query(
            "INSERT INTO webhook_secrets (owner, secret) VALUES ($1, $2) ON CONFLICT (owner) DO NOTHING",
        )
        .bind(owner)
        .bind(secret)
        .execute(pool)
        .await?;
        sqlx::query_as::<_, SecretRecord>(
            "SELECT secret, previous_secret, previous_secret_until FROM webhook_secrets WHERE owner = $1",
        )
        .bind(owner)
        .fetch_one(pool)
        .await?
    });
    Ok(row)
}

/// Gives the owner a new secret (made if it had none); the old one still signs for `overlap_secs`.
pub async fn rotate_owner_secret(
    db: &Db,
    owner: &str,
    secret: &str,
    overlap_secs: f64,
) -> Result<SecretRecord, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, SecretRecord>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO webhook_secrets (owner, secret) VALUES ($1, $2) \
             ON CONFLICT (owner) DO UPDATE SET previous_secret = webhook_secrets.secret, secret = $2, \
                previous_secret_until = {until} \
             RETURNING secret, previous_secret, previous_secret_until",
            until = sql.now_plus("$3"),
        )))
        .bind(owner)
        .bind(secret)
        .bind(overlap_secs)
        .fetch_one(pool)
        .await?
    });
    Ok(row)
}

/// Takes up to `limit` due deliveries for this dispatcher for `lease_secs`, counting the attempt: at most
/// `per_owner` of any one owner, and none of the owners in `busy` (their receivers already have as many deliveries
/// in flight here as they may), so one owner's backlog never takes every slot. Rows another dispatcher holds are
/// skipped, so each attempt is made by one dispatcher.
pub async fn claim_due(
    db: &Db,
    limit: i64,
    per_owner: i64,
    lease_secs: f64,
    busy: &[String],
) -> Result<Vec<DeliveryRecord>, DbError> {
    let query = |sql: &super::Dialect| {
        format!(
            "WITH due AS (SELECT id, owner, next_attempt_at FROM webhook_deliveries \
                 WHERE status = 'pending' AND next_attempt_at <= {now} \
                   AND (lease_until IS NULL OR lease_until < {now}) AND NOT ({busy}) \
                 ORDER BY next_attempt_at LIMIT $4 {skip}), \
             ranked AS (SELECT id, next_attempt_at, \
                 row_number() OVER (PARTITION BY owner ORDER BY next_attempt_at) AS rn FROM due) \
             UPDATE webhook_deliveries SET attempts = attempts + 1, lease_until = {lease}, updated_at = {now} \
             WHERE id IN (SELECT id FROM ranked WHERE rn <= $5 ORDER BY next_attempt_at LIMIT $1) \
               AND status = 'pending' AND (lease_until IS NULL OR lease_until < {now}) \
             RETURNING {DELIVERY_COLUMNS}",
            lease = sql.now_plus("$2"),
            now = sql.now,
            busy = sql.in_list("owner", 6, busy.len()),
            skip = sql.skip_locked(),
        )
    };
    // Looked at: enough rows for `limit` even when a few owners hold most of the due ones.
    let window = (limit * 8).max(64);
    let rows = match db {
        Db::Postgres(pool) => {
            sqlx::query_as::<_, DeliveryRecord>(sqlx::AssertSqlSafe(query(&super::POSTGRES)))
                .bind(limit)
                .bind(lease_secs)
                .bind(0_i64)
                .bind(window)
                .bind(per_owner)
                .bind(busy)
                .fetch_all(pool)
                .await?
        }
        Db::Sqlite(pool) => {
            let mut q =
                sqlx::query_as::<_, DeliveryRecord>(sqlx::AssertSqlSafe(query(&super::SQLITE)))
                    .bind(limit)
                    .bind(lease_secs)
                    .bind(0_i64)
                    .bind(window)
                    .bind(per_owner);
            for owner in busy {
                q = q.bind(owner);
            }
            q.fetch_all(pool).await?
        }
    };
    Ok(rows)
}

/// How an attempt ended, for [`record_attempt`].
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEnd {
    Delivered,
    /// Try again in `secs`.
    Retry {
        secs: f64,
    },
    /// Given up: attempts used up, or refused for good.
    Failed,
    /// The receiver answered 410: the delivery failed and its endpoint (if registered) is disabled, with every
    /// delivery still pending to it.
    Gone,
}

/// One attempt of a delivery this dispatcher holds: logged, and the delivery moved on. `false`: the lease was lost
/// meanwhile (another dispatcher took the delivery), so nothing was written.
#[allow(clippy::too_many_arguments)]
pub async fn record_attempt(
    db: &Db,
    delivery: &DeliveryRecord,
    status_code: Option<i32>,
    error: Option<&str>,
    duration_ms: i32,
    end: &AttemptEnd,
) -> Result<bool, DbError> {
    let (status, next_secs) = match end {
        AttemptEnd::Delivered => ("succeeded", None),
        AttemptEnd::Retry { secs } => ("pending", Some(*secs)),
        AttemptEnd::Failed => ("failed", None),
        AttemptEnd::Gone => ("failed", None),
    };
    on_db!(db, |pool, sql| {
        let mut tx = pool.begin_with(sql.begin).await?;
        let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE webhook_deliveries SET status = $2, last_status = $3, last_error = $4, lease_until = NULL, \
                next_attempt_at = CASE WHEN $5 IS NULL THEN next_attempt_at ELSE {next} END, \
                delivered_at = CASE WHEN $2 = 'succeeded' THEN {now} ELSE delivered_at END, updated_at = {now} \
             WHERE id = $1 AND status = 'pending' AND attempts = $6",
            next = sql.now_plus("$5"),
            now = sql.now,
        )))
        .bind(&delivery.id)
        .bind(status)
        .bind(status_code)
        .bind(error)
        .bind(next_secs)
        .bind(delivery.attempts)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, duration_ms) \
             SELECT $1, COALESCE(MAX(attempt), 0) + 1, $2, $3, $4 FROM webhook_attempts WHERE delivery_id = $1",
        )
        .bind(&delivery.id)
        .bind(status_code)
        .bind(error)
        .bind(duration_ms)
        .execute(&mut *tx)
        .await?;
        if let (AttemptEnd::Gone, Some(endpoint)) = (end, delivery.endpoint_id) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE webhook_endpoints SET disabled_at = {now}, disabled_reason = $2 \
                 WHERE id = $1 AND disabled_at IS NULL",
                now = sql.now,
            )))
            .bind(endpoint)
            .bind("the receiver answered 410 Gone")
            .execute(&mut *tx)
            .await?;
            // Its other pending deliveries will not be sent either.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE webhook_deliveries SET status = 'disabled', lease_until = NULL, updated_at = {now}, \
                    last_error = COALESCE(last_error, 'the endpoint was disabled') \
                 WHERE endpoint_id = $1 AND status = 'pending' AND id <> $2",
                now = sql.now,
            )))
            .bind(endpoint)
            .bind(&delivery.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    })
}

/// Filters for [`list_deliveries`].
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub job_id: Option<JobId>,
    pub status: Option<String>,
    pub limit: i64,
}

/// An owner's deliveries, newest first, each with its attempts (oldest first).
pub async fn list_deliveries(
    db: &Db,
    owner: &str,
    filter: &DeliveryFilter,
) -> Result<Vec<(DeliveryRecord, Vec<AttemptRecord>)>, DbError> {
    let deliveries = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, DeliveryRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE owner = $1 AND ($2 IS NULL OR job_id = $2) AND ($3 IS NULL OR status = $3) \
             ORDER BY created_at DESC, id LIMIT $4"
        )))
        .bind(owner)
        .bind(filter.job_id)
        .bind(filter.status.as_deref())
        .bind(filter.limit)
        .fetch_all(pool)
        .await?
    });
    if deliveries.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
    let query = |sql: &super::Dialect| {
        format!(
            "SELECT delivery_id, attempt, at, status_code, error, duration_ms FROM webhook_attempts \
             WHERE {} ORDER BY delivery_id, attempt",
            sql.in_list("delivery_id", 1, ids.len())
        )
    };
    let attempts = match db {
        Db::Postgres(pool) => {
            sqlx::query_as::<_, AttemptRecord>(sqlx::AssertSqlSafe(query(&super::POSTGRES)))
                .bind(&ids)
                .fetch_all(pool)
                .await?
        }
        Db::Sqlite(pool) => {
            let mut q =
                sqlx::query_as::<_, AttemptRecord>(sqlx::AssertSqlSafe(query(&super::SQLITE)));
            for id in &ids {
                q = q.bind(id);
            }
            q.fetch_all(pool).await?
        }
    };
    Ok(deliveries
        .into_iter()
        .map(|d| {
            let own = attempts
                .iter()
                .filter(|a| a.delivery_id == d.id)
                .cloned()
                .collect();
            (d, own)
        })
        .collect())
}

/// What [`replay`] did.
#[derive(Debug)]
pub enum Replay {
    Queued(Box<DeliveryRecord>),
    /// A dispatcher is sending it right now: replaying would make that attempt twice.
    InFlight,
    NotFound,
}

/// Sends a delivery again from the start of the schedule (same message id), unless a dispatcher holds it now.
pub async fn replay(db: &Db, owner: &str, id: &str) -> Result<Replay, DbError> {
    let (row, exists) = on_db!(db, |pool, sql| {
        let row = sqlx::query_as::<_, DeliveryRecord>(sqlx::AssertSqlSafe(format!(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = {now}, \
                lease_until = NULL, updated_at = {now} \
             WHERE id = $1 AND owner = $2 AND (lease_until IS NULL OR lease_until < {now}) \
             RETURNING {DELIVERY_COLUMNS}",
            now = sql.now,
        )))
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await?;
        let exists = match row {
            Some(_) => true,
            None => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM webhook_deliveries WHERE id = $1 AND owner = $2",
                )
                .bind(id)
                .bind(owner)
                .fetch_one(pool)
                .await?
                    > 0
            }
        };
        (row, exists)
    });
    Ok(match (row, exists) {
        (Some(row), _) => Replay::Queued(Box::new(row)),
        (None, true) => Replay::InFlight,
        (None, false) => Replay::NotFound,
    })
}
