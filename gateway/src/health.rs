//! Member health: active checks of every member plus passive marking by the proxy.
//!
//! Health never changes the ring (that would move keys and fork their versions); it only
//! decides whether the gateway tries the owner of a key or answers 503 at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use http::Method;

use crate::client::BackendClient;
use crate::membership::{Backend, TopologyHandle};

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// What the gateway believes about one member. A new member is `unknown` and is tried, so
/// traffic flows before the first check completes.
#[derive(Debug, Default)]
pub struct HealthState(AtomicU8);

impl HealthState {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed) == UP
    }

    pub fn is_down(&self) -> bool {
        self.0.load(Ordering::Relaxed) == DOWN
    }

    /// Marks the member up; returns whether that is news.
    pub fn mark_up(&self) -> bool {
        self.0.swap(UP, Ordering::Relaxed) != UP
    }

    /// Marks the member down; returns whether that is news.
    pub fn mark_down(&self) -> bool {
        self.0.swap(DOWN, Ordering::Relaxed) != DOWN
    }

    pub fn as_str(&self) -> &'static str {
        match self.0.load(Ordering::Relaxed) {
            UNKNOWN => "unknown",
            UP => "up",
            _ => "down",
        }
    }
}

/// Checks every member's `/health` each `interval`, and at once when the topology changes.
/// Runs until the task is aborted.
pub async fn run_checks(topology: Arc<TopologyHandle>, client: BackendClient, interval: Duration) {
    loop {
        let current = topology.load();
        let probes = current
            .backends
            .values()
            .map(|backend| probe(&client, backend, interval));
        futures::future::join_all(probes).await;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = topology.changed.notified() => {}
        }
    }
}

/// One check. A probe must answer within the check interval: a member slower than that to
/// say it is healthy is not one to send traffic to.
async fn probe(client: &BackendClient, backend: &Arc<Backend>, timeout: Duration) {
    let ok = matches!(
        tokio::time::timeout(timeout, client.send(backend, Method::GET, "/health", None)).await,
        Ok(Ok(response)) if response.status().is_success()
    );
    set(client, backend, ok);
}

/// Records a check's or a request's verdict on a member, logging changes.
pub fn set(client: &BackendClient, backend: &Backend, up: bool) {
    let changed = if up {
        backend.health.mark_up()
    } else {
        backend.health.mark_down()
    };
    if changed {
        if up {
            tracing::info!(member = %backend.name, url = %backend.url, "member is up");
        } else {
            tracing::warn!(member = %backend.name, url = %backend.url, "member is down");
        }
    }
    client.metrics().member_up(&backend.name, up);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_report_news_only() {
        let state = HealthState::default();
        assert_eq!(state.as_str(), "unknown");
        assert!(!state.is_up() && !state.is_down());
        assert!(state.mark_up());
        assert!(!state.mark_up());
        assert!(state.is_up());
        assert!(state.mark_down());
        assert!(!state.mark_down());
        assert_eq!(state.as_str(), "down");
    }
}
