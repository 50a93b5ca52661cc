//! Against the real Redis at $REDIS_URL. apalis-redis promotes every due message inside one Lua `unpack`, which
//! fails beyond about 8,000 values; a backlog that large would make every worker's fetch fail forever.
//! `RedisQueue::promote_due` moves a pile-up in chunks.

use super::{RedisQueue, redis_connection};
use crate::domain::JobId;
use crate::queue::message::JobMessage;

#[tokio::test]
async fn a_pile_up_of_due_messages_is_promoted_in_chunks() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (client, conn) = redis_connection(&url).expect("redis");
    let name = format!("pileup-test-{}", uuid::Uuid::new_v4().simple());
    let queue = RedisQueue::new(Some(client), conn.clone(), &name);
    let config = queue.config.clone();
    // 9,000 messages, as a burst of submissions leaves them while every worker is busy (pushed in parallel).
    let mut pushes = Vec::new();
    for chunk in 0..30 {
        let queue = queue.clone();
        pushes.push(tokio::spawn(async move {
            for i in 0..300 {
                queue
                    .push(JobMessage {
                        job_id: JobId::new(),
                        correlation_id: format!("c{chunk}-{i}"),
                    })
                    .await
                    .expect("push");
            }
        }));
    }
    for p in pushes {
        p.await.expect("pusher");
    }
    let mut conn = conn;
    let scheduled: u64 = redis::cmd("ZCARD")
        .arg(config.scheduled_jobs_set())
        .query_async(&mut conn)
        .await
        .expect("zcard");
    assert_eq!(
        scheduled, 9000,
        "apalis queues every message through its scheduled set"
    );
    // Due within the same second they were pushed: wait for the clock to pass it.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let moved = queue.promote_due().await.expect("promote");
    assert!(moved >= 8000, "moved {moved}");
    let (left, active): (u64, u64) = redis::pipe()
        .zcard(config.scheduled_jobs_set())
        .llen(config.active_jobs_list())
        .query_async(&mut conn)
        .await
        .expect("counts");
    assert!(left <= 1000, "left {left}");
    assert_eq!(left + active, 9000, "nothing lost");
    assert_eq!(queue.depth().await.expect("depth"), 9000);

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{name}*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    for chunk in keys.chunks(500) {
        let _: i64 = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
}
