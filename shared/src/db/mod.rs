//! The job store: the database is the truth. Queries live here, one module per table; every state change is a
//! conditional UPDATE so a job delivered twice can be finished only once and never moves backwards.
//!
//! Two implementations behind one interface: Postgres for deployments (many API and worker processes) and an
//! embedded SQLite file for the single-process standalone mode. Callers hold a [`Db`] and never learn which one
//! it is; the few places where the two SQL dialects differ ask [`Dialect`].

pub mod api_keys;
pub mod batches;
pub mod budgets;
pub mod costs;
pub mod group_attempt;
pub mod group_charge;
pub mod group_claim;
pub mod group_insert;
pub mod group_settle;
pub mod group_success;
pub mod idempotency;
pub mod images;
pub mod job_inputs;
pub mod job_parts;
pub mod jobs;
pub mod pending;
pub mod reconcile;
pub mod retention;
pub mod webhooks;

pub use batches::BatchRecord;
pub use images::{ImageRecord, NewImage};
pub use job_parts::JobParts;
pub use jobs::{JobFailure, JobRecord, NewJob, RouteAttempt, Served, Succeeded};

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// How long a request waits for a pooled connection before the API answers 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection idle longer than this is pinged before use (a Postgres restart or an idle-session timeout
/// may have closed it). One busy just now is not: sqlx's default pings on every acquisition, which doubled the round
/// trips of every single-statement query under load (see docs/performance.md).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);
/// How long a SQLite writer waits for another writer before giving up with "database is locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection pool on one of the two supported databases. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl From<PgPool> for Db {
    fn from(pool: PgPool) -> Self {
        Db::Postgres(pool)
    }
}

impl From<SqlitePool> for Db {
    fn from(pool: SqlitePool) -> Self {
        Db::Sqlite(pool)
    }
}

/// A `FROM` item that turns `synchronous_commit` off for the statement's own transaction only (`set_config`'s
/// `is_local`): the pool's connection is back to the server's setting after it. Postgres only.
macro_rules! unflushed_commit_item {
    () => {
        "(SELECT set_config('synchronous_commit', 'off', true)) AS unflushed_commit"
    };
}
pub(crate) const UNFLUSHED_COMMIT_ITEM: &str = unflushed_commit_item!();

/// Where the SQL of the two databases differs. Timestamps in SQLite are RFC 3339 text with millisecond precision
/// and a `+00:00` offset, written only by SQL (never bound from Rust), so text order is time order.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// The current time.
    pub now: &'static str,
    /// `a IS DISTINCT FROM b`.
    pub distinct: &'static str,
    /// Opens a transaction; SQLite's takes the write lock at once so two writers queue instead of failing.
    pub begin: &'static str,
    /// A `FROM` item for an `UPDATE` whose commit need not wait for the disk (see [`Dialect::unflushed_commit`]).
    unflushed_commit: &'static str,
    sqlite: bool,
}

pub(crate) const POSTGRES: Dialect = Dialect {
    now: "now()",
    distinct: "IS DISTINCT FROM",
    begin: "BEGIN",
    unflushed_commit: concat!("FROM ", unflushed_commit_item!()),
    sqlite: false,
};

pub(crate) const SQLITE: Dialect = Dialect {
    now: "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')",
    distinct: "IS NOT",
    begin: "BEGIN IMMEDIATE",
    unflushed_commit: "",
    sqlite: true,
};

