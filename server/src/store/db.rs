//! SQLite: opening, the schema and its migrations, and the read queries. The write path
//! lives in `writer.rs`; this file is the only other place that speaks SQL to the store.
//!
//! The schema is the seed's, so a seed user's `kv_store.db` opens as it is:
//! `keys(key TEXT PRIMARY KEY, created_at REAL, updated_at REAL)` and
//! `"values"(id INTEGER PRIMARY KEY AUTOINCREMENT, key, value TEXT /* JSON */, version, timestamp)`.
//! `PRAGMA user_version` records what kvstore added on top (see [`migrate`]). `values.id`
//! only grows (AUTOINCREMENT: never reused) and the one writer assigns it in commit order, so
//! it is the server's change sequence, which replicas pull from (see [`changes`]).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::model::{DbCounts, Versioned, VersionsPage};
use crate::error::{Error, Result};

/// Schema version this build writes. 1 = seed tables + unique (key, version) + WAL;
/// 2 = `kv_meta` (the database's instance id) and `peer_cursors` (replication catch-up).
pub const SCHEMA_VERSION: i64 = 2;

/// What opening the database found out.
#[derive(Debug, Clone)]
pub struct OpenInfo {
    /// Random id of this database, made when it was created (or first opened by a kvstore
    /// with replication). Peers keep their cursors per instance, so a server that comes back
    /// with a new database is read again from the start.
    pub instance: String,
    /// The database is new to its cluster: created by this open, or a seed database, or a
    /// restored copy (copies carry no instance id). Its server may be the primary of keys
    /// with versions only its peers hold, so with replication it catches up before serving.
    pub fresh: bool,
}

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SyncMode {
    /// fsync the write-ahead log on every commit: an acknowledged write survives power loss.
    #[default]
    Full,
    /// No fsync on commit: survives a process crash, but the last commits can be lost on
    /// power failure or kernel panic. Faster on slow disks.
    Normal,
}

fn db_err(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |source| Error::Database { context, source }
}

/// Opens (creating if needed) the database for writing, migrated to [`SCHEMA_VERSION`].
pub fn open_writer(path: &Path, sync: SyncMode) -> Result<(Connection, OpenInfo)> {
    let conn = open_write_connection(path, sync)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db_err("set busy timeout"))?;
    // WAL lets readers run beside the single writer; it must be set outside a transaction.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(db_err("enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%mode, "SQLite refused WAL mode; writes will be slower");
    }
    let sync_pragma = match sync {
        SyncMode::Full => "PRAGMA synchronous=FULL",
        SyncMode::Normal => "PRAGMA synchronous=NORMAL",
    };
    conn.execute_batch(sync_pragma)
        .map_err(db_err("set synchronous"))?;
    // Checkpoints normally run on their own thread (see checkpoint.rs); this is the backstop.
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint = {}",
        super::checkpoint::BACKSTOP_PAGES
    ))
    .map_err(db_err("set checkpoint threshold"))?;
    migrate(&conn)?;
    let info = instance(&conn)?;
    Ok((conn, info))
}

/// The writer's connection. With `Full` it is on the VFS that writes each commit's WAL frames
/// at once (`kv-wal-vfs`; it relies on the sync at every commit), else, or if that VFS cannot
/// be registered, on SQLite's default VFS.
fn open_write_connection(path: &Path, sync: SyncMode) -> Result<Connection> {
    if sync != SyncMode::Full {
        return Connection::open(path).map_err(db_err("open database"));
    }
    match kv_wal_vfs::register() {
        Ok(()) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), kv_wal_vfs::NAME),
        Err(error) => {
            tracing::warn!(%error, "commits use SQLite's default VFS");
            Connection::open(path)
        }
    }
    .map_err(db_err("open database"))
}

