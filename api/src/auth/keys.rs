//! API keys' verdicts, cached briefly so a request with a key does not cost a Postgres lookup each time.
//!
//! - A valid key is remembered for API_KEY_CACHE_SECS (default 5 s); an unknown, revoked or expired one for
//!   API_KEY_NEGATIVE_CACHE_SECS (default 30 s: a bad key sent again costs nothing). Each cache is bounded
//!   (`MAX_ENTRIES`); when full, expired entries go, and if that is not enough, all of them.
//! - A revocation (or a change of a key's budget) through the admin API forgets the key at once on every replica:
//!   the replica that made it publishes the key's id on Redis (`{queue}:keys`), and every API process holds its own
//!   subscription to that channel (reconnecting by itself). While a process is not subscribed it neither caches nor
//!   serves from the cache, so a revocation it could have missed never outlives the lost subscription. In the
//!   standalone mode the one process forgets the key itself.
//! - A key revoked behind the API's back (`imagegen keys revoke`, SQL) or one that expires stops working within
//!   API_KEY_CACHE_SECS.
//!
//! An epoch guards against a lookup that read the database before an invalidation and would cache its stale
//! verdict after it: every invalidation bumps the epoch, and a verdict is cached only if none happened meanwhile.

use futures::StreamExt;
use imagegen_shared::db::api_keys::KeyIdentity;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most keys each cache holds (valid ones, and unknown ones).
pub const MAX_ENTRIES: usize = 10_000;
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// What the database said about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid(KeyIdentity),
    /// Unknown, revoked or expired.
    Refused,
}

#[derive(Default)]
struct Entries {
    valid: HashMap<String, (KeyIdentity, Instant)>,
    refused: HashMap<String, Instant>,
    epoch: u64,
}

enum Channel {
    /// The standalone mode: this process is the only one.
    Local,
    /// Redis pub/sub: publish on `conn`, subscribe with `client`.
    Redis {
        client: redis::Client,
        conn: ConnectionManager,
        channel: String,
    },
}

pub struct KeyCache {
    valid_ttl: Duration,
    refused_ttl: Duration,
    entries: Mutex<Entries>,
    /// Whether invalidations reach this process (always in process; on Redis while subscribed).
    live: AtomicBool,
    channel: Channel,
}

/// The pub/sub channel of key invalidations.
pub fn channel_name(queue_name: &str) -> String {
    format!("{queue_name}:keys")
}

impl KeyCache {
    /// In-process invalidation (the standalone mode).
    pub fn local(valid_ttl: Duration, refused_ttl: Duration) -> Self {
        Self::with(valid_ttl, refused_ttl, Channel::Local, true)
    }

    /// Invalidation through Redis pub/sub; nothing is cached until [`KeyCache::listen`] has subscribed.
    pub fn redis(
        valid_ttl: Duration,
        refused_ttl: Duration,
        client: redis::Client,
        conn: ConnectionManager,
        queue_name: &str,
    ) -> Self {
        let channel = Channel::Redis {
            client,
            conn,
            channel: channel_name(queue_name),
        };
        Self::with(valid_ttl, refused_ttl, channel, false)
    }