impl Dialect {
    /// Goes between an `UPDATE`'s `SET` and `WHERE` so its commit answers before its WAL record is on disk
    /// (Postgres' `synchronous_commit = off`, for this transaction only): one disk flush (0.1 to 0.5 ms) off the
    /// statement's round trip. Only for a write whose loss in a Postgres crash is harmless: the WAL is flushed in
    /// order, so the next ordinary commit that writes WAL (any session's) makes it durable too, and a crash before
    /// that also fails whatever the writer does next with it. SQLite has no such setting; nothing there.
    pub fn unflushed_commit(&self) -> &'static str {
        self.unflushed_commit
    }

    /// The current time plus `secs` seconds, `secs` being a placeholder or expression of type double.
    pub fn now_plus(&self, secs: &str) -> String {
        if self.sqlite {
            format!("strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', ({secs}) || ' seconds')")
        } else {
            format!("(now() + make_interval(secs => ({secs})::double precision))")
        }
    }

    /// The current time minus `secs` seconds.
    pub fn now_minus(&self, secs: &str) -> String {
        if self.sqlite {
            format!("strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-' || ({secs}) || ' seconds')")
        } else {
            format!("(now() - make_interval(secs => ({secs})::double precision))")
        }
    }

    /// A timestamp placeholder bound as text (see [`Dialect::format_timestamp`]).
    pub fn timestamp(&self, param: &str) -> String {
        if self.sqlite {
            param.to_owned()
        } else {
            format!("{param}::timestamptz")
        }
    }

    /// A timestamp as text this database compares exactly with its stored ones (SQLite keeps milliseconds).
    pub fn format_timestamp(&self, at: chrono::DateTime<chrono::Utc>) -> String {
        if self.sqlite {
            at.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string()
        } else {
            at.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
        }
    }

    /// `column` (a JSON object of counters) with `key` (a placeholder) incremented by one.
    pub fn json_increment(&self, column: &str, key: &str) -> String {
        if self.sqlite {
            format!(
                "json_set({column}, '$.\"' || {key} || '\"', \
                    COALESCE(CAST({column} ->> {key} AS INTEGER), 0) + 1)"
            )
        } else {
            format!(
                "jsonb_set({column}, ARRAY[{key}::text], \
                    to_jsonb(COALESCE(CAST({column} ->> {key} AS INTEGER), 0) + 1))"
            )
        }
    }

    /// `column IN (...)` over `count` placeholders starting at `$first` (Postgres takes one array instead).
    pub fn in_list(&self, column: &str, first: usize, count: usize) -> String {
        if self.sqlite {
            let params: Vec<String> = (first..first + count).map(|i| format!("${i}")).collect();
            format!("{column} IN ({})", params.join(", "))
        } else {
            format!("{column} = ANY(${first})")
        }
    }

    /// Locks rows picked by a sub-select against concurrent reconcilers (SQLite has one writer anyway).
    pub fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    pub fn skip_locked(&self) -> &'static str {
        if self.sqlite {
            ""
        } else {
            "FOR UPDATE SKIP LOCKED"
        }
    }
}

/// Runs `$body` with `$pool` bound to the concrete pool and `$sql` to its [`Dialect`]: the body is compiled once
/// per database, so one query text with dialect fragments serves both.
macro_rules! on_db {
    ($db:expr, |$pool:ident, $sql:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($pool) => {
                #[allow(unused_variables)]
                let $sql = &$crate::db::POSTGRES;
                $body
            }
            $crate::db::Db::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $sql = &$crate::db::SQLITE;
                $body
            }
        }
    };
}
pub(crate) use on_db;

/// One pooled connection held for a sequence of queries: a submission's reads (Idempotency-Key, budget row) and its
/// insert wait for the pool once, not once per query. Under a burst every acquisition queues behind all the others,
/// so a request that acquires three times waits three queues' length (the 503s of bench scenario 3, issue 19).
pub enum Session {
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
}

impl Db {
    /// How many connections the pool opens at most.
    pub fn max_connections(&self) -> usize {
        let max = match self {
            Db::Postgres(pool) => pool.options().get_max_connections(),
            Db::Sqlite(pool) => pool.options().get_max_connections(),
        };
        usize::try_from(max).unwrap_or(usize::MAX)
    }

    /// A connection from the pool, held until the session is dropped.
    pub async fn session(&self) -> Result<Session, DbError> {
        Ok(match self {
            Db::Postgres(pool) => Session::Postgres(pool.acquire().await?),
            Db::Sqlite(pool) => Session::Sqlite(pool.acquire().await?),
        })
    }
}