/// Reads this database's instance id, making one if it has none yet.
fn instance(conn: &Connection) -> Result<OpenInfo> {
    let existing: Option<String> = conn
        .query_row(
            "SELECT value FROM kv_meta WHERE name = 'instance'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err("read instance id"))?;
    if let Some(instance) = existing {
        return Ok(OpenInfo {
            instance,
            fresh: false,
        });
    }
    let instance = new_instance_id();
    conn.execute(
        "INSERT INTO kv_meta(name, value) VALUES ('instance', ?1)",
        [&instance],
    )
    .map_err(db_err("store instance id"))?;
    Ok(OpenInfo {
        instance,
        fresh: true,
    })
}

/// 128 random bits, hex.
pub fn new_instance_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Opens a read-only connection to an already migrated database.
pub fn open_reader(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(db_err("open reader"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db_err("set busy timeout"))?;
    Ok(conn)
}

/// Brings a fresh, seed-made or older kvstore database to [`SCHEMA_VERSION`].
fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err("read schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(Error::Migration(format!(
            "the database has schema version {version}, newer than this kv-server understands \
             ({SCHEMA_VERSION}); run a newer kv-server"
        )));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    tracing::info!(
        from = version,
        to = SCHEMA_VERSION,
        "migrating database schema"
    );
    if version < 1 {
        migrate_to_1(conn)?;
    }
    // 2: the instance id and the replication cursors. New tables only: nothing to rewrite.
    conn.execute_batch(&format!(
        r#"BEGIN;
           CREATE TABLE IF NOT EXISTS kv_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
           CREATE TABLE IF NOT EXISTS peer_cursors (
               peer TEXT PRIMARY KEY, instance TEXT NOT NULL, seq INTEGER NOT NULL);
           PRAGMA user_version = {SCHEMA_VERSION};
           COMMIT;"#
    ))
    .map_err(db_err("create replication tables"))?;
    Ok(())
}

/// Seed (or empty) database -> 1: the seed's tables, a unique (key, version) index.
fn migrate_to_1(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        r#"CREATE TABLE IF NOT EXISTS keys (
               key TEXT PRIMARY KEY, created_at REAL, updated_at REAL);
           CREATE TABLE IF NOT EXISTS "values" (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               key TEXT, value TEXT, version INTEGER, timestamp REAL);"#,
    )
    .map_err(db_err("create tables"))?;
    // The seed relied on a lock to keep (key, version) unique; kvstore makes SQLite enforce
    // it. A database with duplicates cannot be served without guessing which one is right.
    let duplicate: Option<(String, i64)> = conn
        .query_row(
            r#"SELECT key, version FROM "values" GROUP BY key, version HAVING COUNT(*) > 1 LIMIT 1"#,
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err("check for duplicate versions"))?;
    if let Some((key, v)) = duplicate {
        return Err(Error::Migration(format!(
            "key '{key}' has version {v} more than once; remove the duplicate rows from the \
             \"values\" table, then start again"
        )));
    }
    conn.execute_batch(
        r#"BEGIN;
           CREATE UNIQUE INDEX IF NOT EXISTS values_key_version ON "values"(key, version);
           PRAGMA user_version = 1;
           COMMIT;"#,
    )
    .map_err(db_err("create unique index"))?;
    Ok(())
}

/// Turns a row into a [`Versioned`], checking that the stored text is JSON we can send:
/// the seed stored `1e400` as the text `Infinity`, which no JSON parser accepts.
fn to_versioned(
    key: &str,
    version: i64,
    value: Option<String>,
    ts: Option<f64>,
) -> Result<Versioned> {
    let value = value.unwrap_or_else(|| "null".to_owned());
    let valid = super::model::validate_json(&value).is_ok();
    match u64::try_from(version) {
        Ok(version) if valid => Ok(Versioned {
            version,
            value: Arc::from(value),
            timestamp: ts.unwrap_or(0.0),
        }),
        _ => Err(Error::CorruptValue {
            key: key.to_owned(),
            version,
        }),
    }
}

type Row = (i64, Option<String>, Option<f64>);

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

pub fn latest(conn: &Connection, key: &str) -> Result<Option<Versioned>> {
    let row = conn
        .prepare_cached(
            r#"SELECT version, value, timestamp FROM "values" WHERE key = ?1
               ORDER BY version DESC LIMIT 1"#,
        )
        .and_then(|mut s| s.query_row([key], read_row).optional())
        .map_err(db_err("read latest version"))?;
    row.map(|(v, val, ts)| to_versioned(key, v, val, ts))
        .transpose()
}

pub fn exact(conn: &Connection, key: &str, version: u64) -> Result<Option<Versioned>> {
    let row = conn
        .prepare_cached(
            r#"SELECT version, value, timestamp FROM "values" WHERE key = ?1 AND version = ?2"#,
        )
        .and_then(|mut s| {
            s.query_row(params![key, version as i64], read_row)
                .optional()
        })
        .map_err(db_err("read version"))?;
    row.map(|(v, val, ts)| to_versioned(key, v, val, ts))
        .transpose()
}

