//! Files in Redis, so that every host of the app serves every file: the bytes in chunks, the
//! metadata beside them, all expiring by themselves, and an index that counts the bytes stored per
//! guest and in all, which makes the quota and the store's cap cluster-wide.
//!
//! Keys (`P` = `chat:APP`):
//! - `P:file:{ID}`: the file's [`Meta`] as JSON, expiring at the file's expiry (`PXAT`);
//! - `P:file:{ID}:N`: its `N`th chunk of [`CHUNK`] bytes, expiring a minute after the metadata
//!   (or the retention, if shorter), so that a download under way finishes; while the upload is
//!   under way they expire within the hour, so an upload cut by a dead worker goes away by itself;
//! - `{P:files}:expiry` (sorted set: id by expiry), `{P:files}:owner` (hash: id to "size guest")
//!   and `{P:files}:usage` (hash: bytes per guest, and `*` in all), changed only by the two
//!   scripts below, which keep them in step atomically however many workers run them.
//!
//! The braces are hash tags: on a Redis Cluster a file's keys live on one node, and the index's
//! on one node. The bytes go through a connection of their own, so that a 25 MB upload never
//! queues behind (or ahead of) the chat's publications.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::StreamExt;

use crate::redis_conn::{Conn, Settings, Target};

use super::kept::{ByteStream, Lookup, Meta, Refused, Usage};

/// A chunk's size: 256 KiB less 64 bytes, so that a chunk and Redis's string header fit the
/// allocator's 256 KiB size class (jemalloc): values of exactly 256 KiB cost 1.26 bytes of Redis
/// memory per byte (`used_memory` over 200 of them), these 1.00 (`chatctl-bench files`: 1.002).
pub(super) const CHUNK: usize = (256 << 10) - 64;

/// How long the chunks of an upload under way live.
const UPLOAD_WINDOW_MS: u64 = 3_600_000;

/// How long chunks outlive their metadata, so that a download started just before the expiry
/// completes: a minute, or the retention if shorter.
const GRACE: Duration = Duration::from_secs(60);

/// Chunks fetched ahead while a download is sent.
const READ_AHEAD: usize = 4;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Drops expired files from the index (their keys expire by themselves), then answers the bytes
/// stored in all and by guest `ARGV[2]`.
const USAGE: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, id in ipairs(gone) do
  local owner = redis.call('HGET', KEYS[2], id)
  if owner then
    local size, guest = string.match(owner, '^(%d+) (.*)$')
    -- (An empty file counts nothing: HINCRBY refuses -0, and an error ends a script half-way.)
    if size and tonumber(size) > 0 then
      redis.call('HINCRBY', KEYS[3], '*', -tonumber(size))
      if redis.call('HINCRBY', KEYS[3], guest, -tonumber(size)) <= 0 then redis.call('HDEL', KEYS[3], guest) end
    end
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
return {tonumber(redis.call('HGET', KEYS[3], '*') or '0'), tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')}
";

/// Counts a stored file, unless it would pass the guest's quota or the store's cap, checked here
/// atomically (two uploads at once each passed the check made before their bodies):
/// `ARGV` = id, expiry, size, guest, quota, cap; answers 1 (counted), -1 (quota) or -2 (cap).
const INDEX: &str = r"
local size = tonumber(ARGV[3])
local total = tonumber(redis.call('HGET', KEYS[3], '*') or '0')
local mine = tonumber(redis.call('HGET', KEYS[3], ARGV[4]) or '0')
if mine + size > tonumber(ARGV[5]) then return -1 end
if total + size > tonumber(ARGV[6]) then return -2 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. ' ' .. ARGV[4])
if size > 0 then
  redis.call('HINCRBY', KEYS[3], '*', size)
  redis.call('HINCRBY', KEYS[3], ARGV[4], size)
end
return 1
";

#[derive(Clone)]
pub(super) struct InRedis {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    /// Connected on first use, dropped when it fails (the next use connects again).
    conn: tokio::sync::Mutex<Option<Conn>>,
    prefix: String,
    grace_ms: u64,
}

