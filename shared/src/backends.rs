//! The three stores every process shares: the job store (database), the job queue and the fleet's provider
//! limits. Deployments put them in Postgres and Redis; the standalone mode may keep the queue and limits in
//! process and the database in a SQLite file. The API and the workers take a [`Backends`] and never ask which.

use crate::db::{self, Db};
use crate::limits::FleetLimits;
use crate::owner_limits::OwnerLimits;
use crate::queue::{JobQueue, redis_connection};
use anyhow::Context;

#[derive(Clone)]
pub struct Backends {
    pub db: Db,
    pub queue: JobQueue,
    pub limits: FleetLimits,
    /// Per-owner rate limits and quotas.
    pub owners: OwnerLimits,
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
        let (queue, limits, owners) = match redis_url {
            Some(url) => {
                let (client, conn) = redis_connection(url).context("REDIS_URL: invalid")?;
                (
                    JobQueue::redis(Some(client), conn.clone(), queue_name),
                    FleetLimits::new(conn.clone(), queue_name),
                    OwnerLimits::new(conn, queue_name),
                )
            }
            None => (
                JobQueue::local(),
                FleetLimits::local(),
                OwnerLimits::local(),
            ),
        };
        Ok(Self {
            db,
            queue,
            limits,
            owners,
        })
    }

    /// The Redis connection behind the queue (`None` in process), for the apalis consumer.
    pub fn redis_connection(&self) -> Option<redis::aio::ConnectionManager> {
        self.queue.redis_connection()
    }

    /// Where each store lives, for the start-up log.
    pub fn describe(&self) -> String {
        format!(
            "database={} queue={}",
            self.db.kind(),
            if self.queue.is_local() {
                "in-process"
            } else {
                "redis"
            }
        )
    }
}