/// Versions after `after`, ascending, at most `limit`, stopping before the values would pass
/// `max_bytes` (but never empty while versions remain); `None` when the key does not exist.
pub fn page(
    conn: &Connection,
    key: &str,
    after: u64,
    limit: u32,
    max_bytes: usize,
) -> Result<Option<VersionsPage>> {
    let Some(latest) = latest(conn, key)? else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached(
            r#"SELECT version, value, timestamp FROM "values" WHERE key = ?1 AND version > ?2
               ORDER BY version ASC LIMIT ?3"#,
        )
        .map_err(db_err("list versions"))?;
    let mut rows = stmt
        .query(params![key, after.min(i64::MAX as u64) as i64, limit])
        .map_err(db_err("list versions"))?;
    let mut versions = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.next().map_err(db_err("list versions"))? {
        let (version, value, ts) = read_row(row).map_err(db_err("list versions"))?;
        let size = value.as_ref().map_or(4, String::len);
        if !versions.is_empty() && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        versions.push(to_versioned(key, version, value, ts)?);
    }
    Ok(Some(VersionsPage {
        latest_version: latest.version,
        versions,
    }))
}

/// One row of the change feed.
#[derive(Debug, Clone)]
pub struct ChangeRow {
    pub seq: u64,
    pub key: String,
    pub stored: Versioned,
}

/// A page of the change feed: rows after `after` that `wanted` accepts (by sequence and
/// key), scanning at most `scan` rows and stopping early once `max_bytes` of values are
/// gathered (at least one row is always returned, so a huge value cannot block the feed). `next` is the last
/// sequence examined, `head` the newest.
pub fn changes(
    conn: &Connection,
    after: u64,
    scan: u32,
    max_bytes: usize,
    wanted: &dyn Fn(u64, &str) -> bool,
) -> Result<(Vec<ChangeRow>, u64, u64)> {
    let head = head(conn)?;
    let mut stmt = conn
        .prepare_cached(
            r#"SELECT id, key, version, value, timestamp FROM "values" WHERE id > ?1
               ORDER BY id LIMIT ?2"#,
        )
        .map_err(db_err("read changes"))?;
    let mut rows = stmt
        .query(params![after.min(i64::MAX as u64) as i64, scan])
        .map_err(db_err("read changes"))?;
    let mut out = Vec::new();
    let mut next = after;
    let mut bytes = 0;
    while let Some(row) = rows.next().map_err(db_err("read changes"))? {
        let seq: i64 = row.get(0).map_err(db_err("read changes"))?;
        let key: String = row.get(1).map_err(db_err("read changes"))?;
        next = seq as u64;
        if !wanted(next, &key) {
            continue;
        }
        let (version, value, ts): Row = (
            row.get(2).map_err(db_err("read changes"))?,
            row.get(3).map_err(db_err("read changes"))?,
            row.get(4).map_err(db_err("read changes"))?,
        );
        let stored = to_versioned(&key, version, value, ts)?;
        bytes += stored.value.len() + key.len();
        out.push(ChangeRow {
            seq: seq as u64,
            key,
            stored,
        });
        if bytes >= max_bytes {
            break;
        }
    }
    Ok((out, next, head))
}

/// A `kv_meta` entry.
pub fn meta(conn: &Connection, name: &str) -> Result<Option<String>> {
    conn.query_row("SELECT value FROM kv_meta WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()
    .map_err(db_err("read metadata"))
}

/// Up to `limit` key names after `after`, in order (clean-up walks every key this way).
pub fn keys_after(conn: &Connection, after: &str, limit: u32) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT key FROM keys WHERE key > ?1 ORDER BY key LIMIT ?2")
        .map_err(db_err("read keys"))?;
    stmt.query_map(params![after, limit], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(db_err("read keys"))
}

/// The newest change sequence (0 for an empty database).
pub fn head(conn: &Connection) -> Result<u64> {
    conn.query_row(r#"SELECT COALESCE(MAX(id), 0) FROM "values""#, [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|v| v as u64)
    .map_err(db_err("read change sequence"))
}

/// Where catch-up stands with each peer: `(peer, instance, seq)`.
pub fn cursors(conn: &Connection) -> Result<Vec<(String, String, u64)>> {
    let mut stmt = conn
        .prepare_cached("SELECT peer, instance, seq FROM peer_cursors")
        .map_err(db_err("read cursors"))?;
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
    })
    .and_then(|rows| rows.collect())
    .map_err(db_err("read cursors"))
}

