//! WAL checkpoints off the write path. SQLite's automatic checkpoint runs inside the commit
//! that crosses the threshold, so one unlucky put pays for copying the whole WAL into the
//! database and fsyncing it. Here a thread with its own connection runs PASSIVE checkpoints
//! (they never block the writer or readers) when the writer says it committed, at most a few
//! times a second. The writer keeps a large automatic threshold only as a backstop.
//!
//! Under a steady stream of commits the WAL does not start over after these checkpoints:
//! SQLite starts it over only once every frame in it is in the database, and each pass copies
//! the frames there were when it began while the writer adds more. It grows until the
//! backstop, whose checkpoint runs in the writer and so catches up (about every 2 s at
//! 20k puts/s over 3 servers). Having the writer finish every pass instead kept the WAL
//! near 13 MB but stalled it on a database fsync five times a second, which put gateway PUT
//! p99 over 5 ms (docs/benchmarks.md); `kv_server_wal_frames` shows where the WAL stands.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rusqlite::Connection;

use crate::error::{Error, Result};

/// Pages of WAL after which the writer itself checkpoints, should this thread fall behind.
pub const BACKSTOP_PAGES: u32 = 20_000;
/// Least time between checkpoints under continuous load.
const PACE: Duration = Duration::from_millis(200);
/// Checkpoint at least this often when idle, to fold in what the last burst left.
const IDLE: Duration = Duration::from_secs(5);

/// What the writer and the checkpoint thread share: two flags, no queue.
///
/// Why not a channel: the writer commits thousands of times a second, and a notice per
/// commit woke this thread per commit only for it to go back to sleep until its pace allowed
/// the next checkpoint. Measured with three servers on two cores: that thread took about 5 %
/// of a server's CPU, and the writer's wake-ups another 2 %. Now only the first commit after
/// a checkpoint wakes it.
#[derive(Default)]
struct Signals {
    /// Something was committed since the last checkpoint started.
    dirty: AtomicBool,
    /// The writer is gone: run the last checkpoint and exit.
    closed: AtomicBool,
}

/// The writer's end: a cheap, non-blocking "I committed".
pub struct Checkpointer {
    signals: Arc<Signals>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub fn committed(&self) {
        // A load first: under load the flag is already set and this stays a plain read.
        if !self.signals.dirty.load(Ordering::Relaxed)
            && !self.signals.dirty.swap(true, Ordering::AcqRel)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
    }

    /// Runs a last full checkpoint and waits for the thread, so that once the store is
    /// closed no connection of it is left touching the database.
    pub fn finish(mut self) {
        self.signals.closed.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// A writer that ends without [`Checkpointer::finish`] (it panicked) still lets the thread go.
impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signals.closed.store(true, Ordering::Release);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

/// Starts the checkpoint thread; [`Checkpointer::finish`] stops it.
pub fn start(db_path: &Path, checkpoints: Counter, wal_frames: Gauge) -> Result<Checkpointer> {
    let conn = Connection::open(db_path).map_err(|source| Error::Database {
        context: "open checkpoint connection",
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|source| Error::Database {
            context: "set busy timeout",
            source,
        })?;
    let signals = Arc::new(Signals::default());
    let shared = signals.clone();
    let thread = std::thread::Builder::new()
        .name("kv-checkpoint".into())
        .spawn(move || {
            let signals = shared;
            let mut last = Instant::now();
            // Each round: wait for a commit (or the idle period), keep the pace, checkpoint.
            while wait(&signals, |s| s.dirty.load(Ordering::Acquire), IDLE)
                && wait(
                    &signals,
                    |_| false,
                    (last + PACE).saturating_duration_since(Instant::now()),
                )
            {
                // Cleared before the checkpoint: a commit during it asks for the next one.
                signals.dirty.store(false, Ordering::Release);
                if checkpoint(&conn, "PASSIVE", &wal_frames) {
                    checkpoints.inc();
                }
                last = Instant::now();
            }
            // The writer is done: fold the WAL back so the file stands alone.
            checkpoint(&conn, "TRUNCATE", &wal_frames);
        })
        .map_err(|source| Error::Io {
            context: "start the checkpoint thread".into(),
            source,
        })?;
    Ok(Checkpointer {
        signals,
        thread: Some(thread),
    })
}

/// Parks the calling thread until `ready` holds or `timeout` has passed. False when the
/// writer closed meanwhile (at once, whatever is left of the wait). Parking can wake
/// spuriously, so every wake-up checks again.
fn wait(signals: &Signals, ready: impl Fn(&Signals) -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if signals.closed.load(Ordering::Acquire) {
            return false;
        }
        if ready(signals) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::park_timeout(left);
    }
}

/// Runs one checkpoint and records the frames the WAL held; false (and a warning) if it
/// failed.
fn checkpoint(conn: &Connection, mode: &str, wal_frames: &Gauge) -> bool {
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    // The row is (busy, frames in the WAL, frames now in the database).
    match conn.query_row(&sql, [], |r| r.get::<_, i64>(1)) {
        Ok(frames) => {
            wal_frames.set(frames.max(0));
            true
        }
        Err(err) => {
            tracing::warn!(%err, mode, "WAL checkpoint failed; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread::Thread;

    use super::*;

    /// The signals of a checkpoint thread that is the calling test thread itself.
    fn own_signals() -> (Arc<Signals>, Thread) {
        (Arc::new(Signals::default()), std::thread::current())
    }

    /// Under load the writer commits all the time; the pace must hold anyway.
    #[test]
    fn commits_do_not_cut_the_pace_short() {
        let (signals, me) = own_signals();
        let writer_signals = signals.clone();
        let writer = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                writer_signals.dirty.store(true, Ordering::Release);
                me.unpark();
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let started = Instant::now();
        assert!(wait(&signals, |_| false, Duration::from_millis(100)));
        assert!(started.elapsed() >= Duration::from_millis(100));
        writer.join().unwrap();
    }

    #[test]
    fn a_commit_ends_the_idle_wait_and_closing_ends_any_wait() {
        let (signals, me) = own_signals();
        let other = signals.clone();
        let waker = me.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            other.dirty.store(true, Ordering::Release);
            waker.unpark();
        });
        let started = Instant::now();
        assert!(wait(
            &signals,
            |s| s.dirty.load(Ordering::Acquire),
            Duration::from_secs(10)
        ));
        assert!(started.elapsed() < Duration::from_secs(5));

        let other = signals.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            other.closed.store(true, Ordering::Release);
            me.unpark();
        });
        let started = Instant::now();
        assert!(!wait(&signals, |_| false, Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// End to end: commits get checkpointed, and `finish` returns at once, not after the
    /// idle period.
    #[test]
    fn the_thread_checkpoints_after_commits_and_stops_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        let counter = Counter::default();
        let frames = Gauge::default();
        let checkpointer = start(&path, counter.clone(), frames.clone()).unwrap();
        checkpointer.committed();
        let until = Instant::now() + Duration::from_secs(4);
        while counter.get() == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(counter.get() >= 1, "a commit was never checkpointed");
        // The table and its row were two pages of WAL when the checkpoint ran.
        assert!(frames.get() >= 2, "WAL frames recorded: {}", frames.get());
        let started = Instant::now();
        checkpointer.finish();
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