/// `on_db!` for a [`Session`]: `$conn` bound to the concrete `&mut` connection, `$sql` to its [`Dialect`].
macro_rules! on_session {
    ($session:expr, |$c:ident, $sql:ident| $body:expr) => {
        match $session {
            $crate::db::Session::Postgres(pooled) => {
                let $c: &mut sqlx::PgConnection = &mut **pooled;
                #[allow(unused_variables)]
                let $sql = &$crate::db::POSTGRES;
                $body
            }
            $crate::db::Session::Sqlite(pooled) => {
                let $c: &mut sqlx::SqliteConnection = &mut **pooled;
                #[allow(unused_variables)]
                let $sql = &$crate::db::SQLITE;
                $body
            }
        }
    };
}
pub(crate) use on_session;

/// A connection inside a transaction the caller opened, on either database: how a query function of one table's
/// module joins a transaction opened elsewhere (the reconciler's pass runs `jobs` updates under its advisory lock).
/// Inside an `on_db!` body, `Conn::from(&mut *tx)` picks the right variant.
pub(crate) enum Conn<'c> {
    Postgres(&'c mut sqlx::PgConnection),
    Sqlite(&'c mut sqlx::SqliteConnection),
}

impl<'c> From<&'c mut sqlx::PgConnection> for Conn<'c> {
    fn from(conn: &'c mut sqlx::PgConnection) -> Self {
        Conn::Postgres(conn)
    }
}

impl<'c> From<&'c mut sqlx::SqliteConnection> for Conn<'c> {
    fn from(conn: &'c mut sqlx::SqliteConnection) -> Self {
        Conn::Sqlite(conn)
    }
}

/// `on_db!` for a [`Conn`]: `$conn` bound to the concrete connection, `$sql` to its [`Dialect`].
macro_rules! on_conn {
    ($conn:expr, |$c:ident, $sql:ident| $body:expr) => {
        match $conn {
            $crate::db::Conn::Postgres($c) => {
                #[allow(unused_variables)]
                let $sql = &$crate::db::POSTGRES;
                $body
            }
            $crate::db::Conn::Sqlite($c) => {
                #[allow(unused_variables)]
                let $sql = &$crate::db::SQLITE;
                $body
            }
        }
    };
}
pub(crate) use on_conn;

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
            // Postgres: connection exceptions and admin shutdown. SQLite: busy or locked past the busy timeout.
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08") || c == "57P01" || c == "5" || c == "6"
                }) =>
            {
                DbError::Unavailable(e)
            }
            other => DbError::Query(other),
        }
    }
}

/// Opens the database named by `url`: `postgres://...` (connected lazily, so a process starts and reports
/// not-ready while Postgres is still coming up) or `sqlite:PATH` (the file and its directory are created).
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Db, sqlx::Error> {
    if let Some(path) = sqlite_path(url) {
        if let Some(dir) = std::path::Path::new(path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.clamp(1, 8))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        return Ok(Db::Sqlite(pool));
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy(url)?;
    Ok(Db::Postgres(pool))
}

/// The file path of a `sqlite:` URL, `None` for any other URL.
pub fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    Some(rest.split('?').next().unwrap_or(rest))
}

impl Db {
    /// `postgres` or `sqlite`, for logs and health output.
    pub fn kind(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }
}

/// Applies the schema. Postgres migrations may run from several processes at once (sqlx takes an advisory lock).
pub async fn migrate(db: &Db) -> Result<(), sqlx::migrate::MigrateError> {
    match db {
        Db::Postgres(pool) => sqlx::migrate!("../migrations").run(pool).await,
        Db::Sqlite(pool) => sqlx::migrate!("../migrations/sqlite").run(pool).await,
    }
}

pub async fn ping(db: &Db) -> Result<(), DbError> {
    on_db!(db, |pool, sql| {
        sqlx::query("SELECT 1").execute(pool).await?;
    });
    Ok(())
}
