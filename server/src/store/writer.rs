//! The single writer: one thread owns the write connection, takes every put waiting in its
//! channel and commits them in one transaction (group commit), then answers each caller.
//!
//! Why one thread: it alone assigns versions, so "latest + 1" needs no lock and versions
//! stay gap-free under any number of concurrent clients; and batching turns one fsync per
//! write into one fsync per batch, which is where durable write throughput comes from.
//! Nothing here runs on a tokio worker: callers await a oneshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::cache::Cache;
use super::checkpoint::Checkpointer;
use super::known_latest::KnownLatest;
use super::model::{PutOutcome, PutRequest, ReplicaBatch, ReplicaOutcome, Versioned, unix_now};
use super::slow_commits::{self, SlowCommits};
use crate::error::{Error, Result};
use crate::metrics::StoreMetrics;

/// Most puts committed in one transaction; bounds the latency a batch adds.
const MAX_BATCH: usize = 1024;

pub type PutReply = oneshot::Sender<Result<PutOutcome>>;
pub type ReplicaReply = oneshot::Sender<Result<ReplicaOutcome>>;

/// `kv_meta` entries to record together, and whether catch-up cursors are reset with them.
#[derive(Debug, Clone, Default)]
pub struct MetaUpdate {
    pub entries: Vec<(String, String)>,
    pub clear_cursors: bool,
}

/// Commands that must not be reordered with the writes around them: the batch gathered so
/// far is committed first, and nothing queued later joins it.
enum Barrier {
    Metas(MetaUpdate, oneshot::Sender<Result<()>>),
    Delete(Vec<Arc<str>>, oneshot::Sender<Result<u64>>),
}

pub enum Command {
    Put(PutRequest, PutReply),
    /// Versions assigned by a primary elsewhere, stored exactly as given.
    Replicate(ReplicaBatch, ReplicaReply),
    /// Readiness probe: answered once the writer has taken and released the write lock.
    Ping(oneshot::Sender<Result<()>>),
    /// Records a `kv_meta` entry (after everything queued before it).
    SetMeta(String, String, oneshot::Sender<Result<()>>),
    /// Records `kv_meta` entries and, if asked, forgets every catch-up cursor, in one
    /// transaction, after everything queued before it and before anything queued after it
    /// (a ring state and its cursor reset must never be seen apart).
    SetMetas(MetaUpdate, oneshot::Sender<Result<()>>),
    /// Deletes every version of these keys (ring clean-up); answers the versions deleted.
    DeleteKeys(Vec<Arc<str>>, oneshot::Sender<Result<u64>>),
    /// Finish everything queued before this, then exit.
    Stop,
}

pub struct Writer {
    pub conn: Connection,
    pub cache: Arc<Cache>,
    pub metrics: StoreMetrics,
    pub checkpointer: Checkpointer,
    /// Latest committed version of recently written keys. Exact, because this thread is the
    /// only writer of the database (the data directory lock keeps other processes out), and
    /// updated only after a commit succeeds.
    known_latest: KnownLatest,
    slow_commits: SlowCommits,
}

impl Writer {
    pub fn new(
        conn: Connection,
        cache: Arc<Cache>,
        metrics: StoreMetrics,
        checkpointer: Checkpointer,
    ) -> Writer {
        Writer {
            conn,
            cache,
            metrics,
            checkpointer,
            known_latest: KnownLatest::default(),
            slow_commits: SlowCommits::default(),
        }
    }

