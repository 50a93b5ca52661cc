//! The three stores every process shares: the job store (database), the job queue and the fleet's provider
//! limits (and the Redis connection behind the last two, which the API's per-owner limits use too). Deployments
//! put them in Postgres and Redis; the standalone mode may keep the queue and limits in process and the database in
//! a SQLite file. The API and the workers take a [`Backends`] and never ask which; only the standalone start-up
//! asks whether it is the whole fleet ([`Backends::is_fleet_of_one`]).

use crate::budget::BudgetLedger;
use crate::db::{self, Db};
use crate::limits::FleetLimits;
use crate::queue::{JobQueue, redis_connection};
use anyhow::Context;

#[derive(Clone)]
pub struct Backends {
    pub db: Db,
    pub queue: JobQueue,
    pub limits: FleetLimits,
    /// Budget counters: reserved by the API at submission, settled by whoever ends a job.
    pub budgets: BudgetLedger,
    /// The Redis behind the queue and limits, and the deployment's key prefix (`None`: all in process).
    redis: Option<(redis::aio::ConnectionManager, String)>,
    /// The client behind that connection, for pub/sub subscriptions of the API's own.
    redis_client: Option<redis::Client>,
    /// Where the database and the queue are, for the start-up log: the SQLite file's absolute path, or the URLs
    /// without their passwords.
    locations: (String, String),
}

impl Backends {
    /// Opens the database at `database_url` and the queue on `redis_url`, or in process when `redis_url` is
    /// `None`. Nothing touches the network yet, so a process starts (and reports not-ready) while they come up.
    pub fn connect(
        database_url: &str,
        max_connections: u32,
        redis_url: Option<&str>,
        queue_name: &str,
    ) -> anyhow::Result<Self> {
        let db =
            db::connect_lazy(database_url, max_connections).context("DATABASE_URL: invalid")?;
        let db_location = match db::sqlite_path(database_url) {
            Some(path) => std::path::absolute(path)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| path.to_owned()),
            None => crate::config::redacted_url(database_url),
        };
        let queue_location = redis_url.map_or_else(String::new, |url| {
            format!(
                " {} (prefix {queue_name})",
                crate::config::redacted_url(url)
            )
        });
        let (queue, limits, budgets, redis, redis_client) = match redis_url {
            Some(url) => {
                let (client, conn) = redis_connection(url).context("REDIS_URL: invalid")?;
                (
                    JobQueue::redis(Some(client.clone()), conn.clone(), queue_name),
                    FleetLimits::new(conn.clone(), queue_name),
                    BudgetLedger::redis(conn.clone(), queue_name),
                    Some((conn, queue_name.to_owned())),
                    Some(client),
                )
            }
            None => (
                JobQueue::local(),
                FleetLimits::local(),
                BudgetLedger::local(),
                None,
                None,
            ),
        };
        Ok(Self {
            db,
            queue,
            limits,
            budgets,
            redis,
            redis_client,
            locations: (db_location, queue_location),
        })
    }

    /// This process is the whole fleet: its queue lives in process, so no other process can take its jobs, and
    /// whatever was left unfinished when it last stopped is its own to resume (the standalone mode).
    pub fn is_fleet_of_one(&self) -> bool {
        self.redis.is_none()
    }

    /// The Redis connection and the deployment's key prefix (QUEUE_NAME), for other fleet-wide state.
    pub fn redis_with_prefix(&self) -> Option<(redis::aio::ConnectionManager, &str)> {
        self.redis
            .as_ref()
            .map(|(conn, prefix)| (conn.clone(), prefix.as_str()))
    }

    /// The Redis client, the connection and the deployment's key prefix, for a subscription of one's own.
    pub fn redis_client_with_prefix(
        &self,
    ) -> Option<(redis::Client, redis::aio::ConnectionManager, &str)> {
        match (&self.redis_client, &self.redis) {
            (Some(client), Some((conn, prefix))) => {
                Some((client.clone(), conn.clone(), prefix.as_str()))
            }
            _ => None,
        }
    }

    /// Where each store lives, for the start-up log (paths resolved, no secrets).
    pub fn describe(&self) -> String {
        format!(
            "database={} {} queue={}{}",
            self.db.kind(),
            self.locations.0,
            self.queue.describe(),
            self.locations.1
        )
    }
}
