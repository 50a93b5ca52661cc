//! The job store: Postgres is the truth. Queries live here, one module per table; every state change is a
//! conditional UPDATE so a job delivered twice can be finished only once and never moves backwards.

pub mod batches;
pub mod idempotency;
pub mod images;
pub mod jobs;
pub mod pending;

pub use batches::BatchRecord;
pub use images::{ImageRecord, NewImage};
pub use jobs::{JobFailure, JobRecord, NewJob, RouteAttempt, Served};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

/// How long a request waits for a pooled connection before the API answers 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl DbError {
    /// Connection-level failures say "try again later" to clients; query errors are our bugs.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => DbError::Unavailable(e),
            sqlx::Error::Database(ref db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c == "57P01") =>
            {
                DbError::Unavailable(e)
            }
            other => DbError::Query(other),
        }
    }
}

/// Connects lazily so a process starts (and reports not-ready) while Postgres is still coming up.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy(url)
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations").run(pool).await
}

pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