pub(super) struct RedisUpload {
    store: InRedis,
    id: String,
    chunks: u64,
}

impl InRedis {
    pub(super) fn new(url: &str, app: &str, retention: Duration) -> redis::RedisResult<InRedis> {
        Ok(InRedis {
            inner: Arc::new(Inner {
                target: Target::parse(url)?,
                conn: tokio::sync::Mutex::default(),
                prefix: format!("chat:{app}"),
                grace_ms: GRACE.min(retention).as_millis() as u64,
            }),
        })
    }

    async fn conn(&self) -> std::io::Result<Conn> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let settings = Settings { connect_timeout: TIMEOUT, response_timeout: TIMEOUT, pushes: None };
        let conn = self.inner.target.connect(&settings).await.map_err(io)?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Notes a failed command: a connection that is no longer usable is dropped.
    async fn failed(&self, e: redis::RedisError) -> std::io::Error {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error() {
            *self.inner.conn.lock().await = None;
        } else if e.code().is_some() {
            // Redis refused (out of memory, say): never silent; the upload is answered 507.
            tracing::warn!(error = %e, "Redis refused a shared file's bytes or index: the file is not kept");
        }
        io(e)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> std::io::Result<T> {
        let mut conn = self.conn().await?;
        match cmd.query_async(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => Err(self.failed(e).await),
        }
    }

    /// `EVAL` of `script` on the index's keys (Redis caches the compiled script by its text).
    async fn run<T: redis::FromRedisValue>(&self, script: &str, args: &[&str]) -> std::io::Result<T> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(3);
        for key in self.index_keys() {
            cmd.arg(key);
        }
        for arg in args {
            cmd.arg(arg);
        }
        self.query(&cmd).await
    }

    async fn exec<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> std::io::Result<T> {
        let mut conn = self.conn().await?;
        match pipe.query_async::<T>(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => Err(self.failed(e).await),
        }
    }

    fn meta_key(&self, id: &str) -> String {
        format!("{}:file:{{{id}}}", self.inner.prefix)
    }

    fn chunk_key(&self, id: &str, n: u64) -> String {
        format!("{}:file:{{{id}}}:{n}", self.inner.prefix)
    }

    fn index_keys(&self) -> [String; 3] {
        let p = &self.inner.prefix;
        [format!("{{{p}:files}}:expiry"), format!("{{{p}:files}}:owner"), format!("{{{p}:files}}:usage")]
    }

    pub(super) async fn usage(&self, guest: &str, now: u64) -> std::io::Result<Usage> {
        let (total, guest): (i64, i64) = self.run(USAGE, &[&now.to_string(), guest]).await?;
        Ok(Usage { total: total.max(0) as u64, guest: guest.max(0) as u64 })
    }

    pub(super) async fn begin(&self, id: &str) -> std::io::Result<RedisUpload> {
        // Fails now, rather than after the body, when Redis is away.
        self.conn().await?;
        Ok(RedisUpload { store: self.clone(), id: id.to_owned(), chunks: 0 })
    }

