//! Each job's and batch's recent events, so a live event stream can send what came before it connected and resume
//! after a reconnect (SSE `Last-Event-ID`) without reading the database. Publishing an event appends it here and
//! broadcasts it in one step, and the append gives the event its id, so a stream that reads the history and then
//! listens can tell by id what it has already sent.
//!
//! On Redis: a stream per job and per batch (`{queue}:history:job:{id}`, `XADD` ids `<ms>-<seq>`), capped and
//! expiring an hour after its last event, written and published by one script. In process: the same, in memory,
//! with ids `0-<n>` from one counter.

use super::signals::JobEvent;
use crate::domain::{BatchId, JobId};
use redis::aio::ConnectionManager;
use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// How long a history outlives its last event.
pub const HISTORY_TTL: Duration = Duration::from_secs(3600);
/// Events kept per job (a job has a handful: one per attempt, retry or failover, and its end).
const JOB_EVENTS: usize = 256;
/// Events kept per batch.
const BATCH_EVENTS: usize = 8192;
/// Histories kept in process (standalone): the oldest is forgotten first.
const LOCAL_STREAMS: usize = 20_000;

/// Whose history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Job(JobId),
    Batch(BatchId),
}

impl Stream {
    fn key(self, queue_name: &str) -> String {
        match self {
            Stream::Job(id) => format!("{queue_name}:history:job:{id}"),
            Stream::Batch(id) => format!("{queue_name}:history:batch:{id}"),
        }
    }

    /// The event's id in this history.
    pub fn id_of(self, event: &JobEvent) -> Option<&str> {
        match self {
            Stream::Job(_) => event.id.as_deref(),
            Stream::Batch(_) => event.batch_event_id.as_deref(),
        }
    }
}

/// Orders two event ids (`<ms>-<seq>`); a malformed id sorts first.
pub fn compare_ids(a: &str, b: &str) -> Ordering {
    fn parts(id: &str) -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parts(a).cmp(&parts(b))
}

/// Appends the event to its job's (and batch's) history and publishes it, ids included, on `channel`.
static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local ev = ARGV[2]
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'e', ev)
redis.call('EXPIRE', KEYS[1], ARGV[3])
local bid = ''
local out = '{"id":"' .. id .. '"'
if #KEYS > 1 then
  bid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'e', ev)
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  out = out .. ',"batch_event_id":"' .. bid .. '"'
end
if #ARGV[6] > 0 then
  out = out .. ',"answer":' .. ARGV[6]
end
redis.call('PUBLISH', ARGV[1], out .. ',' .. string.sub(ev, 2))
return {id, bid}
"#,
    )
});

/// Records and publishes `event` on Redis; returns it with its ids.
pub(super) async fn publish_redis(
    conn: &ConnectionManager,
    queue_name: &str,
    channel: &str,
    event: &JobEvent,
) -> Result<JobEvent, redis::RedisError> {
    let mut bare = event.clone();
    bare.id = None;
    bare.batch_event_id = None;
    let serialise = |e: serde_json::Error| {
        redis::RedisError::from((redis::ErrorKind::Client, "serialise event", e.to_string()))
    };
    // The answer is published beside the event, not appended to its history (`ARGV[6]`, empty for none).
    let answer = match bare.answer.take() {
        Some(answer) => serde_json::to_string(&*answer.0).map_err(serialise)?,
        None => String::new(),
    };
    let payload = serde_json::to_string(&bare).map_err(serialise)?;
    let mut invocation = PUBLISH.prepare_invoke();
    invocation.key(Stream::Job(event.job_id).key(queue_name));
    if let Some(batch) = event.batch_id {
        invocation.key(Stream::Batch(batch).key(queue_name));
    }
    let (id, batch_id): (String, String) = invocation
        .arg(channel)
        .arg(payload)
        .arg(HISTORY_TTL.as_secs())
        .arg(JOB_EVENTS)
        .arg(BATCH_EVENTS)
        .arg(answer)
        .invoke_async(&mut conn.clone())
        .await?;
    bare.id = Some(id);
    bare.batch_event_id = (!batch_id.is_empty()).then_some(batch_id);
    Ok(bare)
}

