//! The versioned store: a write-through cache over SQLite, with one writer thread and a pool
//! of readers. Async callers never block: writes await the writer's reply, database reads
//! run on the blocking pool.
//!
//! Request path of a put: [`Store::put`] -> channel -> writer thread (version = latest + 1,
//! group commit, fsync) -> cache updated -> reply. Of a get: cache, else SQLite on a blocking
//! thread, then the cache is filled (see `cache.rs` for why that is safe).

mod cache;
mod checkpoint;
pub mod db;
mod known_latest;
pub mod lock;
pub mod model;
mod slow_commits;
pub mod snapshot;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use cache::{CacheCounters, CacheSnapshot};
pub use db::SyncMode;
pub use db::{ChangeRow, OpenInfo};
pub use model::{
    Cursor, DbCounts, MAX_VERSION, PutOutcome, PutRequest, ReadSource, ReplicaBatch,
    ReplicaOutcome, ReplicaRecord, Versioned, VersionsPage, validate_key,
};
pub use snapshot::SnapshotInfo;
pub use writer::MetaUpdate;

use crate::error::{Error, Result};
use crate::metrics::StoreMetrics;
use cache::Cache;
use db::ReaderPool;
use lock::DbLock;

/// File name of the database inside the data directory (the seed's).
pub const DB_FILE: &str = "kv_store.db";

/// How the store is set up; see `ServerConfig` for the user-facing flags.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub cache_size: usize,
    /// Bytes the cache may hold (see `cache.rs` for what is counted).
    pub cache_max_bytes: usize,
    pub cache_ttl: Duration,
    pub sync: SyncMode,
    /// Idle read connections kept open.
    pub readers: usize,
    /// Puts that may wait for the writer before callers are slowed down.
    pub queue_depth: usize,
}

struct Inner {
    db_path: PathBuf,
    info: OpenInfo,
    cache: Arc<Cache>,
    readers: Arc<ReaderPool>,
    tx: mpsc::Sender<writer::Command>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    _lock: DbLock,
}

/// Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (or creates) `data_dir/kv_store.db`, migrating a seed database in place, and
    /// starts the writer thread. Fails if another process holds the database.
    pub fn open(
        config: &StoreConfig,
        metrics: StoreMetrics,
        counters: CacheCounters,
    ) -> Result<Store> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
            context: format!("create data directory {}", config.data_dir.display()),
            source,
        })?;
        let db_path = config.data_dir.join(DB_FILE);
        let lock = DbLock::acquire(&db_path)?;
        let (conn, info) = db::open_writer(&db_path, config.sync)?;
        let cache = Arc::new(Cache::new(
            config.cache_size,
            config.cache_max_bytes,
            config.cache_ttl,
            counters,
        ));
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let writer_cache = cache.clone();
        let checkpointer = checkpoint::start(
            &db_path,
            metrics.checkpoints.clone(),
            metrics.wal_frames.clone(),
        )?;
        let writer = writer::Writer::new(conn, writer_cache, metrics, checkpointer);
        let writer = std::thread::Builder::new()
            .name("kv-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| Error::Io {
                context: "start the writer thread".into(),
                source,
            })?;
        tracing::info!(path = %db_path.display(), sync = ?config.sync, instance = %info.instance,
            fresh = info.fresh, "database open");
        Ok(Store {
            inner: Arc::new(Inner {
                readers: Arc::new(ReaderPool::new(&db_path, config.readers.max(1))),
                db_path,
                info,
                cache,
                tx,
                writer: Mutex::new(Some(writer)),
                _lock: lock,
            }),
        })
    }

    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    /// Stores a new version; answers once it is committed (and fsynced in `SyncMode::Full`).
    pub async fn put(&self, req: PutRequest) -> Result<PutOutcome> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Command::Put(req, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Instance id of the database, and whether it was created empty by this open.
    pub fn open_info(&self) -> &OpenInfo {
        &self.inner.info
    }

    /// Stores versions exactly as a primary assigned them (see `writer.rs`), with the
    /// catch-up cursor if any, durably, in the writer's next group commit.
    pub async fn replicate(&self, batch: ReplicaBatch) -> Result<ReplicaOutcome> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Command::Replicate(batch, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// A page of the change feed after `after`, rows filtered by `wanted(seq, key)`: rows, the last
    /// sequence examined, and the newest sequence. See [`db::changes`].
    pub async fn changes(
        &self,
        after: u64,
        scan: u32,
        max_bytes: usize,
        wanted: impl Fn(u64, &str) -> bool + Send + 'static,
    ) -> Result<(Vec<ChangeRow>, u64, u64)> {
        self.read(move |conn| db::changes(conn, after, scan, max_bytes, &wanted))
            .await
    }

    /// A `kv_meta` entry (see `db.rs`).
    pub async fn meta(&self, name: &str) -> Result<Option<String>> {
        let name = name.to_owned();
        self.read(move |conn| db::meta(conn, &name)).await
    }

    /// Records a `kv_meta` entry through the writer.
    pub async fn set_meta(&self, name: &str, value: &str) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Command::SetMeta(name.into(), value.into(), reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Records `kv_meta` entries, and resets every catch-up cursor if asked, in one
    /// transaction ordered with the writes around it.
    pub async fn set_metas(&self, update: MetaUpdate) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Command::SetMetas(update, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Deletes every version of `keys` and forgets them in the cache; answers the versions
    /// deleted.
    pub async fn delete_keys(&self, keys: Vec<Arc<str>>) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Command::DeleteKeys(keys, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Up to `limit` key names after `after`, in order.
    pub async fn keys_after(&self, after: &str, limit: u32) -> Result<Vec<String>> {
        let after = after.to_owned();
        self.read(move |conn| db::keys_after(conn, &after, limit))
            .await
    }

    /// The newest change sequence of this database.
    pub async fn head(&self) -> Result<u64> {
        self.read(db::head).await
    }

    /// Catch-up cursors by peer name: `(instance, seq)`.
    pub async fn cursors(&self) -> Result<Vec<(String, String, u64)>> {
        self.read(db::cursors).await
    }

    /// The latest version, or exactly `version`.
    pub async fn get(&self, key: &str, version: Option<u64>) -> Result<(Versioned, ReadSource)> {
        let cache = &self.inner.cache;
        let cached = match version {
            None => cache.get_latest(key),
            Some(v) => cache.get_version(key, v),
        };
        if let Some(found) = cached {
            return Ok((found, ReadSource::Cache));
        }
        let key: Arc<str> = Arc::from(key);
        let ticket = cache.ticket(&key);
        let read_key = key.clone();
        let found = self
            .read(move |conn| match version {
                None => db::latest(conn, &read_key),
                Some(v) => db::exact(conn, &read_key, v),
            })
            .await?;
        match (found, version) {
            (Some(found), None) => {
                cache.fill_latest(&key, found.clone(), ticket);
                Ok((found, ReadSource::Database))
            }
            (Some(found), Some(_)) => {
                cache.fill_version(&key, found.clone());
                Ok((found, ReadSource::Database))
            }
            (None, None) => Err(Error::KeyNotFound {
                key: key.to_string(),
            }),
            (None, Some(v)) => Err(Error::VersionNotFound {
                key: key.to_string(),
                version: v,
            }),
        }
    }

    /// Versions after `after`, oldest first, at most `limit` and at most
    /// [`VERSIONS_PAGE_BYTES`](kv_common::api::VERSIONS_PAGE_BYTES) of values (at least one).
    pub async fn versions(&self, key: &str, after: u64, limit: u32) -> Result<VersionsPage> {
        let owned = key.to_owned();
        let max_bytes = kv_common::api::VERSIONS_PAGE_BYTES;
        self.read(move |conn| db::page(conn, &owned, after, limit, max_bytes))
            .await?
            .ok_or_else(|| Error::KeyNotFound {
                key: key.to_owned(),
            })
    }

    pub fn cache_stats(&self) -> CacheSnapshot {
        self.inner.cache.snapshot()
    }

    pub async fn db_stats(&self) -> Result<DbCounts> {
        let path = self.inner.db_path.clone();
        self.read(move |conn| db::counts(conn, &path)).await
    }

    /// A consistent copy of the database as of one commit, taken while puts go on: an open
    /// file (its temporary path already removed, so nothing is left behind whatever the
    /// caller does) and what it holds. See `snapshot.rs`.
    pub async fn snapshot(&self) -> Result<(std::fs::File, SnapshotInfo)> {
        let db_path = self.inner.db_path.clone();
        tokio::task::spawn_blocking(move || {
            let dir = db_path.parent().unwrap_or(Path::new("."));
            let temp = snapshot::temp_path(dir);
            let taken = snapshot::copy_database(&db_path, &temp).and_then(|info| {
                let file = std::fs::File::open(&temp).map_err(|source| Error::Io {
                    context: format!("open snapshot {}", temp.display()),
                    source,
                })?;
                Ok((file, info))
            });
            if let Err(err) = std::fs::remove_file(&temp)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %temp.display(), %err, "cannot remove a snapshot file");
            }
            taken
        })
        .await
        .map_err(|e| Error::Internal(format!("snapshot task failed: {e}")))?
    }

    /// Ok when the writer is alive and can take the database's write lock.
    pub async fn ready(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Command::Ping(reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Lets the writer finish every queued put, then stops it. Later puts fail with
    /// [`Error::ShuttingDown`]. Idempotent.
    pub async fn close(&self) {
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(handle) = handle else { return };
        let _ = self.inner.tx.send(writer::Command::Stop).await;
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let readers = self.inner.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }
}
