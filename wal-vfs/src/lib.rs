//! A SQLite VFS that writes each commit's WAL frames with one system call instead of two per
//! frame. Everything else is the default (`unix`) VFS, called directly.
//!
//! Why: SQLite writes a WAL frame as two `pwrite`s (its 24-byte header, then the page), so a
//! commit of 9 pages is 18 writes before its fsync. On this project's VM each small buffered
//! write costs a few microseconds of kernel time (the file system's write path),
//! and the writer thread is the busiest thread of a server under durable puts. Measured with a
//! C loop of WAL-sized commits (9 frames, then fsync, overwriting a preallocated file): about
//! 60 µs of CPU and 115 µs of wall time per commit as 18 writes, about 28 µs and 83 µs as one.
//!
//! How: the WAL file's writes that continue the previous one are gathered in memory, and
//! written as one before anything else touches the file: a sync, a read, a truncate, its
//! size, a file control, closing it; or when the buffer is full. A write that does not
//! continue the buffer (SQLite rewriting a frame of the same transaction) first writes the
//! buffer out, so writes reach the file in SQLite's order.
//!
//! **Only for `PRAGMA synchronous=FULL`.** Then SQLite syncs the WAL at the end of every
//! commit, after its last write and before it publishes the commit in the wal-index, which
//! is when other connections may read its frames; so the file holds every frame of a commit
//! before anyone can look for it. With `NORMAL` there is no sync at commit, and frames could
//! still be in this buffer when readers look for them: kvstore's server uses this VFS only
//! with `FULL` (`server/src/store/db.rs`).
//!
//! Only the WAL file is wrapped: every other file is opened by the default VFS into the
//! memory SQLite gave this one, so SQLite calls the default methods on it directly.
//! Connections on other VFSs (readers, the checkpointer) share the same files and locks,
//! since both VFSs open them through the same default VFS.
//!
//! Use: [`register`] once, then open the writing connection with [`NAME`] as its VFS
//! (`rusqlite::Connection::open_with_flags_and_vfs`) and `PRAGMA synchronous=FULL`.
//!
//! This is kvstore's only crate with unsafe code; the workspace forbids it everywhere else.

use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name to open a connection with (`Connection::open_with_flags_and_vfs`).
pub const NAME: &CStr = c"kv-wal-coalesce";

/// At most this many bytes wait in memory: a commit of large values is written out in
/// pieces of this size, still far fewer calls than two per 4 KiB page. It must stay under
/// 128 KiB: the default VFS cuts every write to its low 17 bits (`nBuf &= 0x1ffff` in
/// `seekAndWriteFd`; SQLite itself never writes more than a 64 KiB page), so a larger one
/// would be cut short and reported as a full disk. 124 KiB holds a commit of 30 4-KiB pages
/// (a batch of 96 KiB took two writes per commit on one server with 32 connections).
const BUFFER_CAP: usize = 124 << 10;

/// The default VFS, which this one calls. (This VFS's own object is leaked on purpose: SQLite
/// holds it, and links it into its list, for the life of the process.)
struct Registered {
    base: *mut ffi::sqlite3_vfs,
}

// SAFETY: the pointer is to a VFS object that lives as long as the process and that SQLite
// itself shares between threads (VFS methods are thread-safe in a threadsafe build).
unsafe impl Send for Registered {}
unsafe impl Sync for Registered {}

static REGISTERED: OnceLock<Result<Registered, c_int>> = OnceLock::new();

/// SQLite could not register the VFS: its result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SQLite refused to register the kv-wal-coalesce VFS (result code {0})")]
pub struct Error(pub c_int);

