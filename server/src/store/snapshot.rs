//! Consistent copies of a database, taken while it serves: SQLite's online backup API run in
//! one step, inside one read transaction. In WAL mode that transaction never blocks the
//! writer, and the copy is the database exactly as of one commit: every version it holds is
//! complete, none is half there. Used by the server's `/admin/snapshot` route and, through
//! this library, by `kvstore restore` / `kvstore migrate-seed` (so SQL stays in this crate).
//!
//! Blocking: call these from `spawn_blocking` (or a plain thread) only.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Start of the temporary files a snapshot is written to (inside the data directory, so the
/// copy lands on the same disk; not `*.db`, so the clean-up never mistakes one for a database).
pub const TEMP_PREFIX: &str = ".kv-snapshot-";

/// What a database file holds, and its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Rows of `keys`.
    pub keys: u64,
    /// Rows of `"values"`: every version of every key.
    pub versions: u64,
    /// Size of the file.
    pub bytes: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
}

/// Copies the database at `from` into a new file `to` (which must not exist), consistently
/// even while another process writes to `from`, and describes the copy.
pub fn copy_database(from: &Path, to: &Path) -> Result<SnapshotInfo> {
    if to.exists() {
        return Err(Error::Io {
            context: format!("copy the database to {}", to.display()),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    if !from.is_file() {
        return Err(Error::Io {
            context: format!("open the database {}", from.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let copied = backup(from, to);
    if copied.is_err() {
        let _ = std::fs::remove_file(to);
    }
    copied?;
    inspect(to)
}

fn backup(from: &Path, to: &Path) -> Result<()> {
    let db = |context| move |source| Error::Database { context, source };
    let source = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(db("open the database to copy"))?;
    source
        .busy_timeout(Duration::from_secs(5))
        .map_err(db("set busy timeout"))?;
    let mut target = Connection::open(to).map_err(db("create the copy"))?;
    {
        let backup = Backup::new(&source, &mut target).map_err(db("start the copy"))?;
        // All pages in one step: one read transaction, so one consistent state. Copying page
        // by page would restart whenever the writer commits, and never end under load.
        let mut attempts = 0;
        loop {
            match backup.step(-1).map_err(db("copy the database"))? {
                StepResult::Done => break,
                StepResult::More => {}
                _ if attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(Error::Internal(format!(
                        "the database {} stayed locked; the copy gave up",
                        from.display()
                    )));
                }
            }
        }
    }
    // A standalone file: no -wal beside it, whatever mode the source was in.
    target
        .query_row("PRAGMA journal_mode=DELETE", [], |_| Ok(()))
        .map_err(db("finish the copy"))?;
    // A copy is another database: it must not share the source's instance id, or peers
    // would take its change sequence (restarting from the snapshot's) for the source's and
    // skip versions. Without an id, whoever opens it next makes a new one and treats it as
    // new to the cluster (see db.rs). Restore copies a backup file as it is, so a restored
    // database has no id either.
    let has_instance: bool = target
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kv_meta') \
             AND EXISTS (SELECT 1 FROM kv_meta WHERE name = 'instance')",
            [],
            |r| r.get(0),
        )
        .or_else(|_| Ok::<_, rusqlite::Error>(false))
        .map_err(db("read the copy's instance id"))?;
    if has_instance {
        target
            .execute("DELETE FROM kv_meta WHERE name = 'instance'", [])
            .map_err(db("clear the copy's instance id"))?;
    }
    target.close().map_err(|(_, source)| Error::Database {
        context: "close the copy",
        source,
    })?;
    let file = std::fs::File::open(to).map_err(|source| Error::Io {
        context: format!("open {}", to.display()),
        source,
    })?;
    file.sync_all().map_err(|source| Error::Io {
        context: format!("sync {}", to.display()),
        source,
    })
}

/// Counts the keys and versions of a database file that no one is writing (a snapshot, a
/// backup file), and checksums it. Fails if it is not a kvstore (or seed) database.
pub fn inspect(path: &Path) -> Result<SnapshotInfo> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            Error::Database {
                context: "open the database file",
                source,
            }
        })?;
    let (keys, versions): (i64, i64) = conn
        .query_row(
            r#"SELECT (SELECT COUNT(*) FROM keys), (SELECT COUNT(*) FROM "values")"#,
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|source| Error::Database {
            context: "count keys and versions (is it a kvstore database?)",
            source,
        })?;
    drop(conn);
    let (bytes, sha256) = sha256_file(path)?;
    Ok(SnapshotInfo {
        keys: keys as u64,
        versions: versions as u64,
        bytes,
        sha256,
    })
}

/// Size and SHA-256 (lowercase hex) of a file.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let io = |source| Error::Io {
        context: format!("read {}", path.display()),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// A fresh temporary path in `dir` for a snapshot; the caller removes the file.
pub fn temp_path(dir: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}-{n}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_holds_the_same_rows_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a.db");
        let conn = Connection::open(&from).unwrap();
        conn.execute_batch(
            r#"PRAGMA journal_mode=WAL;
               CREATE TABLE keys (key TEXT PRIMARY KEY, created_at REAL, updated_at REAL);
               CREATE TABLE "values" (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT,
                   value TEXT, version INTEGER, timestamp REAL);
               INSERT INTO keys VALUES ('k', 1, 2);
               INSERT INTO "values"(key, value, version, timestamp) VALUES ('k', '1', 1, 1);
               INSERT INTO "values"(key, value, version, timestamp) VALUES ('k', '2', 2, 2);"#,
        )
        .unwrap();
        // Still open, with the rows in the WAL: the copy must see them.
        let to = dir.path().join("b.db");
        let info = copy_database(&from, &to).unwrap();
        assert_eq!((info.keys, info.versions), (1, 2));
        assert_eq!(info, inspect(&to).unwrap());
        assert_eq!(info.bytes, std::fs::metadata(&to).unwrap().len());
        assert_eq!(info.sha256.len(), 64);
        assert!(!dir.path().join("b.db-wal").exists());
        assert!(copy_database(&from, &to).is_err());
        drop(conn);

        let not_kv = dir.path().join("c.db");
        Connection::open(&not_kv)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = inspect(&not_kv).unwrap_err().to_string();
        assert!(err.contains("kvstore database"), "{err}");
    }
}