/// The events of `stream` after `after` (all kept ones without it), oldest first.
pub(super) async fn read_redis(
    conn: &ConnectionManager,
    queue_name: &str,
    stream: Stream,
    after: Option<&str>,
) -> Result<Vec<JobEvent>, redis::RedisError> {
    let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream.key(queue_name))
        .arg(start)
        .arg("+")
        .query_async(&mut conn.clone())
        .await?;
    Ok(entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let (_, json) = fields.into_iter().find(|(name, _)| name == "e")?;
            let mut event: JobEvent = serde_json::from_str(&json).ok()?;
            match stream {
                Stream::Job(_) => event.id = Some(id),
                Stream::Batch(_) => event.batch_event_id = Some(id),
            }
            Some(event)
        })
        .collect())
}

/// The in-process histories (standalone mode).
#[derive(Default)]
pub(super) struct LocalHistory {
    inner: Mutex<LocalInner>,
}

#[derive(Default)]
struct LocalInner {
    next: u64,
    streams: HashMap<Stream, VecDeque<JobEvent>>,
    /// Streams in the order they were created, to forget the oldest.
    order: VecDeque<Stream>,
}

impl LocalInner {
    fn append(&mut self, stream: Stream, event: JobEvent, cap: usize) {
        let events = match self.streams.get_mut(&stream) {
            Some(events) => events,
            None => {
                if self.order.len() >= LOCAL_STREAMS
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.streams.remove(&oldest);
                }
                self.order.push_back(stream);
                self.streams.entry(stream).or_default()
            }
        };
        if events.len() >= cap {
            events.pop_front();
        }
        events.push_back(event);
    }
}

impl LocalHistory {
    /// Gives `event` its ids and keeps it.
    pub(super) fn record(&self, event: &JobEvent) -> JobEvent {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.next += 1;
        let id = format!("0-{}", inner.next);
        let mut event = event.clone();
        event.id = Some(id.clone());
        event.batch_event_id = event.batch_id.map(|_| id);
        // The answer goes to this moment's waiters only; the history keeps the bare event.
        let answer = event.answer.take();
        inner.append(Stream::Job(event.job_id), event.clone(), JOB_EVENTS);
        if let Some(batch) = event.batch_id {
            inner.append(Stream::Batch(batch), event.clone(), BATCH_EVENTS);
        }
        event.answer = answer;
        event
    }

    pub(super) fn read(&self, stream: Stream, after: Option<&str>) -> Vec<JobEvent> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .streams
            .get(&stream)
            .map(|events| {
                events
                    .iter()
                    .filter(|e| {
                        after.is_none_or(|after| {
                            stream
                                .id_of(e)
                                .is_some_and(|id| compare_ids(id, after) == Ordering::Greater)
                        })
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobStatus;

    #[test]
    fn ids_order_by_time_then_sequence() {
        assert_eq!(compare_ids("1-2", "1-10"), Ordering::Less);
        assert_eq!(compare_ids("2-0", "1-99"), Ordering::Greater);
        assert_eq!(compare_ids("0-7", "0-7"), Ordering::Equal);
    }

    #[test]
    fn local_history_resumes_after_an_id_and_keeps_batches_apart() {
        let history = LocalHistory::default();
        let (job, batch) = (JobId::new(), BatchId::new());
        let first = history.record(&JobEvent::status(job, Some(batch), JobStatus::Running));
        let second = history.record(&JobEvent::status(job, Some(batch), JobStatus::Succeeded));
        let other = history.record(&JobEvent::status(JobId::new(), None, JobStatus::Running));
        assert_eq!(
            history.read(Stream::Job(job), None),
            vec![first.clone(), second.clone()]
        );
        assert_eq!(
            history.read(Stream::Job(job), first.id.as_deref()),
            vec![second.clone()]
        );
        assert_eq!(history.read(Stream::Batch(batch), None).len(), 2);
        assert!(other.batch_event_id.is_none());
        assert!(
            history
                .read(Stream::Job(job), second.id.as_deref())
                .is_empty()
        );
    }
}
