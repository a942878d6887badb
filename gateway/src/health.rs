//! Member health: active checks of every member plus passive marking by the proxy, and what
//! each member's `/health` says about its replication (lag, synced) and its ring epoch.
//!
//! A health verdict never changes the ring (that would move keys and fork their versions);
//! it only decides whether the gateway tries the owner of a key or answers 503 at once. Only a
//! newer ring configuration, which the servers agreed on, does (see `ring_sync`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use kv_common::replication::{HealthBody, ReplicationHealth};

use crate::client::BackendClient;
use crate::membership::{Backend, TopologyHandle};
use crate::ring_sync;

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

/// Stands for "no lag known" in [`ReplicationState`]: no real lag gets that large.
const NO_LAG: u64 = u64::MAX;
const SYNCED_UNKNOWN: u8 = 0;
const SYNCED_NO: u8 = 1;
const SYNCED_YES: u8 = 2;

/// What a member's last readable `/health` said about its replication: nothing for a
/// standalone server or before the first answer. Shown by `/servers`; routing does not use
/// it (a syncing primary says so itself, with a 503 the proxy falls back on).
///
/// Two atomics, not a lock: a reader may see the lag of one check with the flag of the
/// previous one, which a status page can afford.
#[derive(Debug)]
pub struct ReplicationState {
    lag: AtomicU64,
    synced: AtomicU8,
}

impl Default for ReplicationState {
    fn default() -> Self {
        ReplicationState {
            lag: AtomicU64::new(NO_LAG),
            synced: AtomicU8::new(SYNCED_UNKNOWN),
        }
    }
}

impl ReplicationState {
    pub fn record(&self, health: Option<ReplicationHealth>) {
        let (lag, synced) = match health {
            Some(h) => (
                h.lag.min(NO_LAG - 1),
                if h.synced { SYNCED_YES } else { SYNCED_NO },
            ),
            None => (NO_LAG, SYNCED_UNKNOWN),
        };
        self.lag.store(lag, Ordering::Relaxed);
        self.synced.store(synced, Ordering::Relaxed);
    }

    /// Versions the member has yet to pull from its peers.
    pub fn lag(&self) -> Option<u64> {
        Some(self.lag.load(Ordering::Relaxed)).filter(|&lag| lag != NO_LAG)
    }

    /// False while a member with a new database catches up.
    pub fn synced(&self) -> Option<bool> {
        match self.synced.load(Ordering::Relaxed) {
            SYNCED_NO => Some(false),
            SYNCED_YES => Some(true),
            _ => None,
        }
    }
}

/// Checks every member's `/health` each `interval`, and at once when the topology changes;
/// after each round, closes the links to servers that are no longer members. Runs until the
/// task is aborted.
pub async fn run_checks(topology: Arc<TopologyHandle>, client: BackendClient, interval: Duration) {
    loop {
        let current = topology.load();
        let probes = current
            .backends
            .values()
            .map(|backend| probe(&topology, &client, backend, interval));
        futures::future::join_all(probes).await;
        // The topology of now, not of the round's start: a member that joined meanwhile may
        // already have a link.
        client.forget_former_members(&topology.load());
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = topology.changed.notified() => {}
        }
    }
}

/// One check. A probe must answer within the check interval: a member slower than that to
/// say it is healthy is not one to send traffic to.
///
/// A 200 is healthy whatever its body; a body that is not a `HealthBody` (an older server)
/// leaves the replication figures as they were. A ring epoch above the gateway's makes it
/// fetch that member's ring configuration (`ring_sync`), after the verdict is recorded.
///
/// But a replicated server that names itself other than the member is down: the gateway
/// reaches another server at that address (a pod's IP reused by another pod before the
/// EndpointSlice said so, or swapped URLs in a static list). That server would refuse the
/// member's key requests anyway (`421 wrong_server`, see `client.rs`); marked down, the
/// member gets none. A standalone server's name is only a label, not checked.
async fn probe(
    topology: &TopologyHandle,
    client: &BackendClient,
    backend: &Arc<Backend>,
    timeout: Duration,
) {
    let over_link =
        || tokio::time::timeout(timeout, client.send(backend, Method::GET, "/health", None));
    // A member that is down is also asked over HTTP, on a connection of its own: if it
    // answers there while its link reads nothing, the link is what is broken; it is failed
    // (`Links::suspect`) and the member asked again, over a new one.
    let answer = if backend.health.is_down() && client.uses_links() {
        client.mark_links(backend);
        let over_http = client.answers_over_http(backend, "/health", timeout);
        let (answer, answers_over_http) = tokio::join!(over_link(), over_http);
        if answers_over_http && !matches!(answer, Ok(Ok(_))) && client.suspect_links(backend) {
            over_link().await
        } else {
            answer
        }
    } else {
        over_link().await
    };
    let (ok, ring) = match answer {
        Ok(Ok(response)) if response.status().is_success() => {
            match serde_json::from_slice::<HealthBody>(response.body()) {
                Ok(body) if is_someone_else(&body, &backend.name) => {
                    if !backend.health.is_down() {
                        tracing::warn!(member = %backend.name, url = %backend.url,
                            answers_as = body.name.as_deref().unwrap_or_default(),
                            "another server answers at this member's address: it gets no requests");
                    }
                    (false, None)
                }
                Ok(body) => {
                    backend.replication.record(body.replication);
                    client
                        .metrics()
                        .replication_lag(&backend.name, backend.replication.lag());
                    (true, body.ring)
                }
                Err(_) => (true, None),
            }
        }
        _ => (false, None),
    };
    set(client, backend, ok);
    if let Some(ring) = ring {
        ring_sync::on_health(topology, client, backend, ring, timeout).await;
    }
}

/// Whether a health answer comes from a replicated server named other than `member`.
fn is_someone_else(body: &HealthBody, member: &str) -> bool {
    body.replication.is_some() && body.name.as_deref().is_some_and(|name| name != member)
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

    #[test]
    fn only_a_replicated_server_under_another_name_is_someone_else() {
        let body = |name: Option<&str>, replicated: bool| HealthBody {
            status: "ok".into(),
            name: name.map(str::to_owned),
            replication: replicated.then_some(ReplicationHealth {
                factor: 3,
                lag: 0,
                synced: true,
            }),
            ring: None,
        };
        assert!(is_someone_else(&body(Some("kv-2"), true), "kv-1"));
        assert!(!is_someone_else(&body(Some("kv-1"), true), "kv-1"));
        // An older server says no name; a standalone one's name is a label.
        assert!(!is_someone_else(&body(None, true), "kv-1"));
        assert!(!is_someone_else(&body(Some("kv-server"), false), "kv-1"));
    }

    #[test]
    fn replication_figures_are_absent_until_a_replicated_member_reports_them() {
        let state = ReplicationState::default();
        assert_eq!((state.lag(), state.synced()), (None, None));
        state.record(Some(ReplicationHealth {
            factor: 3,
            lag: 7,
            synced: false,
        }));
        assert_eq!((state.lag(), state.synced()), (Some(7), Some(false)));
        state.record(Some(ReplicationHealth {
            factor: 3,
            lag: 0,
            synced: true,
        }));
        assert_eq!((state.lag(), state.synced()), (Some(0), Some(true)));
        state.record(None);
        assert_eq!((state.lag(), state.synced()), (None, None));
    }
}