    fn with(valid_ttl: Duration, refused_ttl: Duration, channel: Channel, live: bool) -> Self {
        Self {
            valid_ttl,
            refused_ttl,
            entries: Mutex::new(Entries::default()),
            live: AtomicBool::new(live),
            channel,
        }
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The cached verdict on the key with this hash, if any and still fresh.
    pub fn get(&self, hash: &str) -> Option<Verdict> {
        if !self.live() {
            return None;
        }
        let now = Instant::now();
        let entries = self.entries();
        if let Some((identity, until)) = entries.valid.get(hash)
            && now < *until
        {
            return Some(Verdict::Valid(identity.clone()));
        }
        match entries.refused.get(hash) {
            Some(until) if now < *until => Some(Verdict::Refused),
            _ => None,
        }
    }

    /// Call before reading the database; hand the result to [`KeyCache::put`].
    pub fn epoch(&self) -> u64 {
        self.entries().epoch
    }

    /// Remembers what the database said, unless an invalidation happened since `epoch` or none can reach us.
    pub fn put(&self, hash: &str, verdict: Verdict, epoch: u64) {
        if !self.live() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries();
        if entries.epoch != epoch {
            return;
        }
        match verdict {
            Verdict::Valid(identity) if !self.valid_ttl.is_zero() => {
                make_room(&mut entries.valid, now, |(_, until)| *until);
                entries
                    .valid
                    .insert(hash.to_owned(), (identity, now + self.valid_ttl));
            }
            Verdict::Refused if !self.refused_ttl.is_zero() => {
                make_room(&mut entries.refused, now, |until| *until);
                entries
                    .refused
                    .insert(hash.to_owned(), now + self.refused_ttl);
            }
            _ => {}
        }
    }

    /// Forgets the valid key with this id (`None`: every valid key) in this process.
    pub fn forget(&self, key_id: Option<uuid::Uuid>) {
        let mut entries = self.entries();
        entries.epoch += 1;
        match key_id {
            Some(id) => entries.valid.retain(|_, (identity, _)| identity.id != id),
            None => entries.valid.clear(),
        }
    }

    /// Forgets everything (the subscription came or went).
    fn forget_all(&self) {
        let mut entries = self.entries();
        entries.epoch += 1;
        entries.valid.clear();
        entries.refused.clear();
    }

    /// A key was revoked or changed: forgets it here and tells every other API process.
    pub async fn changed(&self, key_id: uuid::Uuid) {
        self.forget(Some(key_id));
        let Channel::Redis { conn, channel, .. } = &self.channel else {
            return;
        };
        let mut conn = conn.clone();
        let published = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(key_id.to_string())
                .query_async::<i64>(&mut conn),
        )
        .await;
        match published {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, %key_id,
                "could not announce a key change; other API processes drop it within API_KEY_CACHE_SECS"),
            Err(_) => tracing::warn!(%key_id,
                "timed out announcing a key change; other API processes drop it within API_KEY_CACHE_SECS"),
        }
    }

    /// Holds the invalidation subscription until `stop` (Redis mode; returns at once in process).
    pub async fn listen(self: Arc<Self>, stop: CancellationToken) {
        let Channel::Redis {
            client, channel, ..
        } = &self.channel
        else {
            return;
        };
        let mut delay = Duration::from_millis(200);
        loop {
            let connected = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            match connected {
                Ok(Ok(pubsub)) => {
                    delay = Duration::from_millis(200);
                    // Whatever was published while we were away is unknown: start empty.
                    self.forget_all();
                    self.live.store(true, Ordering::Release);
                    tracing::debug!(%channel, "key invalidations subscribed; API keys cached");
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            msg = messages.next() => match msg {
                                Some(msg) => match std::str::from_utf8(msg.get_payload_bytes())
                                    .ok()
                                    .and_then(|s| uuid::Uuid::parse_str(s.trim()).ok())
                                {
                                    Some(id) => self.forget(Some(id)),
                                    None => {
                                        tracing::warn!("malformed key invalidation; forgetting every cached key");
                                        self.forget(None);
                                    }
                                },
                                None => break,
                            },
                        }
                    }
                    self.live.store(false, Ordering::Release);
                    self.forget_all();
                    tracing::warn!(
                        "key invalidation subscription lost; API keys checked in the database until it is back"
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot subscribe to key invalidations; keys not cached")
                }
                Err(_) => {
                    tracing::warn!("timed out subscribing to key invalidations; keys not cached")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    }
}

/// Before an insert into a full map: drops expired entries, then everything if that was not enough.
fn make_room<V>(map: &mut HashMap<String, V>, now: Instant, until: impl Fn(&V) -> Instant) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    map.retain(|_, v| now < until(v));
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(id: uuid::Uuid) -> KeyIdentity {
        KeyIdentity {
            id,
            owner: "alice".into(),
            budget_usd_micros_per_day: None,
            budget_usd_micros_per_month: None,
        }
    }

    #[test]
    fn verdicts_expire_are_forgotten_and_bounded() {
        let cache = KeyCache::local(Duration::from_millis(200), Duration::from_secs(60));
        let id = uuid::Uuid::now_v7();
        let epoch = cache.epoch();
        cache.put("a", Verdict::Valid(identity(id)), epoch);
        cache.put("b", Verdict::Refused, epoch);
        assert_eq!(cache.get("a"), Some(Verdict::Valid(identity(id))));
        assert_eq!(cache.get("b"), Some(Verdict::Refused));
        assert_eq!(cache.get("c"), None);
        // Revoked: gone at once; a lookup that began before the revocation cannot put it back.
        cache.forget(Some(id));
        assert_eq!(cache.get("a"), None);
        cache.put("a", Verdict::Valid(identity(id)), epoch);
        assert_eq!(cache.get("a"), None, "stale verdict cached");
        let epoch = cache.epoch();
        cache.put("a", Verdict::Valid(identity(id)), epoch);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cache.get("a"), None, "outlived its TTL");
        // Bounded: a flood of unknown keys never holds more than MAX_ENTRIES.
        for i in 0..(MAX_ENTRIES + 10) {
            cache.put(&format!("bad{i}"), Verdict::Refused, epoch);
        }
        assert!(cache.entries().refused.len() <= MAX_ENTRIES);
    }

    #[tokio::test]
    async fn nothing_is_cached_without_a_subscription_or_with_ttl_zero() {
        let (client, conn) =
            imagegen_shared::queue::redis_connection("redis://127.0.0.1:1").expect("lazy client");
        let cache = KeyCache::redis(
            Duration::from_secs(5),
            Duration::from_secs(5),
            client,
            conn,
            "q",
        );
        let epoch = cache.epoch();
        cache.put("b", Verdict::Refused, epoch);
        assert_eq!(cache.get("b"), None, "cached while not subscribed");
        let off = KeyCache::local(Duration::ZERO, Duration::ZERO);
        let epoch = off.epoch();
        off.put("b", Verdict::Refused, epoch);
        assert_eq!(off.get("b"), None);
    }
}
