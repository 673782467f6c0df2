//! Where the bytes are kept, behind one face: a directory ([`on_disk`]) or Redis ([`in_redis`]),
//! chosen at start (see `FileConfig::redis`).

use super::kept::{ByteStream, Lookup, Meta, Refused, Usage};
use super::{in_redis, on_disk};

/// Where the bytes are kept.
pub(super) enum Store {
    Disk(on_disk::OnDisk),
    Redis(in_redis::InRedis),
}

/// An upload under way.
pub(super) enum Upload {
    Disk(on_disk::DiskUpload),
    Redis(in_redis::RedisUpload),
}

impl Store {
    pub(super) async fn usage(&self, guest: &str, now: u64) -> std::io::Result<Usage> {
        match self {
            Store::Disk(disk) => disk.usage(guest, now).await,
            Store::Redis(redis) => redis.usage(guest, now).await,
        }
    }

    pub(super) async fn begin(&self, id: &str) -> std::io::Result<Upload> {
        Ok(match self {
            Store::Disk(disk) => Upload::Disk(disk.begin(id).await?),
            Store::Redis(redis) => Upload::Redis(redis.begin(id).await?),
        })
    }

    pub(super) async fn lookup(&self, id: &str, now: u64) -> std::io::Result<Lookup> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Ok(Lookup::Missing);
        }
        match self {
            Store::Disk(disk) => disk.lookup(id, now).await,
            Store::Redis(redis) => redis.lookup(id).await,
        }
    }

    pub(super) async fn read(&self, meta: &Meta, start: u64, len: u64) -> std::io::Result<ByteStream> {
        match self {
            Store::Disk(disk) => disk.read(meta, start, len).await,
            Store::Redis(redis) => redis.read(meta, start, len).await,
        }
    }

    pub(super) async fn sweep(&self, now: u64) -> usize {
        match self {
            Store::Disk(disk) => disk.sweep(now).await,
            Store::Redis(redis) => {
                redis.sweep(now).await;
                0
            }
        }
    }
}

impl Upload {
    pub(super) fn batch(&self) -> usize {
        match self {
            Upload::Disk(_) => on_disk::DiskUpload::BATCH,
            Upload::Redis(_) => in_redis::RedisUpload::BATCH,
        }
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Upload::Disk(disk) => disk.write(bytes).await,
            Upload::Redis(redis) => redis.write(bytes).await,
        }
    }

    /// Makes the file visible; in Redis, counted within `quota` and `cap` atomically.
    pub(super) async fn commit(self, meta: &Meta, quota: u64, cap: u64) -> Result<(), Refused> {
        match self {
            Upload::Disk(disk) => disk.commit(meta).await.map_err(Refused::Store),
            Upload::Redis(redis) => redis.commit(meta, quota, cap).await,
        }
    }

    pub(super) async fn abort(&self) {
        match self {
            Upload::Disk(disk) => disk.abort().await,
            Upload::Redis(redis) => redis.abort().await,
        }
    }
}