    pub(super) async fn lookup(&self, id: &str) -> std::io::Result<Lookup> {
        let json: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(self.meta_key(id))).await?;
        if let Some(meta) = json.and_then(|json| serde_json::from_slice::<Meta>(&json).ok()) {
            return Ok(Lookup::Live(meta));
        }
        // Expired but not yet swept from the index: say so (410) rather than "never existed".
        let [expiry, ..] = self.index_keys();
        let score: Option<f64> = self.query(redis::cmd("ZSCORE").arg(expiry).arg(id)).await?;
        Ok(if score.is_some() { Lookup::Expired } else { Lookup::Missing })
    }

    pub(super) async fn read(&self, meta: &Meta, start: u64, len: u64) -> std::io::Result<ByteStream> {
        let chunk = CHUNK as u64;
        let end = start + len; // exclusive
        let (first, last) = (start / chunk, end.saturating_sub(1) / chunk);
        let store = self.clone();
        let id = meta.id.clone();
        // No chunk at all for an empty file.
        let count = if len == 0 { 0 } else { last - first + 1 };
        let fetches = futures_util::stream::iter((first..).take(count as usize)).map(move |n| {
            let (store, key) = (store.clone(), store.chunk_key(&id, n));
            async move {
                let bytes: Option<Vec<u8>> = store.query(redis::cmd("GET").arg(key)).await?;
                let bytes = bytes.ok_or_else(|| std::io::Error::other("the file expired during the download"))?;
                // The part of chunk `n` inside [start, end).
                let offset = n * chunk;
                let from = start.saturating_sub(offset).min(bytes.len() as u64) as usize;
                let to = (end - offset).min(bytes.len() as u64) as usize;
                Ok(Bytes::from(bytes).slice(from..to.max(from)))
            }
        });
        Ok(Box::pin(fetches.buffered(READ_AHEAD)))
    }

    /// Drops expired files from the index (the keys themselves expire in Redis).
    pub(super) async fn sweep(&self, now: u64) {
        if let Err(e) = self.usage("", now).await {
            tracing::debug!(error = %e, "cannot sweep the file index in Redis");
        }
    }
}

impl RedisUpload {
    /// Writes are one chunk each: the caller gathers the body into chunks of this size.
    pub(super) const BATCH: usize = CHUNK;

    pub(super) async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let key = self.store.chunk_key(&self.id, self.chunks);
        self.chunks += 1;
        self.store.query::<()>(redis::cmd("SET").arg(key).arg(bytes).arg("PX").arg(UPLOAD_WINDOW_MS)).await
    }

    /// Counts the file (within `quota` and `cap`, atomically) and makes it visible. Counted first:
    /// should the rest fail, the store is over-counted until the expiry, never under-counted.
    pub(super) async fn commit(self, meta: &Meta, quota: u64, cap: u64) -> Result<(), Refused> {
        let stored = self.store(meta, quota, cap).await;
        if stored.is_err() {
            self.abort().await;
        }
        stored
    }

    async fn store(&self, meta: &Meta, quota: u64, cap: u64) -> Result<(), Refused> {
        let (expires, size, quota, cap) =
            (meta.expires.to_string(), meta.size.to_string(), quota.to_string(), cap.to_string());
        let args = [meta.id.as_str(), &expires, &size, &meta.guest, &quota, &cap];
        match self.store.run::<i64>(INDEX, &args).await.map_err(Refused::Store)? {
            1 => {}
            -1 => return Err(Refused::Quota),
            _ => return Err(Refused::Full),
        }
        // Every chunk must still be there before the file shows: one that expired during a very
        // slow upload (they live an hour until the commit) would make a file that breaks off.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for n in 0..self.chunks {
            pipe.cmd("PEXPIREAT").arg(self.store.chunk_key(&self.id, n)).arg(meta.expires + self.store.inner.grace_ms);
        }
        if self.chunks > 0 {
            let kept: Vec<i64> = self.store.exec(&pipe).await.map_err(Refused::Store)?;
            if kept.iter().any(|&k| k != 1) {
                let expired = std::io::Error::other("a chunk expired before the upload ended");
                return Err(Refused::Store(expired));
            }
        }
        let json = serde_json::to_vec(meta).map_err(|e| Refused::Store(std::io::Error::other(e)))?;
        let set = redis::cmd("SET").arg(self.store.meta_key(&self.id)).arg(json).arg("PXAT").arg(meta.expires).clone();
        self.store.query::<()>(&set).await.map_err(Refused::Store)
    }

    pub(super) async fn abort(&self) {
        if self.chunks == 0 {
            return;
        }
        let mut del = redis::cmd("DEL");
        for n in 0..self.chunks {
            del.arg(self.store.chunk_key(&self.id, n));
        }
        // Left there if Redis is away: they expire within the hour.
        let _ = self.store.query::<()>(&del).await;
    }
}

fn io(e: redis::RedisError) -> std::io::Error {
    std::io::Error::other(format!("Redis: {e}"))
}
