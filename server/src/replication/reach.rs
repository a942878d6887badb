//! Which peers answer: a primary that cannot reach enough replicas for a put's quorum refuses
//! the put before storing anything (`503 quorum_unavailable`, a definite failure), instead of
//! storing a version nobody confirms and answering `503 quorum_failed` (an uncertain one)
//! after the replication timeout.
//!
//! A peer is unreachable from the moment an exchange with it got no HTTP answer (refused,
//! reset, timed out) or a put waited for its confirmation until the replication timeout,
//! until any exchange with it gets an answer again. Gossip asks every peer every second and
//! the pullers every catch-up interval, so a peer that comes back counts again within about a
//! second. Any answer counts, a refusal too: reachability is about the network, not health.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::metrics::ReplicationMetrics;

#[derive(Default)]
pub struct Reach {
    /// Since when each unreachable peer has been so.
    unreachable: Mutex<BTreeMap<String, Instant>>,
    /// `unreachable.len()`, so that a put with every peer reachable takes no lock.
    count: AtomicUsize,
}

impl Reach {
    /// An exchange with `peer` got an answer.
    pub fn answered(&self, peer: &str, metrics: &ReplicationMetrics) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut unreachable = self.lock();
        if let Some(since) = unreachable.remove(peer) {
            self.count.store(unreachable.len(), Ordering::Release);
            metrics.set_unreachable(peer, false);
            tracing::info!(%peer, after = ?since.elapsed(), "peer reachable again");
        }
    }

    /// An exchange with `peer` got no answer (`why`).
    pub fn failed(&self, peer: &str, why: &str, metrics: &ReplicationMetrics) {
        let mut unreachable = self.lock();
        if unreachable.contains_key(peer) {
            return;
        }
        unreachable.insert(peer.to_owned(), Instant::now());
        self.count.store(unreachable.len(), Ordering::Release);
        metrics.set_unreachable(peer, true);
        tracing::warn!(%peer, %why,
            "peer unreachable: puts that need it for their quorum are refused until it answers");
    }

    /// Whether every peer answered its last exchange.
    pub fn all_answer(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Whether `peer` counts towards a quorum now.
    pub fn reachable(&self, peer: &str) -> bool {
        self.count.load(Ordering::Acquire) == 0 || !self.lock().contains_key(peer)
    }

    /// Forgets the peers `keep` rejects (no longer in the ring): nothing probes them any more.
    pub fn retain(&self, keep: impl Fn(&str) -> bool, metrics: &ReplicationMetrics) {
        let mut unreachable = self.lock();
        unreachable.retain(|peer, _| {
            let kept = keep(peer);
            if !kept {
                metrics.set_unreachable(peer, false);
            }
            kept
        });
        self.count.store(unreachable.len(), Ordering::Release);
    }

    /// The unreachable peers, by name.
    pub fn unreachable(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Instant>> {
        self.unreachable.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_unreachable_from_a_failure_until_an_answer() {
        let metrics = ReplicationMetrics::default();
        let reach = Reach::default();
        assert!(reach.reachable("b"));
        reach.failed("b", "connection refused", &metrics);
        reach.failed("b", "again", &metrics);
        assert!(!reach.reachable("b"));
        assert!(reach.reachable("c"));
        assert!(!reach.all_answer());
        assert_eq!(reach.unreachable(), ["b"]);
        reach.answered("c", &metrics);
        assert!(!reach.reachable("b"));
        reach.answered("b", &metrics);
        assert!(reach.reachable("b"));
        assert!(reach.unreachable().is_empty());
        assert!(reach.all_answer());

        // A peer that left the ring is forgotten, not counted unreachable for ever.
        reach.failed("d", "reset", &metrics);
        reach.failed("e", "reset", &metrics);
        reach.retain(|peer| peer != "d", &metrics);
        assert_eq!(reach.unreachable(), ["e"]);
    }
}
