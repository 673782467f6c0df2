//! Files in a directory of this host (the supervisor's data directory for the app, which every
//! instance shares, or a directory mounted on every host): `ID` holds the bytes and `ID.json` its
//! [`Meta`]. An upload is written to `.upload-ID` and renamed once complete, so a reader never sees
//! half a file. Usage is counted from the directory itself: every worker of the host agrees
//! without talking to the others.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::kept::{ByteStream, Lookup, Meta, Usage};

/// Temporary files older than this were left by a worker that died mid-upload.
const ABANDONED: Duration = Duration::from_secs(3600);

pub(super) struct OnDisk {
    dir: PathBuf,
}

pub(super) struct DiskUpload {
    file: tokio::fs::File,
    tmp: PathBuf,
    dir: PathBuf,
}

impl OnDisk {
    pub(super) fn open(dir: &Path) -> std::io::Result<OnDisk> {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(dir)?;
        Ok(OnDisk { dir: dir.to_owned() })
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub(super) async fn usage(&self, guest: &str, now: u64) -> std::io::Result<Usage> {
        let mut usage = Usage::default();
        for meta in metas(&self.dir, now).await {
            usage.total += meta.size;
            if meta.guest == guest {
                usage.guest += meta.size;
            }
        }
        Ok(usage)
    }

    pub(super) async fn begin(&self, id: &str) -> std::io::Result<DiskUpload> {
        let tmp = self.dir.join(format!(".upload-{id}"));
        let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).await?;
        Ok(DiskUpload { file, tmp, dir: self.dir.clone() })
    }

    pub(super) async fn lookup(&self, id: &str, now: u64) -> std::io::Result<Lookup> {
        let path = self.meta_path(id);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lookup::Missing),
            Err(e) => return Err(e),
        };
        let Ok(meta) = serde_json::from_slice::<Meta>(&bytes) else { return Ok(Lookup::Missing) };
        if meta.expires > now {
            return Ok(Lookup::Live(meta));
        }
        // Found before the sweeper: gone now.
        let _ = tokio::fs::remove_file(self.dir.join(id)).await;
        let _ = tokio::fs::remove_file(&path).await;
        Ok(Lookup::Expired)
    }

    pub(super) async fn read(&self, meta: &Meta, start: u64, len: u64) -> std::io::Result<ByteStream> {
        let mut file = tokio::fs::File::open(self.dir.join(&meta.id)).await?;
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start)).await?;
        }
        Ok(Box::pin(chunks(file.take(len))))
    }

    /// Deletes every expired file (and its metadata) and temporary files abandoned by a dead
    /// worker; returns how many files went. Every worker of the host runs it: removing a file
    /// another worker removed first is harmless.
    pub(super) async fn sweep(&self, now: u64) -> usize {
        let mut removed = 0;
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else { return 0 };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                let meta =
                    tokio::fs::read(entry.path()).await.ok().and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
                if meta.is_none_or(|meta| meta.expires <= now) {
                    let _ = tokio::fs::remove_file(self.dir.join(id)).await;
                    let _ = tokio::fs::remove_file(entry.path()).await;
                    removed += 1;
                }
            } else if name.starts_with(".upload-") {
                let age = entry.metadata().await.ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
                if age.is_some_and(|age| age > ABANDONED) {
                    let _ = tokio::fs::remove_file(entry.path()).await;
                }
            }
        }
        removed
    }
}

impl DiskUpload {
    /// The body arrives in chunks of a few KiB and every write of a tokio file is a trip to the
    /// blocking pool: the caller gathers them into writes of this size.
    pub(super) const BATCH: usize = 1 << 20;

    pub(super) async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes).await
    }

    pub(super) async fn commit(mut self, meta: &Meta) -> std::io::Result<()> {
        let stored = async {
            self.file.flush().await?;
            tokio::fs::rename(&self.tmp, self.dir.join(&meta.id)).await?;
            let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
            tokio::fs::write(self.dir.join(format!("{}.json", meta.id)), json).await
        };
        let result = stored.await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            let _ = tokio::fs::remove_file(self.dir.join(&meta.id)).await;
        }
        result
    }

    pub(super) async fn abort(&self) {
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

/// Every live file's metadata in `dir`.
async fn metas(dir: &Path, now: u64) -> Vec<Meta> {
    let mut found = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else { return found };
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry.file_name().to_string_lossy().ends_with(".json")
            && let Some(meta) =
                tokio::fs::read(entry.path()).await.ok().and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
            && meta.expires > now
        {
            found.push(meta);
        }
    }
    found
}

/// A file's bytes as a body stream, 64 KiB at a time.
fn chunks(
    reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> {
    futures_util::stream::unfold(reader, |mut reader| async move {
        let mut buf = vec![0u8; 64 << 10];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), reader))
            }
            Err(e) => Some((Err(e), reader)),
        }
    })
}