pub fn counts(conn: &Connection, path: &Path) -> Result<DbCounts> {
    let (total_keys, total_versions): (i64, i64) = conn
        .query_row(
            r#"SELECT (SELECT COUNT(*) FROM keys), (SELECT COUNT(*) FROM "values")"#,
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db_err("count rows"))?;
    let (database_size_bytes, wal_size_bytes) = file_sizes(path);
    Ok(DbCounts {
        total_keys: total_keys as u64,
        total_versions: total_versions as u64,
        database_size_bytes,
        wal_size_bytes,
    })
}

/// Bytes of the database file at `path` and of its write-ahead log (0 for a missing file).
pub fn file_sizes(path: &Path) -> (u64, u64) {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    (size(path), size(Path::new(&wal)))
}

/// A small pool of read-only connections, used from blocking threads only.
pub struct ReaderPool {
    path: std::path::PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl ReaderPool {
    pub fn new(path: &Path, max_idle: usize) -> ReaderPool {
        ReaderPool {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// Runs `f` on an idle connection, opening one if none is idle. Blocking: call it from
    /// `spawn_blocking`.
    pub fn with<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_database_with_duplicate_versions_is_refused_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv_store.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            r#"CREATE TABLE keys (key TEXT PRIMARY KEY, created_at REAL, updated_at REAL);
               CREATE TABLE "values" (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT,
                   value TEXT, version INTEGER, timestamp REAL);
               INSERT INTO "values"(key, value, version, timestamp) VALUES ('dup', '1', 1, 0);
               INSERT INTO "values"(key, value, version, timestamp) VALUES ('dup', '2', 1, 0);"#,
        )
        .unwrap();
        drop(conn);
        let err = open_writer(&path, SyncMode::Full).unwrap_err().to_string();
        assert!(err.contains("'dup' has version 1 more than once"), "{err}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv_store.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        let err = open_writer(&path, SyncMode::Full).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
    }

    #[test]
    fn a_database_keeps_its_instance_and_is_fresh_only_when_it_had_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv_store.db");
        let (conn, first) = open_writer(&path, SyncMode::Full).unwrap();
        assert!(first.fresh);
        assert_eq!(first.instance.len(), 32);
        drop(conn);
        let (conn, again) = open_writer(&path, SyncMode::Full).unwrap();
        assert_eq!(
            (again.instance.as_str(), again.fresh),
            (first.instance.as_str(), false)
        );
        drop(conn);
        // A seed database (or a restored copy) with data is new to the cluster too.
        let seed = dir.path().join("seed.db");
        Connection::open(&seed)
            .unwrap()
            .execute_batch(
                r#"CREATE TABLE keys (key TEXT PRIMARY KEY, created_at REAL, updated_at REAL);
                   CREATE TABLE "values" (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT,
                       value TEXT, version INTEGER, timestamp REAL);
                   INSERT INTO "values"(key, value, version, timestamp) VALUES ('k', '1', 1, 0);"#,
            )
            .unwrap();
        let (_conn, info) = open_writer(&seed, SyncMode::Full).unwrap();
        assert!(info.fresh);
    }

    #[test]
    fn the_change_feed_filters_keys_but_moves_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv_store.db");
        let (conn, _) = open_writer(&path, SyncMode::Normal).unwrap();
        for (i, key) in ["a", "b", "a", "c"].iter().enumerate() {
            conn.execute(
                r#"INSERT INTO "values"(key, value, version, timestamp) VALUES (?1, '1', ?2, 0)"#,
                params![key, i as i64 + 1],
            )
            .unwrap();
        }
        let only_a = |_: u64, k: &str| k == "a";
        let (rows, next, head) = changes(&conn, 0, 10, 1 << 20, &only_a).unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3]);
        assert_eq!((next, head), (4, 4));
        // A page that scans only other keys still advances the cursor.
        let (rows, next, _) = changes(&conn, 3, 1, 1 << 20, &only_a).unwrap();
        assert!(rows.is_empty());
        assert_eq!(next, 4);
        // The byte limit stops the page early, after at least one row.
        let all = |_: u64, _: &str| true;
        let (rows, next, _) = changes(&conn, 0, 10, 1, &all).unwrap();
        assert_eq!((rows.len(), next), (1, 1));
        assert_eq!(changes(&conn, 4, 10, 1, &all).unwrap().1, 4);
    }

    #[test]
    fn stored_text_that_is_not_json_is_reported_not_served() {
        assert!(to_versioned("k", 1, Some("Infinity".into()), Some(1.0)).is_err());
        assert!(to_versioned("k", -1, Some("1".into()), None).is_err());
        let v = to_versioned("k", 2, None, None).unwrap();
        assert_eq!(&*v.value, "null");
    }
}
