//! Pushing new versions from a primary to one replica: everything queued for that peer goes
//! in one `POST /internal/replicate`, and the peer commits it in one group commit. One
//! request in flight per peer, so under load batches grow by themselves, as in the writer.
//!
//! A push that fails is not retried here: the peer's catch-up pull fetches what it missed.
//! That keeps this path simple and bounded: a dead peer costs a refused connection per batch.

use std::sync::Arc;

use http::{Method, StatusCode};
use kv_common::replication::{Conflict, Record, ReplicateRequest};
use tokio::sync::{mpsc, oneshot};

use super::Shared;

/// Most versions in one push.
const MAX_PUSH: usize = 512;
/// A push takes no more versions once its records reach this many bytes (it always takes
/// one). Without it, 512 versions of large values would pass the peer's body limit for
/// `/internal/replicate` and be refused whole: every put waiting on them would miss its
/// quorum. With one record of the largest value on top, a push stays under that limit.
const MAX_PUSH_BYTES: usize = 16 << 20;

/// One version to push, and where to say whether the peer now holds it durably.
pub struct Push {
    pub record: Record,
    pub done: oneshot::Sender<bool>,
}

/// Runs until every sender of `rx` is gone.
pub async fn run(shared: Arc<Shared>, peer: String, url: String, mut rx: mpsc::Receiver<Push>) {
    let target = format!("{url}/internal/replicate");
    let mut batch = Vec::with_capacity(MAX_PUSH);
    while let Some(first) = rx.recv().await {
        gather(first, &mut rx, &mut batch);
        let (records, waiters): (Vec<Record>, Vec<oneshot::Sender<bool>>) =
            batch.drain(..).map(|p| (p.record, p.done)).unzip();
        let keys: Vec<(String, u64)> = records.iter().map(|r| (r.key.clone(), r.version)).collect();
        let body = serde_json::to_vec(&ReplicateRequest {
            from: shared.me.clone(),
            records,
        })
        .expect("records serialize");
        let answer = shared
            .call_peer(&peer, Method::POST, &target, Some(body))
            .await;
        let held = match &answer {
            Ok((StatusCode::OK, _)) => vec![true; keys.len()],
            // The rest of the batch was stored; the conflicting versions were not.
            Ok((StatusCode::CONFLICT, body)) => {
                let conflicts = conflicts_of(body);
                keys.iter().map(|k| !conflicts.contains(k)).collect()
            }
            _ => vec![false; keys.len()],
        };
        let outcome = match &answer {
            Ok((StatusCode::OK, _)) => "ok",
            Ok((StatusCode::CONFLICT, _)) => "conflict",
            Ok(_) => "refused",
            Err(_) => "unreachable",
        };
        shared.metrics.pushed(&peer, outcome, keys.len() as u64);
        if let Err(error) = &answer {
            tracing::debug!(%peer, %error, versions = keys.len(), "push failed; catch-up will fetch them");
        }
        for (waiter, held) in waiters.into_iter().zip(held) {
            // The put may have stopped waiting (quorum reached, or timed out): fine.
            let _ = waiter.send(held);
        }
    }
}

/// Puts `first` and what is queued behind it into `batch`: at most [`MAX_PUSH`] versions, and
/// none after the records reach [`MAX_PUSH_BYTES`].
fn gather(first: Push, rx: &mut mpsc::Receiver<Push>, batch: &mut Vec<Push>) {
    let mut bytes = record_bytes(&first.record);
    batch.push(first);
    while batch.len() < MAX_PUSH && bytes < MAX_PUSH_BYTES {
        match rx.try_recv() {
            Ok(push) => {
                bytes += record_bytes(&push.record);
                batch.push(push);
            }
            Err(_) => break,
        }
    }
}

/// At least the bytes of a record in the push's JSON: the value is sent as it is, a key's
/// escapes (`\u0001`) can make it up to six times its length, and the rest (field names, a
/// version of up to 20 digits, a timestamp of up to 24 characters) is under 128 bytes.
fn record_bytes(record: &Record) -> usize {
    record.value.get().len() + 6 * record.key.len() + 128
}

/// The (key, version) pairs of a 409 `replica_conflict` answer.
fn conflicts_of(body: &[u8]) -> Vec<(String, u64)> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        conflicts: Vec<Conflict>,
    }
    serde_json::from_slice::<Body>(body)
        .map(|b| {
            b.conflicts
                .into_iter()
                .map(|c| (c.key, c.version))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    fn push(value_bytes: usize) -> Push {
        let value = format!("\"{}\"", "x".repeat(value_bytes));
        Push {
            record: Record {
                key: "k".into(),
                version: 1,
                value: RawValue::from_string(value).unwrap(),
                timestamp: 0.0,
            },
            done: oneshot::channel().0,
        }
    }

    /// The batch sizes `queued` pushes leave in, one gather each.
    fn batches(queued: Vec<Push>) -> Vec<usize> {
        let (tx, mut rx) = mpsc::channel(queued.len().max(1));
        for p in queued {
            tx.try_send(p).ok().unwrap();
        }
        let mut sizes = Vec::new();
        let mut batch = Vec::new();
        while let Ok(first) = rx.try_recv() {
            gather(first, &mut rx, &mut batch);
            sizes.push(batch.len());
            batch.clear();
        }
        sizes
    }

    #[test]
    fn small_versions_go_512_at_a_time() {
        let queued = (0..600).map(|_| push(10)).collect();
        assert_eq!(batches(queued), [512, 88]);
    }

    #[test]
    fn large_values_stop_a_push_at_its_byte_budget() {
        // 1 MiB values: 512 of them would be a 512 MiB body, twice what a peer takes.
        let queued = (0..40).map(|_| push(1 << 20)).collect();
        assert_eq!(batches(queued), [16, 16, 8]);
        // A value larger than the budget still goes, alone.
        let queued = (0..3).map(|_| push(20 << 20)).collect();
        assert_eq!(batches(queued), [1, 1, 1]);
    }

    #[test]
    fn a_full_push_fits_the_peers_body_limit() {
        // Under the budget, then one record of the largest value and the longest key.
        let largest =
            kv_common::api::MAX_VALUE_BYTES_LIMIT + 6 * crate::store::model::MAX_KEY_BYTES + 128;
        let envelope = 1024;
        assert!(MAX_PUSH_BYTES - 1 + largest + envelope <= crate::http::REPLICATE_BODY_LIMIT);
    }
}