/// Registers the VFS (once per process; later calls return the first result). Fails only if
/// SQLite has no default VFS or refuses the registration.
pub fn register() -> Result<(), Error> {
    REGISTERED
        .get_or_init(|| {
            // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe; the copy
            // keeps the default VFS's own methods and pAppData, so every method but xOpen
            // behaves exactly as the default's (none of them depends on the VFS's address).
            unsafe {
                let rc = ffi::sqlite3_initialize();
                if rc != ffi::SQLITE_OK {
                    return Err(rc);
                }
                let base = ffi::sqlite3_vfs_find(ptr::null());
                if base.is_null() {
                    return Err(ffi::SQLITE_ERROR);
                }
                let vfs = Box::leak(Box::new(ptr::read(base)));
                vfs.pNext = ptr::null_mut();
                vfs.zName = NAME.as_ptr();
                vfs.szOsFile = c_int::try_from(real_file_offset())
                    .map_err(|_| ffi::SQLITE_ERROR)?
                    + (*base).szOsFile;
                vfs.xOpen = Some(open);
                let rc = ffi::sqlite3_vfs_register(vfs, 0);
                if rc != ffi::SQLITE_OK {
                    return Err(rc);
                }
                Ok(Registered { base })
            }
        })
        .as_ref()
        .map(drop)
        .map_err(|rc| Error(*rc))
}

fn base_vfs() -> *mut ffi::sqlite3_vfs {
    match REGISTERED.get() {
        Some(Ok(registered)) => registered.base,
        // open() is only reachable through the registered VFS.
        _ => unreachable!("the WAL VFS is used before it was registered"),
    }
}

/// The wrapped WAL file: what SQLite sees (`file`, first, so the pointers convert), then the
/// buffer. The default VFS's own file follows at [`real_file_offset`].
#[repr(C)]
struct WalFile {
    file: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    buffer: Vec<u8>,
    /// File offset of `buffer[0]`.
    start: i64,
}

fn real_file_offset() -> usize {
    let align = 16;
    std::mem::size_of::<WalFile>().div_ceil(align) * align
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 1: no shared memory or memory mapping, which SQLite uses only on the database
    // file, never on its WAL.
    iVersion: 1,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(wal_sector_size),
    xDeviceCharacteristics: Some(wal_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let base = base_vfs();
    // SAFETY: SQLite gave `file` szOsFile bytes (this VFS's, at least the default's), and
    // the default VFS's xOpen and its methods are called as SQLite itself would.
    unsafe {
        let Some(base_open) = (*base).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            return base_open(base, name, file, flags, out_flags);
        }
        let wal = file.cast::<WalFile>();
        let real = file
            .cast::<u8>()
            .add(real_file_offset())
            .cast::<ffi::sqlite3_file>();
        // SQLite calls xClose only when pMethods is set, so it stays null until the end.
        (*file).pMethods = ptr::null();
        let rc = base_open(base, name, real, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        ptr::write(
            wal,
            WalFile {
                file: ffi::sqlite3_file {
                    pMethods: &WAL_METHODS,
                },
                real,
                buffer: Vec::new(),
                start: 0,
            },
        );
        ffi::SQLITE_OK
    }
}

/// # Safety
/// `file` must be a file this VFS opened as a WAL, and not yet closed.
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    // SAFETY: per the contract; SQLite serializes calls on one file.
    unsafe { &mut *file.cast::<WalFile>() }
}

/// The default VFS's methods of the real file.
fn methods(wal: &WalFile) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: the real file was opened successfully, so its pMethods is set and static.
    unsafe { &*(*wal.real).pMethods }
}

/// Writes the buffer out; it is empty afterwards even on error (SQLite rolls the transaction
/// back on a failed write, and writes the frames again on the next attempt).
fn flush(wal: &mut WalFile) -> c_int {
    if wal.buffer.is_empty() {
        return ffi::SQLITE_OK;
    }
    let Some(write) = methods(wal).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let Ok(len) = c_int::try_from(wal.buffer.len()) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: the buffer is valid for len bytes; the real file is open.
    let rc = unsafe { write(wal.real, wal.buffer.as_ptr().cast(), len, wal.start) };
    #[cfg(test)]
    tests::WRITES.with(|w| w.set(w.get() + 1));
    wal.buffer.clear();
    rc
}

unsafe extern "C" fn wal_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    if amount <= 0 || data.is_null() {
        // SQLite never writes nothing; a slice needs a non-null pointer even then.
        return ffi::SQLITE_OK;
    }
    // SAFETY: SQLite passes a file of ours and `amount` readable bytes at `data`.
    let (wal, bytes) = unsafe {
        (
            wal(file),
            std::slice::from_raw_parts(data.cast::<u8>(), amount.unsigned_abs() as usize),
        )
    };
    let continues = wal.start + wal.buffer.len() as i64 == offset;
    if !wal.buffer.is_empty() && (!continues || wal.buffer.len() + bytes.len() > BUFFER_CAP) {
        let rc = flush(wal);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if bytes.len() > BUFFER_CAP {
        let Some(write) = methods(wal).xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        // SAFETY: forwarding SQLite's own arguments to the real file.
        return unsafe { write(wal.real, data, amount, offset) };
    }
    if wal.buffer.is_empty() {
        wal.start = offset;
    }
    wal.buffer.extend_from_slice(bytes);
    ffi::SQLITE_OK
}

unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes each file once; the WalFile is dropped in place here and the
    // memory is SQLite's to free.
    unsafe {
        let wal = wal(file);
        let flushed = flush(wal);
        let closed = match methods(wal).xClose {
            Some(close) => close(wal.real),
            None => ffi::SQLITE_OK,
        };
        ptr::drop_in_place(wal as *mut WalFile);
        (*file).pMethods = ptr::null();
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

/// Runs `call` on the real file after writing the buffer out.
fn flushed_then(wal: &mut WalFile, call: impl FnOnce(&WalFile) -> c_int) -> c_int {
    let rc = flush(wal);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    call(wal)
}

unsafe extern "C" fn wal_read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: forwarding SQLite's own arguments to the real file.
    flushed_then(unsafe { wal(file) }, |wal| match methods(wal).xRead {
        Some(read) => unsafe { read(wal.real, data, amount, offset) },
        None => ffi::SQLITE_IOERR_READ,
    })
}

unsafe extern "C" fn wal_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: as in wal_read.
    flushed_then(unsafe { wal(file) }, |wal| match methods(wal).xTruncate {
        Some(truncate) => unsafe { truncate(wal.real, size) },
        None => ffi::SQLITE_IOERR_TRUNCATE,
    })
}

unsafe extern "C" fn wal_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: as in wal_read.
    flushed_then(unsafe { wal(file) }, |wal| match methods(wal).xSync {
        Some(sync) => unsafe { sync(wal.real, flags) },
        None => ffi::SQLITE_IOERR_FSYNC,
    })
}

unsafe extern "C" fn wal_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: as in wal_read.
    flushed_then(unsafe { wal(file) }, |wal| match methods(wal).xFileSize {
        Some(file_size) => unsafe { file_size(wal.real, size) },
        None => ffi::SQLITE_IOERR_FSTAT,
    })
}

unsafe extern "C" fn wal_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: as in wal_read.
    flushed_then(unsafe { wal(file) }, |wal| {
        match methods(wal).xFileControl {
            Some(control) => unsafe { control(wal.real, op, arg) },
            None => ffi::SQLITE_NOTFOUND,
        }
    })
}

