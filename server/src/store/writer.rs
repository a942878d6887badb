//! The single writer: one thread owns the write connection, takes every put waiting in its
//! channel and commits them in one transaction (group commit), then answers each caller.
//!
//! Why one thread: it alone assigns versions, so "latest + 1" needs no lock and versions
//! stay gap-free under any number of concurrent clients; and batching turns one fsync per
//! write into one fsync per batch, which is where durable write throughput comes from.
//! Nothing here runs on a tokio worker: callers await a oneshot.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use lru::LruCache;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::cache::Cache;
use super::checkpoint::Checkpointer;
use super::model::{PutOutcome, PutRequest, Versioned, unix_now};
use crate::error::{Error, Result};
use crate::metrics::StoreMetrics;

/// Most puts committed in one transaction; bounds the latency a batch adds.
const MAX_BATCH: usize = 1024;
/// Keys whose latest version the writer remembers, to skip a lookup per put.
const KNOWN_LATEST: usize = 65_536;

pub type PutReply = oneshot::Sender<Result<PutOutcome>>;

pub enum Command {
    Put(PutRequest, PutReply),
    /// Readiness probe: answered once the writer has taken and released the write lock.
    Ping(oneshot::Sender<Result<()>>),
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
    known_latest: LruCache<Arc<str>, u64>,
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
            known_latest: LruCache::new(NonZeroUsize::new(KNOWN_LATEST).expect("non-zero")),
        }
    }

    /// Runs the writer loop until [`Command::Stop`] or until every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch: Vec<(PutRequest, PutReply)> = Vec::with_capacity(MAX_BATCH);
        let mut pings = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut stop = false;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Put(req, reply) => batch.push((req, reply)),
                    Command::Ping(reply) => pings.push(reply),
                    Command::Stop => {
                        stop = true;
                        break;
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
            for reply in pings.drain(..) {
                let _ = reply.send(self.ping());
            }
            if stop {
                break;
            }
        }
        self.checkpointer.finish();
        tracing::info!("writer stopped after finishing queued writes");
    }

    fn ping(&self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(|source| Error::Database {
                context: "take the write lock",
                source,
            })
    }

    fn commit_batch(&mut self, batch: &mut Vec<(PutRequest, PutReply)>) {
        let started = Instant::now();
        let result = self.apply(batch);
        let metrics = &self.metrics;
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.batch_size.observe(batch.len() as f64);
        match result {
            Ok(applied) => {
                self.checkpointer.committed();
                for ((req, reply), outcome) in batch.drain(..).zip(applied) {
                    let answer = outcome.map(|(outcome, stored)| {
                        self.known_latest.put(req.key.clone(), stored.version);
                        // Write-through, after the commit is durable and before the caller hears.
                        self.cache.on_commit(&req.key, stored);
                        outcome
                    });
                    let _ = reply.send(answer);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, writes = batch.len(), "batch commit failed");
                metrics.write_errors.inc_by(batch.len() as u64);
                let message = err.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(Error::WriteFailed(message.clone())));
                }
            }
        }
    }

    /// Runs the whole batch in one transaction. An `Err` means nothing was committed.
    fn apply(&mut self, batch: &[(PutRequest, PutReply)]) -> Result<Vec<Applied>> {
        let db = |context| move |source| Error::Database { context, source };
        let known_latest = &mut self.known_latest;
        // IMMEDIATE takes the write lock up front, through the busy handler, instead of
        // failing at the first insert if the checkpoint thread holds it for a moment.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("begin"))?;
        let mut results = Vec::with_capacity(batch.len());
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
                     ON CONFLICT(key) DO UPDATE SET updated_at = excluded.updated_at",
                )
                .map_err(db("prepare"))?;
            // Latest versions of keys already written in this batch (not committed yet, so
            // not in `known_latest`).
            let mut latest_in_batch: HashMap<&str, u64> = HashMap::new();
            for (req, _) in batch {
                let known = latest_in_batch
                    .get(&*req.key)
                    .copied()
                    .or_else(|| known_latest.get(&req.key).copied());
                let latest = match known {
                    Some(v) => Some(v),
                    None => latest_stmt
                        .query_row([&*req.key], |r| r.get::<_, Option<i64>>(0))
                        .optional()
                        .map_err(db("read latest version"))?
                        .flatten()
                        .map(|v| v as u64),
                };
                let current = latest.unwrap_or(0);
                if let Some(expected) = req.if_version
                    && expected != current
                {
                    results.push(Err(Error::VersionConflict {
                        key: req.key.to_string(),
                        expected,
                        actual: current,
                    }));
                    continue;
                }
                let Some(version) = current.checked_add(1).filter(|v| *v <= i64::MAX as u64) else {
                    results.push(Err(Error::VersionOverflow {
                        key: req.key.to_string(),
                    }));
                    continue;
                };
                let timestamp = unix_now();
                insert_value
                    .execute(params![&*req.key, &*req.value, version as i64, timestamp])
                    .map_err(db("insert version"))?;
                upsert_key
                    .execute(params![&*req.key, timestamp])
                    .map_err(db("update key"))?;
                latest_in_batch.insert(&req.key, version);
                results.push(Ok((
                    PutOutcome {
                        version,
                        previous_version: latest,
                        total_versions: version,
                        timestamp,
                    },
                    Versioned {
                        version,
                        value: req.value.clone(),
                        timestamp,
                    },
                )));
            }
        }
        tx.commit().map_err(db("commit"))?;
        Ok(results)
    }
}

/// Either a stored version or the reason this one put was refused (a failed condition
/// does not abort the batch).
type Applied = Result<(PutOutcome, Versioned)>;
