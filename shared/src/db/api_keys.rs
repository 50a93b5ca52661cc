//! `api_keys`: machine credentials. Only a SHA-256 of each key is stored; a key is looked up by its hash, which
//! reveals nothing about the key, and the stored hash is compared again in constant time.

use super::{Db, DbError, on_db};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Every key starts with this, so a bearer credential can be told from a JWT at a glance.
pub const KEY_PREFIX: &str = "igk_";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: uuid::Uuid,
    pub owner: String,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// What the key may spend per UTC day and month (its owner's budget applies as well).
    pub budget_usd_micros_per_day: Option<i64>,
    pub budget_usd_micros_per_month: Option<i64>,
}

const KEY_COLUMNS: &str = "id, owner, name, prefix, created_at, expires_at, revoked_at, \
    budget_usd_micros_per_day, budget_usd_micros_per_month";

/// Who a presented key acts for, and the key's own budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    pub id: uuid::Uuid,
    pub owner: String,
    pub budget_usd_micros_per_day: Option<i64>,
    pub budget_usd_micros_per_month: Option<i64>,
}

/// A new random key (`igk_` + 43 URL-safe characters, 256 bits) and the hash to store.
pub fn generate() -> (String, String) {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash(&key);
    (key, hash)
}

pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Records a key; `expires_days` from now, if given.
pub async fn create(
    db: &Db,
    owner: &str,
    name: &str,
    key: &str,
    expires_days: Option<u32>,
) -> Result<ApiKeyRecord, DbError> {
    let prefix: String = key.chars().take(KEY_PREFIX.len() + 6).collect();
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, ApiKeyRecord>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO api_keys (id, owner, name, prefix, key_hash, expires_at) \
             VALUES ($1, $2, $3, $4, $5, CASE WHEN $6 IS NULL THEN NULL ELSE {expires} END) \
             RETURNING {KEY_COLUMNS}",
            expires = sql.now_plus("$6"),
        )))
        .bind(uuid::Uuid::now_v7())
        .bind(owner)
        .bind(name)
        .bind(&prefix)
        .bind(hash(key))
        .bind(expires_days.map(|d| f64::from(d) * 86_400.0))
        .fetch_one(pool)
        .await?
    });
    Ok(row)
}

/// The key's identity and budget, if it exists, is not revoked and has not expired.
pub async fn identify(db: &Db, key: &str) -> Result<Option<KeyIdentity>, DbError> {
    identify_hash(db, &hash(key)).await
}

/// `identify`, given the key's hash (`hash`).
pub async fn identify_hash(db: &Db, wanted: &str) -> Result<Option<KeyIdentity>, DbError> {
    type Row = (uuid::Uuid, String, String, Option<i64>, Option<i64>);
    let row: Option<Row> = on_db!(db, |pool, sql| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, owner, key_hash, budget_usd_micros_per_day, budget_usd_micros_per_month FROM api_keys \
             WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {now})",
            now = sql.now,
        )))
        .bind(wanted)
        .fetch_optional(pool)
        .await?
    });
    Ok(row
        .filter(|(_, _, stored, _, _)| constant_time_eq(stored.as_bytes(), wanted.as_bytes()))
        .map(|(id, owner, _, day, month)| KeyIdentity {
            id,
            owner,
            budget_usd_micros_per_day: day,
            budget_usd_micros_per_month: month,
        }))
}

pub async fn list(db: &Db) -> Result<Vec<ApiKeyRecord>, DbError> {
    let rows = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, ApiKeyRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY owner, created_at"
        )))
        .fetch_all(pool)
        .await?
    });
    Ok(rows)
}

/// Sets a key's budget (replacing both limits; `None`: no limit of the key's own). `None` if no such key.
pub async fn set_budget(
    db: &Db,
    id: uuid::Uuid,
    per_day: Option<i64>,
    per_month: Option<i64>,
) -> Result<Option<ApiKeyRecord>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, ApiKeyRecord>(sqlx::AssertSqlSafe(format!(
            "UPDATE api_keys SET budget_usd_micros_per_day = $2, budget_usd_micros_per_month = $3 \
             WHERE id = $1 RETURNING {KEY_COLUMNS}"
        )))
        .bind(id)
        .bind(per_day)
        .bind(per_month)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Revokes the key with this id or prefix; returns how many keys that was (0 or 1; a prefix shared by several
/// keys revokes none and says so).
pub async fn revoke(db: &Db, id_or_prefix: &str) -> Result<u64, DbError> {
    let id = uuid::Uuid::parse_str(id_or_prefix).ok();
    let matching: i64 = on_db!(db, |pool, sql| {
        sqlx::query_scalar(
            "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL AND (id = $1 OR prefix = $2)",
        )
        .bind(id)
        .bind(id_or_prefix)
        .fetch_one(pool)
        .await?
    });
    if matching != 1 {
        return Ok(0);
    }
    let affected = on_db!(db, |pool, sql| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE api_keys SET revoked_at = {now} WHERE revoked_at IS NULL AND (id = $1 OR prefix = $2)",
            now = sql.now,
        )))
        .bind(id)
        .bind(id_or_prefix)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(affected)
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_stored_as_hashes() {
        let (a, hash_a) = generate();
        let (b, _) = generate();
        assert!(
            a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 43,
            "{a}"
        );
        assert_ne!(a, b);
        assert_eq!(hash_a, hash(&a));
        assert_eq!(hash_a.len(), 64);
        assert!(!hash_a.contains(&a[KEY_PREFIX.len()..]));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