unsafe extern "C" fn wal_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: as in wal_read.
    let wal = unsafe { wal(file) };
    match methods(wal).xLock {
        Some(lock) => unsafe { lock(wal.real, level) },
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn wal_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: as in wal_read.
    let wal = unsafe { wal(file) };
    match methods(wal).xUnlock {
        Some(unlock) => unsafe { unlock(wal.real, level) },
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn wal_check_reserved_lock(
    file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    // SAFETY: as in wal_read.
    let wal = unsafe { wal(file) };
    match methods(wal).xCheckReservedLock {
        Some(check) => unsafe { check(wal.real, out) },
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn wal_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as in wal_read.
    let wal = unsafe { wal(file) };
    match methods(wal).xSectorSize {
        Some(sector_size) => unsafe { sector_size(wal.real) },
        None => 4096,
    }
}

unsafe extern "C" fn wal_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as in wal_read.
    let wal = unsafe { wal(file) };
    match methods(wal).xDeviceCharacteristics {
        Some(characteristics) => unsafe { characteristics(wal.real) },
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};
    use std::path::PathBuf;

    fn open(path: &std::path::Path) -> Connection {
        register().unwrap();
        let conn =
            Connection::open_with_flags_and_vfs(path, OpenFlags::default(), NAME.to_str().unwrap())
                .unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .unwrap();
        conn
    }

    /// A scratch directory (kept while the test runs), the database's path in it, and the
    /// writer's connection with a table `t(k INTEGER PRIMARY KEY, v <value_type>)`.
    fn writer_with_table(value_type: &str) -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = open(&path);
        writer
            .execute_batch(&format!(
                "CREATE TABLE t(k INTEGER PRIMARY KEY, v {value_type})"
            ))
            .unwrap();
        (dir, path, writer)
    }

    /// One transaction inserting a 300-byte text under each key.
    fn commit_rows(writer: &Connection, keys: std::ops::Range<i64>) {
        let tx = writer.unchecked_transaction().unwrap();
        for k in keys {
            tx.execute(
                "INSERT INTO t(k, v) VALUES (?1, ?2)",
                rusqlite::params![k, "x".repeat(300)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn integrity(conn: &Connection) -> String {
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    }

    thread_local! {
        /// Writes this thread's WAL files made to the real file (SQLite calls the VFS on the
        /// thread that runs the statement, so tests running beside each other do not mix).
        pub(super) static WRITES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn a_commit_of_several_frames_is_one_write() {
        let (_dir, path, writer) = writer_with_table("TEXT");
        writer.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
        for round in 0..3_i64 {
            let frames_before = wal_frames(&path);
            let writes_before = WRITES.with(|w| w.get());
            // About 12 KB: three or more pages, so six or more writes without this VFS.
            commit_rows(&writer, round * 40..(round + 1) * 40);
            assert!(wal_frames(&path) - frames_before >= 3, "round {round}");
            assert_eq!(WRITES.with(|w| w.get()) - writes_before, 1, "round {round}");
        }
    }

    /// Frames in the WAL, from its file's size (a 32-byte header, then frames of a 24-byte
    /// header and a 4 KiB page). The WAL is not checkpointed here, so it only grows.
    fn wal_frames(db: &std::path::Path) -> u64 {
        let len = std::fs::metadata(db.with_extension("db-wal"))
            .unwrap()
            .len();
        len.saturating_sub(32) / (24 + 4096)
    }

    #[test]
    fn commits_through_the_vfs_are_read_by_connections_on_the_default_vfs() {
        let (_dir, path, writer) = writer_with_table("TEXT");
        // A reader on the default VFS sees each commit at once, before any checkpoint:
        // the frames were in the file when the commit was published.
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        for round in 0..50_i64 {
            commit_rows(&writer, round * 20..(round + 1) * 20);
            let count: i64 = reader
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(count, (round + 1) * 20);
        }
    }

    #[test]
    fn a_transaction_larger_than_the_buffer_is_written_whole() {
        let (_dir, path, writer) = writer_with_table("BLOB");
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        // 3 MiB in one transaction: more than the buffer holds (and more than the default
        // VFS writes in one call, which a buffer over 128 KiB would have hit).
        let tx = writer.unchecked_transaction().unwrap();
        for i in 0..3_i64 {
            tx.execute(
                "INSERT INTO t(k, v) VALUES (?1, ?2)",
                rusqlite::params![i, vec![i as u8; 1 << 20]],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        writer
            .execute("INSERT INTO t(k, v) VALUES (9, x'01')", [])
            .unwrap();
        let total: i64 = reader
            .query_row("SELECT sum(length(v)) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, 3 * (1 << 20) + 1);
        assert_eq!(integrity(&reader), "ok");
    }

    #[test]
    fn rolled_back_and_rewritten_frames_keep_the_database_whole() {
        let (_dir, path, writer) = writer_with_table("TEXT");
        // A tiny page cache makes SQLite spill frames before the commit, and write some pages
        // twice in one transaction (frames rewritten in place, then checksums redone).
        writer.execute_batch("PRAGMA cache_size=2").unwrap();
        for round in 0..5_i64 {
            let tx = writer.unchecked_transaction().unwrap();
            for i in 0..200 {
                tx.execute(
                    "INSERT OR REPLACE INTO t(k, v) VALUES (?1, ?2)",
                    rusqlite::params![(i * 7919) % 500, format!("{round}-{i}").repeat(20)],
                )
                .unwrap();
            }
            if round % 2 == 1 {
                tx.rollback().unwrap();
            } else {
                tx.commit().unwrap();
            }
        }
        drop(writer);
        let reopened = Connection::open(&path).unwrap();
        assert_eq!(integrity(&reopened), "ok");
        let last: String = reopened
            .query_row("SELECT v FROM t WHERE k = ?1", [(199 * 7919) % 500], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(last, "4-199".repeat(20));
    }
}
