//! Job events over Redis pub/sub. Workers publish when a job reaches a terminal state; each API process holds one
//! subscription and wakes its waiters. Events are hints: a waiter always re-reads Postgres, so a lost event costs a
//! read, never a wrong answer.

use crate::domain::{JobId, JobStatus};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub status: JobStatus,
}

pub fn channel(queue_name: &str) -> String {
    format!("{queue_name}:events")
}

pub async fn publish(
    conn: &ConnectionManager,
    queue_name: &str,
    event: &JobEvent,
) -> Result<(), redis::RedisError> {
    let payload = serde_json::to_string(event).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::Client,
            "serialise job event",
            e.to_string(),
        ))
    })?;
    let mut conn = conn.clone();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel(queue_name))
        .arg(payload)
        .query_async(&mut conn)
        .await?;
    Ok(())
}
