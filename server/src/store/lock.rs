//! One process per database: a server holds an exclusive lock on `<db>.lock` for as long as
//! it runs, so a second server on the same data directory, or the clean-up command, is
//! refused with a clear message instead of racing the running one.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Held while the database is in use; the OS releases it when dropped or when the process
/// dies (even by `kill -9`), so a crash never leaves a stale lock behind.
#[derive(Debug)]
pub struct DbLock {
    _file: File,
}

pub fn lock_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl DbLock {
    pub fn acquire(db_path: &Path) -> Result<DbLock> {
        let path = lock_path(db_path);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                context: format!("open lock file {}", path.display()),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DbLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::DatabaseInUse {
                path: db_path.to_owned(),
            }),
            Err(TryLockError::Error(source)) => Err(Error::Io {
                context: format!("lock {}", path.display()),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("kv_store.db");
        let first = DbLock::acquire(&db).unwrap();
        assert!(matches!(
            DbLock::acquire(&db),
            Err(Error::DatabaseInUse { .. })
        ));
        drop(first);
        DbLock::acquire(&db).unwrap();
    }
}
