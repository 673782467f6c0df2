//! What the chat keeps in Redis itself, when there is one: guest sessions (a hash per guest with a
//! TTL, renewed on every change and disconnect) and each room's recent messages (a capped stream).
//! Writes are queued behind the link's publications and never awaited; reads fall back to the
//! worker's own copies when Redis is down (`None`).
//!
//! A room message that cannot reach its stream (Redis down) is kept, in order, and appended once
//! Redis is back, so recovery (which reads the stream) has it: after the messages other hosts sent
//! meanwhile, since a stream only grows at its end.
//!
//! Keys: `chat:{app}:session:{guest id}` (`name`, `rooms` as JSON, `token`, `created`, `last_seen`,
//! ms since the epoch) and `chat:{app}:history:{room}` (entries `m` = the message's JSON; the
//! entry's id carries its time, which bounds the age).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_shared::sync::Locked;
use chat_shared::time::unix_millis;
use serde_json::Value;

use crate::bus::BusDriver;

const TOUCH: &str = "if redis.call('EXISTS', KEYS[1]) == 1 then \
    redis.call('HSET', KEYS[1], 'last_seen', ARGV[1]); redis.call('PEXPIRE', KEYS[1], ARGV[2]) end";

#[derive(Clone)]
pub struct Store {
    driver: BusDriver,
    prefix: String,
    session_ttl: Duration,
    history_count: usize,
    history_age: Duration,
    unstored: Arc<Mutex<Unstored>>,
}

/// Room messages that did not reach their stream, oldest first.
#[derive(Default)]
struct Unstored {
    messages: VecDeque<(String, Value)>,
    /// Whether a task is appending them (it ends when none is left).
    appending: bool,
}

/// The most messages kept for Redis's return; older ones are dropped first (the worker's own
/// history still has the latest of each room).
const UNSTORED_MAX: usize = 10_000;

/// How often the appending task looks whether Redis is back.
const UNSTORED_RETRY: Duration = Duration::from_millis(250);

/// A guest's session as Redis keeps it.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub name: String,
    pub rooms: Vec<String>,
    /// The latest token issued: a token from another host (signed with its secret) is believed
    /// when it is this one.
    pub token: String,
}

impl Store {
    pub fn new(
        driver: BusDriver,
        app: &str,
        session_ttl: Duration,
        history_count: usize,
        history_age: Duration,
    ) -> Store {
        Store {
            driver,
            prefix: format!("chat:{app}"),
            session_ttl,
            history_count,
            history_age,
            unstored: Arc::default(),
        }
    }

    fn session_key(&self, id: &str) -> String {
        format!("{}:session:{id}", self.prefix)
    }

    fn history_key(&self, room: &str) -> String {
        format!("{}:history:{room}", self.prefix)
    }

    /// Keeps who the guest is now, its rooms and its latest token, for `session_ttl` from now.
    pub fn put_session(&self, id: &str, name: &str, rooms: &[String], token: &str) {
        let Some(redis) = self.driver.store() else { return };
        let key = self.session_key(id);
        let now = unix_millis();
        redis.send(
            redis::cmd("HSET")
                .arg(&key)
                .arg("name")
                .arg(name)
                .arg("rooms")
                .arg(serde_json::to_string(rooms).unwrap_or_default())
                .arg("token")
                .arg(token)
                .arg("last_seen")
                .arg(now)
                .clone(),
        );
        redis.send(redis::cmd("HSETNX").arg(&key).arg("created").arg(now).clone());
        self.expire(redis, &key);
    }

    /// Notes that the guest was just seen (a disconnect), renewing the TTL.
    pub fn touch(&self, id: &str) {
        let Some(redis) = self.driver.store() else { return };
        let key = self.session_key(id);
        // Only if it exists: HSET alone would bring an expired session back with just this field.
        redis.send(
            redis::cmd("EVAL")
                .arg(TOUCH)
                .arg(1)
                .arg(&key)
                .arg(unix_millis())
                .arg(self.session_ttl.as_millis() as u64)
                .clone(),
        );
    }

    fn expire(&self, redis: &crate::bus::RedisLink, key: &str) {
        redis.send(redis::cmd("PEXPIRE").arg(key).arg(self.session_ttl.as_millis() as u64).clone());
    }

    /// The session Redis keeps for `id`; `None` when there is none (expired) or Redis is down.
    pub async fn session(&self, id: &str) -> Option<SessionRecord> {
        let redis = self.driver.store()?;
        let fields: std::collections::HashMap<String, String> =
            redis.query(redis::cmd("HGETALL").arg(self.session_key(id)).clone()).await?;
        Some(SessionRecord {
            name: fields.get("name")?.clone(),
            rooms: serde_json::from_str(fields.get("rooms")?).ok()?,
            token: fields.get("token")?.clone(),
        })
    }

