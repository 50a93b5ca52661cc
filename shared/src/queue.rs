//! The job queue (apalis-redis). A message only wakes a worker: it carries the job id and the correlation id, never
//! the request itself, which lives in Postgres.

use crate::domain::JobId;
use apalis::prelude::TaskSink;
use apalis_redis::{ConnectionManager, RedisStorage};
use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bounds on every Redis call, so a dead Redis turns into a quick 503 instead of a hung request.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a worker tells Redis it is alive (an idle worker also looks for due and delayed messages then), and
/// how many beats it may miss before its in-flight jobs go back to the queue: 1 s x 25 = within about 25-30 s.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
pub const MISSED_HEARTBEATS: usize = 25;

/// The pub/sub channel on which the API nudges idle workers after queueing work.
pub fn wake_channel(queue_name: &str) -> String {
    format!("{queue_name}:wake")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: JobId,
    pub correlation_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("could not enqueue job: {0}")]
    Push(String),
}

/// A Redis connection that reconnects by itself, created without touching the network so a process can start
/// (and report not-ready) while Redis is down.
pub fn redis_connection(
    url: &str,
) -> Result<(redis::Client, ConnectionManager), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
        .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok((client, manager))
}

/// The apalis-redis settings every process of a deployment must agree on.
pub fn apalis_config(queue_name: &str, batch_size: usize) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(format!("{queue_name}:jobs"))
        .batch_size(batch_size.max(1))
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .missed_heartbeats(MISSED_HEARTBEATS)
        // Results live in Postgres; keeping them in Redis too would only grow memory.
        .persist_results(false)
}

#[derive(Clone)]
pub struct JobQueue {
    storage: RedisStorage<JobMessage>,
    conn: ConnectionManager,
    config: apalis_redis::Config,
    wake_channel: String,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("queue", &self.config.queue)
            .finish()
    }
}

impl JobQueue {
    pub fn new(conn: ConnectionManager, queue_name: &str) -> Self {
        let config = apalis_config(queue_name, 1);
        let storage = RedisStorage::new(conn.clone()).with_config(config.clone());
        Self {
            storage,
            conn,
            config,
            wake_channel: wake_channel(queue_name),
        }
    }

    pub async fn push(&self, message: JobMessage) -> Result<(), QueueError> {
        let mut storage = self.storage.clone();
        storage
            .push(message)
            .await
            .map_err(|e| QueueError::Push(e.to_string()))?;
        self.wake_workers().await;
        Ok(())
    }

    /// Queues a message to be taken no earlier than `delay` from now (a job waiting for a busy or paused provider).
    pub async fn push_delayed(
        &self,
        message: JobMessage,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let mut storage = self.storage.clone();
        let task = apalis::prelude::TaskBuilder::new(message)
            .run_after(delay)
            .build();
        storage
            .push_task(task)
            .await
            .map_err(|e| QueueError::Push(e.to_string()))
    }

    /// Idle apalis workers only look at the queue again on their next heartbeat; this nudge makes them look now.
    /// Best effort: a lost nudge costs at most one heartbeat interval of latency.
    pub async fn wake_workers(&self) {
        let mut conn = self.conn.clone();
        let sent: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(&self.wake_channel)
            .arg("1")
            .query_async(&mut conn)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "could not nudge workers");
        }
    }

    /// Jobs waiting for a worker (ready now or scheduled for a retry).
    pub async fn depth(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let (active, scheduled): (u64, u64) = redis::pipe()
            .llen(self.config.active_jobs_list())
            .zcard(self.config.scheduled_jobs_set())
            .query_async(&mut conn)
            .await?;
        Ok(active + scheduled)
    }

    /// Tells every API process's waiters that a job changed (see `events`).
    pub async fn publish_event(&self, event: &crate::events::JobEvent) -> Result<(), QueueError> {
        let queue_name = self.wake_channel.trim_end_matches(":wake").to_owned();
        crate::events::publish(&self.conn, &queue_name, event).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    pub fn config(&self) -> &apalis_redis::Config {
        &self.config
    }
}
