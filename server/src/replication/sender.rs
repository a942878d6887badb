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
        batch.push(first);
        while batch.len() < MAX_PUSH {
            match rx.try_recv() {
                Ok(push) => batch.push(push),
                Err(_) => break,
            }
        }
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