    /// Appends a room message to the room's stream (capped near the history's count, expiring with
    /// its age), and waits until Redis has it: a message is in the stream before anyone hears of
    /// it, so an answer to it always comes after it there, whichever worker each was sent to.
    /// When Redis is down (or refuses), the message is kept and appended once it is back.
    pub async fn append(&self, room: &str, message: &Value) {
        // Behind messages still waiting for Redis: a room's stream keeps the order they were sent in.
        if !self.lock_unstored().messages.is_empty() || !self.try_append(room, message).await {
            self.keep(room, message);
        }
    }

    async fn try_append(&self, room: &str, message: &Value) -> bool {
        let Some(redis) = self.driver.store() else { return false };
        let key = self.history_key(room);
        let added: Option<String> = redis
            .query(
                redis::cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.history_count)
                    .arg("*")
                    .arg("m")
                    .arg(message.to_string())
                    .clone(),
            )
            .await;
        redis.send(redis::cmd("PEXPIRE").arg(&key).arg(self.history_age.as_millis() as u64).clone());
        added.is_some()
    }

    fn lock_unstored(&self) -> std::sync::MutexGuard<'_, Unstored> {
        self.unstored.locked()
    }

    /// Keeps a message for Redis's return, and starts the task that appends them then.
    fn keep(&self, room: &str, message: &Value) {
        let mut unstored = self.lock_unstored();
        if unstored.messages.len() >= UNSTORED_MAX {
            unstored.messages.pop_front();
        }
        unstored.messages.push_back((room.to_owned(), message.clone()));
        if !unstored.appending {
            unstored.appending = true;
            tracing::debug!(room, "a message did not reach the room's stream in Redis: kept for its return");
            tokio::spawn(self.clone().append_kept());
        }
    }

    /// Appends the kept messages, oldest first, once Redis takes them; ends when none is left.
    async fn append_kept(self) {
        let mut appended = 0usize;
        loop {
            let next = {
                let mut unstored = self.lock_unstored();
                match unstored.messages.front() {
                    Some(next) => next.clone(),
                    None => {
                        unstored.appending = false;
                        if appended > 0 {
                            tracing::info!(
                                messages = appended,
                                "appended the messages sent while Redis was away to their streams"
                            );
                        }
                        return;
                    }
                }
            };
            if self.try_append(&next.0, &next.1).await {
                let mut unstored = self.lock_unstored();
                // Unless dropped meanwhile to stay under the bound.
                if unstored.messages.front() == Some(&next) {
                    unstored.messages.pop_front();
                }
                appended += 1;
            } else {
                tokio::time::sleep(UNSTORED_RETRY).await;
            }
        }
    }

    /// The room's messages after the one with id `since` (all retained when `since` is unknown or
    /// not given), oldest first; `None` when Redis is down, so the caller uses its own copy.
    pub async fn since(&self, room: &str, since: Option<&str>) -> Option<Vec<Value>> {
        let redis = self.driver.store()?;
        let cmd = redis::cmd("XREVRANGE")
            .arg(self.history_key(room))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(self.history_count)
            .clone();
        let reply: redis::streams::StreamRangeReply = redis.query(cmd).await?;
        let oldest = unix_millis().saturating_sub(self.history_age.as_millis() as u64);
        let mut messages: Vec<Value> = reply
            .ids
            .into_iter()
            .rev()
            .filter(|entry| entry_ms(&entry.id) >= oldest)
            .filter_map(|entry| {
                let text: String = entry.get("m")?;
                serde_json::from_str(&text).ok()
            })
            .collect();
        if let Some(since) = since
            && let Some(at) = messages.iter().position(|m| m["id"] == since)
        {
            messages.drain(..=at);
        }
        Some(messages)
    }
}

/// The time part of a stream entry id (`ms-seq`).
fn entry_ms(id: &str) -> u64 {
    id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0)
}

/// Who a token says it is. A token this app's secret did not sign may come from another host
/// (with a secret of its own): with Redis, it is believed if it is the very token Redis keeps for
/// that guest.
pub async fn believe(
    sessions: &crate::session::Sessions,
    store: Option<&Store>,
    token: &str,
) -> Result<crate::session::Claims, crate::session::TokenError> {
    use crate::session::{Sessions, TokenError};
    match sessions.verify(token) {
        Err(TokenError::Forged) => {
            let (Some(store), Ok(claims)) = (store, Sessions::unverified(token)) else {
                return Err(TokenError::Forged);
            };
            match store.session(&claims.id).await {
                Some(record) if record.token == token => Ok(claims),
                _ => Err(TokenError::Forged),
            }
        }
        other => other,
    }
}