    /// Runs the writer loop until [`Command::Stop`] or until every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
        let mut pings = Vec::new();
        let mut metas = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut stop = false;
            let mut barrier = None;
            let mut next = Some(first);
            let mut writes = 0;
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Put(req, reply) => {
                        writes += 1;
                        batch.push(Op::Put(req, reply));
                    }
                    Command::Replicate(replicas, reply) => {
                        writes += replicas.records.len().max(1);
                        batch.push(Op::Replicate(replicas, reply));
                    }
                    Command::Ping(reply) => pings.push(reply),
                    Command::SetMeta(name, value, reply) => metas.push((name, value, reply)),
                    Command::SetMetas(update, reply) => {
                        barrier = Some(Barrier::Metas(update, reply));
                        break;
                    }
                    Command::DeleteKeys(keys, reply) => {
                        barrier = Some(Barrier::Delete(keys, reply));
                        break;
                    }
                    Command::Stop => {
                        stop = true;
                        break;
                    }
                }
                if writes < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
            for reply in pings.drain(..) {
                let _ = reply.send(self.ping());
            }
            for (name, value, reply) in metas.drain(..) {
                let _ = reply.send(self.set_meta(&name, &value));
            }
            match barrier {
                Some(Barrier::Metas(update, reply)) => {
                    let _ = reply.send(self.set_metas(&update));
                }
                Some(Barrier::Delete(keys, reply)) => {
                    let _ = reply.send(self.delete_keys(&keys));
                }
                None => {}
            }
            if stop {
                break;
            }
        }
        self.checkpointer.finish();
        tracing::info!("writer stopped after finishing queued writes");
    }

    fn set_meta(&self, name: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO kv_meta(name, value) VALUES (?1, ?2) \
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )
            .map(|_| ())
            .map_err(|source| Error::Database {
                context: "record metadata",
                source,
            })
    }

    fn set_metas(&mut self, update: &MetaUpdate) -> Result<()> {
        let db = |context| move |source| Error::Database { context, source };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("begin"))?;
        for (name, value) in &update.entries {
            tx.execute(
                "INSERT INTO kv_meta(name, value) VALUES (?1, ?2) \
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )
            .map_err(db("record metadata"))?;
        }
        if update.clear_cursors {
            tx.execute("DELETE FROM peer_cursors", [])
                .map_err(db("reset catch-up cursors"))?;
        }
        tx.commit().map_err(db("commit metadata"))
    }

    /// Deletes every version of `keys` in one transaction, then forgets them in the cache and
    /// in `known_latest` (a key held again later must be read from the database).
    fn delete_keys(&mut self, keys: &[Arc<str>]) -> Result<u64> {
        let db = |context| move |source| Error::Database { context, source };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("begin"))?;
        let mut deleted = 0u64;
        {
            let mut values = tx
                .prepare_cached(r#"DELETE FROM "values" WHERE key = ?1"#)
                .map_err(db("prepare"))?;
            let mut key_row = tx
                .prepare_cached("DELETE FROM keys WHERE key = ?1")
                .map_err(db("prepare"))?;
            for key in keys {
                deleted += values.execute([&**key]).map_err(db("delete versions"))? as u64;
                key_row.execute([&**key]).map_err(db("delete key"))?;
            }
        }
        tx.commit().map_err(db("commit deletes"))?;
        self.checkpointer.committed();
        for key in keys {
            self.known_latest.pop(key);
            self.cache.evict(key);
        }
        Ok(deleted)
    }

    fn ping(&self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(|source| Error::Database {
                context: "take the write lock",
                source,
            })
    }

    fn commit_batch(&mut self, batch: &mut Vec<Op>) {
        let started = Instant::now();
        let result = self.apply(batch);
        let took = started.elapsed();
        if let Some(report) = self.slow_commits.note(took, batch.len(), Instant::now()) {
            slow_commits::warn(report);
        }
        let metrics = &self.metrics;
        metrics.commit_seconds.observe(took.as_secs_f64());
        metrics.batch_size.observe(batch.len() as f64);
        match result {
            Ok(applied) => {
                self.checkpointer.committed();
                // Write-through, after the commit is durable and before any caller hears.
                for (key, stored, is_latest) in applied.committed {
                    let known = self.known_latest.get(&key).unwrap_or(0);
                    if stored.version > known {
                        self.known_latest.put(key.clone(), stored.version);
                    }
                    if is_latest {
                        self.cache.on_commit(&key, stored);
                    }
                }
                for (op, answer) in batch.drain(..).zip(applied.answers) {
                    match (op, answer) {
                        (Op::Put(_, reply), Answer::Put(answer)) => {
                            let _ = reply.send(answer);
                        }
                        (Op::Replicate(_, reply), Answer::Replicate(answer)) => {
                            if !answer.conflicts.is_empty() {
                                metrics
                                    .replica_conflicts
                                    .inc_by(answer.conflicts.len() as u64);
                            }
                            let _ = reply.send(Ok(answer));
                        }
                        _ => unreachable!("answers are made in batch order"),
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, writes = batch.len(), "batch commit failed");
                metrics.write_errors.inc_by(batch.len() as u64);
                let message = err.to_string();
                let disk_full = is_disk_full(&err);
                for op in batch.drain(..) {
                    let failed = if disk_full {
                        Error::StorageFull(message.clone())
                    } else {
                        Error::WriteFailed(message.clone())
                    };
                    match op {
                        Op::Put(_, reply) => {
                            let _ = reply.send(Err(failed));
                        }
                        Op::Replicate(_, reply) => {
                            let _ = reply.send(Err(failed));
                        }
                    }
                }
            }
        }
    }

    /// Runs the whole batch in one transaction. An `Err` means nothing was committed.
    fn apply(&mut self, batch: &[Op]) -> Result<Applied> {
        let db = |context| move |source| Error::Database { context, source };
        let known_latest = &mut self.known_latest;
        // IMMEDIATE takes the write lock up front, through the busy handler, instead of
        // failing at the first insert if the checkpoint thread holds it for a moment.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("begin"))?;
        let mut applied = Applied {
            answers: Vec::with_capacity(batch.len()),
            committed: Vec::with_capacity(batch.len()),
        };
        {
            let mut latest_stmt = tx
                .prepare_cached(r#"SELECT MAX(version) FROM "values" WHERE key = ?1"#)
                .map_err(db("prepare"))?;
            let mut insert_value = tx
                .prepare_cached(
                    r#"INSERT INTO "values"(key, value, version, timestamp) VALUES (?1, ?2, ?3, ?4)"#,
                )
                .map_err(db("prepare"))?;
            let mut upsert_key = tx
                .prepare_cached(
                    "INSERT INTO keys(key, created_at, updated_at) VALUES (?1, ?2, ?2) \
                     ON CONFLICT(key) DO UPDATE SET \
                     created_at = MIN(created_at, excluded.created_at), \
                     updated_at = MAX(updated_at, excluded.updated_at)",
                )
                .map_err(db("prepare"))?;
            let mut existing_stmt = tx
                .prepare_cached(r#"SELECT value FROM "values" WHERE key = ?1 AND version = ?2"#)
                .map_err(db("prepare"))?;
            let mut save_cursor = tx
                .prepare_cached(
                    "INSERT INTO peer_cursors(peer, instance, seq) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(peer) DO UPDATE SET instance = excluded.instance, seq = excluded.seq",
                )
                .map_err(db("prepare"))?;
            // Latest versions of keys already written in this batch (not committed yet, so
            // not in `known_latest`).
            let mut latest_in_batch: HashMap<Arc<str>, u64> = HashMap::new();
            let mut latest_of =
                |key: &Arc<str>, latest_in_batch: &HashMap<Arc<str>, u64>| -> Result<Option<u64>> {
                    if let Some(v) = latest_in_batch.get(key) {
                        return Ok(Some(*v));
                    }
                    if let Some(v) = known_latest.get(key) {
                        return Ok(Some(v));
                    }
                    Ok(latest_stmt
                        .query_row([&**key], |r| r.get::<_, Option<i64>>(0))
                        .optional()
                        .map_err(db("read latest version"))?
                        .flatten()
                        .map(|v| v as u64))
                };
            for op in batch {
                match op {
                    Op::Put(req, _) => {
                        let latest = latest_of(&req.key, &latest_in_batch)?;
                        let current = latest.unwrap_or(0);
                        if let Some(expected) = req.if_version
                            && expected != current
                        {
                            applied
                                .answers
                                .push(Answer::Put(Err(Error::VersionConflict {
                                    key: req.key.to_string(),
                                    expected,
                                    actual: current,
                                })));
                            continue;
                        }
                        let Some(version) =
                            current.checked_add(1).filter(|v| *v <= i64::MAX as u64)
                        else {
                            applied
                                .answers
                                .push(Answer::Put(Err(Error::VersionOverflow {
                                    key: req.key.to_string(),
                                })));
                            continue;
                        };
                        let timestamp = unix_now();
                        insert_value
                            .execute(params![&*req.key, &*req.value, version as i64, timestamp])
                            .map_err(db("insert version"))?;
                        upsert_key
                            .execute(params![&*req.key, timestamp])
                            .map_err(db("update key"))?;
                        latest_in_batch.insert(req.key.clone(), version);
                        applied.answers.push(Answer::Put(Ok(PutOutcome {
                            version,
                            previous_version: latest,
                            total_versions: version,
                            timestamp,
                        })));
                        applied.committed.push((
                            req.key.clone(),
                            Versioned {
                                version,
                                value: req.value.clone(),
                                timestamp,
                            },
                            true,
                        ));
                    }
                    Op::Replicate(replicas, _) => {
                        let mut outcome = ReplicaOutcome::default();
                        for record in &replicas.records {
                            let held: Option<String> = existing_stmt
                                .query_row(
                                    params![&*record.key, record.stored.version as i64],
                                    |r| r.get::<_, Option<String>>(0),
                                )
                                .optional()
                                .map_err(db("read replica version"))?
                                .map(|v| v.unwrap_or_else(|| "null".into()));
                            match held {
                                Some(value) if *value == *record.stored.value => {
                                    outcome.duplicates += 1;
                                }
                                Some(_) => {
                                    tracing::error!(key = %record.key, version = record.stored.version,
                                        "replica conflict: this server holds another value for \
                                         that version; keeping its own");
                                    outcome
                                        .conflicts
                                        .push((record.key.to_string(), record.stored.version));
                                }
                                None => {
                                    let latest = latest_of(&record.key, &latest_in_batch)?;
                                    let stored = &record.stored;
                                    insert_value
                                        .execute(params![
                                            &*record.key,
                                            &*stored.value,
                                            record.stored.version as i64,
                                            stored.timestamp
                                        ])
                                        .map_err(db("insert replica version"))?;
                                    upsert_key
                                        .execute(params![&*record.key, stored.timestamp])
                                        .map_err(db("update key"))?;
                                    let is_latest =
                                        latest.is_none_or(|l| record.stored.version > l);
                                    if is_latest {
                                        latest_in_batch
                                            .insert(record.key.clone(), record.stored.version);
                                    }
                                    outcome.stored += 1;
                                    applied.committed.push((
                                        record.key.clone(),
                                        stored.clone(),
                                        is_latest,
                                    ));
                                }
                            }
                        }
                        if let Some(cursor) = &replicas.cursor {
                            save_cursor
                                .execute(params![
                                    &cursor.peer,
                                    &cursor.instance,
                                    cursor.seq.min(i64::MAX as u64) as i64
                                ])
                                .map_err(db("save catch-up cursor"))?;
                        }
                        applied.answers.push(Answer::Replicate(outcome));
                    }
                }
            }
        }
        tx.commit().map_err(db("commit"))?;
        Ok(applied)
    }
}

/// One queued write: a client's put, or versions from a primary or a catch-up pull.
enum Op {
    Put(PutRequest, PutReply),
    Replicate(ReplicaBatch, ReplicaReply),
}

enum Answer {
    /// Either the stored version or why this one put was refused (a failed condition does
    /// not abort the batch).
    Put(Result<PutOutcome>),
    Replicate(ReplicaOutcome),
}

/// What a committed batch did: one answer per op, and every version stored, with whether
/// it became its key's latest (only those may enter the cache's "latest").
struct Applied {
    answers: Vec<Answer>,
    committed: Vec<(Arc<str>, Versioned, bool)>,
}

/// SQLite's "database or disk is full": the volume ran out of space (or the file reached its
/// size limit). Told apart from other failures because the client's answer differs (507, not
/// 500) and so does the operator's remedy.
fn is_disk_full(err: &Error) -> bool {
    matches!(
        err,
        Error::Database {
            source: rusqlite::Error::SqliteFailure(e, _),
            ..
        } if e.code == rusqlite::ErrorCode::DiskFull
    )
}
