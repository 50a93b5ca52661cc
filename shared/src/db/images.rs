//! `images` table: one row per stored picture, written in the same transaction that marks its job succeeded.

use super::DbError;
use super::{Db, on_db};
use crate::domain::{ImageId, JobId};
use chrono::{DateTime, Utc};

/// Also read from a JSON array of `IMAGE_COLUMNS`, in that order (`db::job_parts`): serde takes a struct from a
/// sequence field by field.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    pub id: ImageId,
    pub job_id: JobId,
    pub owner: crate::domain::OwnerId,
    pub position: i32,
    pub storage_key: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub width: i32,
    pub height: i32,
    pub revised_prompt: Option<String>,
    pub seed: Option<i64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewImage {
    pub id: ImageId,
    pub position: i32,
    pub storage_key: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub width: i32,
    pub height: i32,
    pub revised_prompt: Option<String>,
    pub seed: Option<i64>,
}

/// Binds the pictures' columns as ten arrays, in `NewImage`'s field order from `id` to `seed`: the `UNNEST` of a
/// success's image INSERT (`jobs::complete_succeeded`, `group_success`).
pub(crate) fn bind_new_images<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    images: &[&'q NewImage],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let column = |f: fn(&'q NewImage) -> &'q str| images.iter().map(|i| f(i)).collect::<Vec<_>>();
    query
        .bind(images.iter().map(|i| i.id.0).collect::<Vec<_>>())
        .bind(images.iter().map(|i| i.position).collect::<Vec<_>>())
        .bind(column(|i| &i.storage_key))
        .bind(column(|i| &i.content_type))
        .bind(images.iter().map(|i| i.size_bytes).collect::<Vec<_>>())
        .bind(column(|i| &i.sha256))
        .bind(images.iter().map(|i| i.width).collect::<Vec<_>>())
        .bind(images.iter().map(|i| i.height).collect::<Vec<_>>())
        .bind(
            images
                .iter()
                .map(|i| i.revised_prompt.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(images.iter().map(|i| i.seed).collect::<Vec<_>>())
}

pub(crate) const IMAGE_COLUMNS: &str = "id, job_id, owner, position, storage_key, content_type, size_bytes, sha256, width, \
    height, revised_prompt, seed, created_at";

/// Inserts one image row inside the caller's transaction (`$tx`). A macro because the transaction's type differs
/// per database.
macro_rules! insert_image {
    ($tx:expr, $sql:expr, $owner:expr, $job_id:expr, $image:expr) => {{
        let image: &$crate::db::images::NewImage = $image;
        sqlx::query_as::<_, $crate::db::images::ImageRecord>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO images (id, job_id, owner, position, storage_key, content_type, size_bytes, sha256, width, \
                height, revised_prompt, seed) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {}",
            $crate::db::images::IMAGE_COLUMNS
        )))
        .bind(image.id)
        .bind($job_id)
        .bind($owner)
        .bind(image.position)
        .bind(&image.storage_key)
        .bind(&image.content_type)
        .bind(image.size_bytes)
        .bind(&image.sha256)
        .bind(image.width)
        .bind(image.height)
        .bind(&image.revised_prompt)
        .bind(image.seed)
        .fetch_one(&mut *$tx)
        .await?
    }};
}
pub(crate) use insert_image;

pub async fn get_image(db: &Db, owner: &str, id: ImageId) -> Result<Option<ImageRecord>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, ImageRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1 AND owner = $2"
        )))
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Images of several jobs at once (one query for a page of jobs), ordered by job then position.
/// An image read for a signed download link, which proves its owner itself.
pub async fn get_image_unscoped(db: &Db, id: ImageId) -> Result<Option<ImageRecord>, DbError> {
    let row = on_db!(db, |pool, sql| {
        sqlx::query_as::<_, ImageRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

pub async fn images_for_jobs(
    db: &Db,
    owner: &str,
    jobs: &[JobId],
) -> Result<Vec<ImageRecord>, DbError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let rows = match db {
        Db::Postgres(pool) => {
            let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.0).collect();
            sqlx::query_as::<_, ImageRecord>(sqlx::AssertSqlSafe(format!(
                "SELECT {IMAGE_COLUMNS} FROM images WHERE job_id = ANY($1) AND owner = $2 \
                 ORDER BY job_id, position"
            )))
            .bind(&ids)
            .bind(owner)
            .fetch_all(pool)
            .await?
        }
        Db::Sqlite(pool) => {
            let mut query = sqlx::query_as::<_, ImageRecord>(sqlx::AssertSqlSafe(format!(
                "SELECT {IMAGE_COLUMNS} FROM images WHERE owner = $1 AND {} ORDER BY job_id, position",
                super::SQLITE.in_list("job_id", 2, jobs.len())
            )))
            .bind(owner);
            for job in jobs {
                query = query.bind(*job);
            }
            query.fetch_all(pool).await?
        }
    };
    Ok(rows)
}

pub async fn delete_image(db: &Db, owner: &str, id: ImageId) -> Result<bool, DbError> {
    let affected = on_db!(db, |pool, sql| {
        sqlx::query("DELETE FROM images WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(affected == 1)
}
