//! Gossip of ring states: every second (and at once when a request named a newer epoch) a
//! server asks each peer for its state and adopts one above its own, by the same rules as a
//! push. A server that missed a push, or came back with a stale database, converges.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use http::{Method, StatusCode};
use kv_common::ring_config::{RingState, RingView};

use super::{Shared, adopt};

const INTERVAL: Duration = Duration::from_secs(1);

/// Runs until aborted.
pub async fn run(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            () = shared.gossip_now.notified() => {}
        }
        round(&shared).await;
    }
}

async fn round(shared: &Arc<Shared>) {
    let peers: Vec<(String, String)> = shared.peer_addresses().into_iter().collect();
    let answers = join_all(peers.iter().map(|(name, url)| fetch(shared, name, url))).await;
    let own = shared.placement.load().state.order();
    let mut newer: Vec<RingState> = answers
        .into_iter()
        .flatten()
        .map(|view| view.state)
        .filter(|state| state.order() > own)
        .collect();
    // Highest first; one refused (a conflicting state) does not stop the next.
    newer.sort_by_key(|state| std::cmp::Reverse(state.order()));
    for state in newer {
        match adopt::adopt(shared, state).await {
            Ok(adopt::Adoption::Adopted) => return,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot adopt a ring state learned by gossip"),
        }
    }
}

async fn fetch(shared: &Shared, name: &str, url: &str) -> Option<RingView> {
    let answer = shared
        .call_peer(name, Method::GET, &format!("{url}/internal/ring"), None)
        .await;
    match answer {
        Ok((StatusCode::OK, body)) => serde_json::from_slice(&body)
            .inspect_err(|e| tracing::debug!(peer = name, error = %e, "unreadable ring view"))
            .ok(),
        Ok((status, _)) => {
            tracing::debug!(peer = name, %status, "peer refused its ring view");
            None
        }
        Err(error) => {
            tracing::debug!(peer = name, %error, "peer unreachable for gossip");
            None
        }
    }
}
