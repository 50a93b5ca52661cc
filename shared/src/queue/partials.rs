//! Partial pictures of a job while its provider streams them (OpenAI-compatible `stream: true` with
//! `partial_images`): the worker publishes each as it arrives, the API request streaming that job's answer listens.
//! Best effort, like OpenAI's own: a frame published before anyone listens is gone, and the finished pictures come
//! from the job store anyway. On Redis a channel per job (`{queue}:partials:{job}`); in process a broadcast channel.

use crate::domain::JobId;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Frames buffered for a listener (each is a whole picture in base64; three per picture at most).
const FRAME_BUFFER: usize = 32;
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialFrame {
    pub job_id: JobId,
    /// Which picture of the job (0-based).
    pub image_index: u32,
    /// Which partial of that picture (0-based), as OpenAI numbers them.
    pub partial_image_index: u32,
    pub b64_json: String,
}

fn channel(queue_name: &str, job: JobId) -> String {
    format!("{queue_name}:partials:{job}")
}

pub(super) async fn publish_redis(
    conn: &ConnectionManager,
    queue_name: &str,
    frame: &PartialFrame,
) -> Result<(), redis::RedisError> {
    let payload = serde_json::to_vec(frame).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::Client, "serialise frame", e.to_string()))
    })?;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel(queue_name, frame.job_id))
        .arg(payload)
        .query_async(&mut conn.clone())
        .await?;
    Ok(())
}

/// Listens to one job's frames; returns once subscribed, so what is published after it is heard.
pub(super) async fn subscribe_redis(
    client: redis::Client,
    queue_name: &str,
    job: JobId,
    stop: CancellationToken,
) -> Result<mpsc::Receiver<PartialFrame>, redis::RedisError> {
    let name = channel(queue_name, job);
    let pubsub = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&name).await?;
        Ok::<_, redis::RedisError>(pubsub)
    })
    .await
    .map_err(|_| {
        redis::RedisError::from((redis::ErrorKind::Io, "subscribe timed out", name.clone()))
    })??;
    let (tx, rx) = mpsc::channel(FRAME_BUFFER);
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                msg = messages.next() => match msg {
                    Some(msg) => {
                        if let Ok(frame) = serde_json::from_slice::<PartialFrame>(msg.get_payload_bytes())
                            && tx.try_send(frame).is_err()
                            && tx.is_closed()
                        {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    });
    Ok(rx)
}

/// The in-process queue's frames.
pub(super) struct LocalPartials(broadcast::Sender<PartialFrame>);

impl Default for LocalPartials {
    fn default() -> Self {
        Self(broadcast::channel(FRAME_BUFFER).0)
    }
}

impl LocalPartials {
    pub(super) fn publish(&self, frame: &PartialFrame) {
        // Nobody listening is fine: frames are best effort.
        let _ = self.0.send(frame.clone());
    }

    pub(super) fn subscribe(
        &self,
        job: JobId,
        stop: CancellationToken,
    ) -> mpsc::Receiver<PartialFrame> {
        let mut frames = self.0.subscribe();
        let (tx, rx) = mpsc::channel(FRAME_BUFFER);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    frame = frames.recv() => match frame {
                        Ok(frame) if frame.job_id == job => {
                            let _ = tx.try_send(frame);
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        rx
    }
}
