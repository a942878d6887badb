//! WAL checkpoints off the write path. SQLite's automatic checkpoint runs inside the commit
//! that crosses the threshold, so one unlucky put pays for copying the whole WAL into the
//! database and fsyncing it. Here a thread with its own connection runs PASSIVE checkpoints
//! (they never block the writer or readers) when the writer says it committed, at most a few
//! times a second. The writer keeps a large automatic threshold only as a backstop.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use rusqlite::Connection;

use crate::error::{Error, Result};

/// Pages of WAL after which the writer itself checkpoints, should this thread fall behind.
pub const BACKSTOP_PAGES: u32 = 20_000;
/// Least time between checkpoints under continuous load.
const PACE: Duration = Duration::from_millis(200);
/// Checkpoint at least this often when idle, to fold in what the last burst left.
const IDLE: Duration = Duration::from_secs(5);

/// The writer's end: a cheap, non-blocking "I committed".
pub struct Checkpointer {
    tx: Option<SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub fn committed(&self) {
        if let Some(tx) = &self.tx {
            match tx.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                // The thread is gone (it logged why); the backstop keeps the WAL bounded.
                Err(TrySendError::Disconnected(())) => {}
            }
        }
    }

    /// Runs a last full checkpoint and waits for the thread, so that once the store is
    /// closed no connection of it is left touching the database.
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the checkpoint thread; [`Checkpointer::finish`] stops it.
pub fn start(db_path: &Path, checkpoints: Counter) -> Result<Checkpointer> {
    let conn = Connection::open(db_path).map_err(|source| Error::Database {
        context: "open checkpoint connection",
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|source| Error::Database {
            context: "set busy timeout",
            source,
        })?;
    let (tx, rx) = mpsc::sync_channel::<()>(1);
    let thread = std::thread::Builder::new()
        .name("kv-checkpoint".into())
        .spawn(move || {
            let mut last = Instant::now();
            loop {
                match rx.recv_timeout(IDLE) {
                    Ok(()) => {
                        // Pace checkpoints under continuous load, but stop at once on close.
                        if !sleep_until(&rx, last + PACE) {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                if checkpoint(&conn, "PASSIVE") {
                    checkpoints.inc();
                }
                last = Instant::now();
            }
            // The writer is done: fold the WAL back so the file stands alone.
            checkpoint(&conn, "TRUNCATE");
        })
        .map_err(|source| Error::Io {
            context: "start the checkpoint thread".into(),
            source,
        })?;
    Ok(Checkpointer {
        tx: Some(tx),
        thread: Some(thread),
    })
}

/// Waits until `deadline`, swallowing the writer's commit notices (they arrive after every
/// commit: waiting on the channel alone would checkpoint after every commit, which is what
/// the pace is there to prevent). False when the writer is gone.
fn sleep_until(rx: &Receiver<()>, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        match rx.recv_timeout(left) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// Runs one checkpoint; false (and a warning) if it failed.
fn checkpoint(conn: &Connection, mode: &str) -> bool {
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    match conn.query_row(&sql, [], |_| Ok(())) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(%err, mode, "WAL checkpoint failed; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under load the writer signals after every commit; the pace must hold anyway.
    #[test]
    fn commit_notices_do_not_cut_the_pace_short() {
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let writer = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                let _ = tx.try_send(());
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let started = Instant::now();
        assert!(sleep_until(&rx, started + Duration::from_millis(100)));
        assert!(started.elapsed() >= Duration::from_millis(100));
        writer.join().unwrap();
    }

    #[test]
    fn a_closed_channel_ends_the_wait_at_once() {
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        drop(tx);
        let started = Instant::now();
        assert!(!sleep_until(&rx, started + Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
