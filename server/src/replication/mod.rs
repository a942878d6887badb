//! Replication between servers (the contract is `docs/replication.md`): a primary pushes each
//! new version to the key's other replicas and answers once a write quorum holds it; every
//! server pulls from its peers what it missed. No HTTP framework types here: `http/internal.rs`
//! serves the peers' side.
//!
//! - `peer_client.rs`: the pooled HTTP client towards peers.
//! - `sender.rs`: one push task per peer, batching.
//! - `catch_up.rs`: one pull task per peer, with a cursor committed alongside the data.
//! - `quorum.rs`: waiting for W confirmations (pure counting, unit-tested).

mod catch_up;
mod peer_client;
pub mod quorum;
mod sender;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_common::replication::{PeerStatus, Record, ReplicationHealth, ReplicationStatus};
use kv_common::ring::Ring;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::metrics::ReplicationMetrics;
use crate::store::{Store, Versioned};
use peer_client::PeerClient;
use sender::Push;

/// Versions that may wait for one peer's sender; beyond that a put does not count on that
/// peer (catch-up fetches the version later).
const PUSH_QUEUE: usize = 16_384;

/// `kv_meta` entry naming the ring this database last caught up under.
const RING_META: &str = "ring";

/// What the tasks share with the request path.
pub(crate) struct Shared {
    me: String,
    store: Store,
    /// This server's ring, as text: recorded once caught up under it.
    ring_fingerprint: String,
    client: PeerClient,
    catch_up_interval: Duration,
    metrics: ReplicationMetrics,
    progress: Mutex<BTreeMap<String, Progress>>,
    /// False while a new database has not caught up with every peer.
    synced: AtomicBool,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    url: String,
    cursor: u64,
    head: u64,
    last_error: Option<String>,
    /// A pull reached the peer's head at least once since this server started.
    caught_up_once: bool,
}

impl Shared {
    fn set_progress(&self, peer: &str, update: impl FnOnce(&mut Progress)) {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = progress.get_mut(peer) else {
            return;
        };
        update(entry);
        self.metrics
            .set_lag(peer, entry.head.saturating_sub(entry.cursor));
        if !self.synced.load(Ordering::Relaxed) && progress.values().all(|p| p.caught_up_once) {
            self.synced.store(true, Ordering::Relaxed);
            tracing::info!("caught up with every peer: serving keys as primary");
            // Remember the ring this database is complete for; a crash before this lands
            // just means one more full pass at the next start.
            let (store, ring) = (self.store.clone(), self.ring_fingerprint.clone());
            tokio::spawn(async move {
                if let Err(error) = store.set_meta(RING_META, &ring).await {
                    tracing::warn!(%error, "cannot record the ring; the next start re-reads peers");
                }
            });
        }
    }
}

/// The replication side of one server. Absent (`None` in the app state) when standalone.
pub struct Replication {
    ring: Ring,
    factor: usize,
    quorum: usize,
    timeout: Duration,
    shared: Arc<Shared>,
    senders: BTreeMap<String, mpsc::Sender<Push>>,
    tasks: Mutex<JoinSet<()>>,
}

impl Replication {
    /// Starts the senders and the catch-up pullers; `None` without `--peers`. Must run
    /// inside a tokio runtime.
    pub async fn start(
        config: &ServerConfig,
        store: &Store,
        metrics: ReplicationMetrics,
    ) -> Result<Option<Arc<Replication>>> {
        let settings = &config.replication;
        if !settings.enabled() {
            return Ok(None);
        }
        let me = config.node_name.clone();
        let ring = Ring::new(settings.members(&me), settings.vnodes);
        let factor = settings.factor(&me);
        let timeout = Duration::from_millis(settings.replication_timeout_ms.max(1));
        let peers: BTreeMap<String, String> = settings
            .peers
            .iter()
            .filter(|p| p.name != me)
            .map(|p| (p.name.clone(), p.url.clone()))
            .collect();
        // A database new to the cluster, or one that last caught up under another ring
        // (servers added or removed, another R or vnodes: keys changed hands), must first
        // learn what its peers hold, reading every peer's changes from the start.
        let fingerprint = format!(
            "vnodes={};replicas={factor};members={}",
            settings.vnodes,
            ring.members().join(",")
        );
        let recorded = store.meta(RING_META).await?;
        let same_ring = recorded.as_deref() == Some(fingerprint.as_str());
        let synced = !store.open_info().fresh && same_ring;
        if !same_ring && !store.open_info().fresh {
            tracing::warn!(was = recorded.as_deref().unwrap_or("unknown"), now = %fingerprint,
                "the ring changed since this database last caught up: re-reading every peer \
                 before serving");
        }
        let shared = Arc::new(Shared {
            me: me.clone(),
            store: store.clone(),
            ring_fingerprint: fingerprint,
            client: PeerClient::new(Duration::from_secs(1), timeout.max(Duration::from_secs(5))),
            catch_up_interval: Duration::from_millis(settings.catch_up_interval_ms.max(10)),
            metrics,
            progress: Mutex::new(
                peers
                    .iter()
                    .map(|(name, url)| {
                        let progress = Progress {
                            url: url.clone(),
                            ..Progress::default()
                        };
                        (name.clone(), progress)
                    })
                    .collect(),
            ),
            synced: AtomicBool::new(synced),
        });
        let mut tasks = JoinSet::new();
        let mut senders = BTreeMap::new();
        let cursors: BTreeMap<String, (String, u64)> = if same_ring {
            store
                .cursors()
                .await?
                .into_iter()
                .map(|(peer, instance, seq)| (peer, (instance, seq)))
                .collect()
        } else {
            BTreeMap::new()
        };
        for (name, url) in &peers {
            let (tx, rx) = mpsc::channel(PUSH_QUEUE);
            senders.insert(name.clone(), tx);
            tasks.spawn(sender::run(shared.clone(), name.clone(), url.clone(), rx));
            // Pullers run even with R = 1: after a ring change they bring the keys this
            // server now owns; otherwise they only walk cursors forward.
            tasks.spawn(catch_up::run(
                shared.clone(),
                store.clone(),
                name.clone(),
                url.clone(),
                cursors.get(name).cloned(),
            ));
        }
        tracing::info!(name = %me, members = ring.len(), factor, quorum = settings.quorum(&me),
            synced, "replication on");
        Ok(Some(Arc::new(Replication {
            ring,
            factor,
            quorum: settings.quorum(&me),
            timeout,
            shared,
            senders,
            tasks: Mutex::new(tasks),
        })))
    }

    pub fn name(&self) -> &str {
        &self.shared.me
    }

    /// Fails with `NotPrimary` unless this server is the first of the key's list.
    pub fn check_primary(&self, key: &str) -> Result<()> {
        let primary = self.ring.owner(key).unwrap_or_default();
        if primary == self.shared.me {
            Ok(())
        } else {
            Err(Error::NotPrimary {
                key: key.to_owned(),
                me: self.shared.me.clone(),
                primary: primary.to_owned(),
            })
        }
    }

    /// Fails with `Syncing` while a new database has not caught up with every peer.
    pub fn check_synced(&self) -> Result<()> {
        if self.shared.synced.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(Error::Syncing(self.shared.me.clone()))
        }
    }

    /// Whether `name` holds `key` (used to filter the change feed for that peer).
    pub fn holds(&self, name: &str, key: &str) -> bool {
        self.ring.replicates(name, key, self.factor)
    }

    /// A cheap, owned filter for the change feed of peer `name`.
    pub fn filter_for(self: &Arc<Self>, name: String) -> impl Fn(&str) -> bool + Send + 'static {
        let this = self.clone();
        move |key| this.holds(&name, key)
    }

    /// The write quorum to use: the one the put asks for (the gateway's), else the default,
    /// never more than the replication factor.
    pub fn quorum(&self, asked: Option<usize>) -> usize {
        asked.unwrap_or(self.quorum).clamp(1, self.factor)
    }

    /// Sends a version this primary just committed to the key's other replicas, and waits
    /// until `quorum` servers (this one included) hold it, or the replication timeout.
    /// Returns the servers that confirmed it, this one first.
    pub async fn replicate(
        &self,
        key: &str,
        stored: &Versioned,
        quorum: usize,
    ) -> Result<Vec<String>> {
        let others: Vec<&str> = self
            .ring
            .preference_list(key, self.factor)
            .into_iter()
            .filter(|name| *name != self.shared.me)
            .collect();
        let mut waits = Vec::with_capacity(others.len());
        if !others.is_empty() {
            let value = RawValue::from_string(stored.value.to_string())
                .map_err(|e| Error::Internal(format!("stored value is not JSON: {e}")))?;
            for name in others {
                let Some(sender) = self.senders.get(name) else {
                    continue;
                };
                let (done, confirmed) = oneshot::channel();
                let push = Push {
                    record: Record {
                        key: key.to_owned(),
                        version: stored.version,
                        value: value.clone(),
                        timestamp: stored.timestamp,
                    },
                    done,
                };
                // A full queue means the peer is far behind: do not wait on it.
                if sender.try_send(push).is_ok() {
                    waits.push((name.to_owned(), confirmed));
                }
            }
        }
        let acked = quorum::wait(self.shared.me.clone(), quorum, waits, self.timeout).await;
        if acked.len() >= quorum {
            Ok(acked)
        } else {
            self.shared.metrics.quorum_failures.inc();
            Err(Error::QuorumFailed {
                key: key.to_owned(),
                version: stored.version,
                acked,
                needed: quorum,
            })
        }
    }

    /// `/internal/status`; `head` is this server's newest change sequence.
    pub fn status(&self, head: u64) -> ReplicationStatus {
        let progress = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let peers: Vec<PeerStatus> = progress
            .iter()
            .map(|(name, p)| PeerStatus {
                name: name.clone(),
                url: p.url.clone(),
                cursor: p.cursor,
                head: p.head,
                lag: p.head.saturating_sub(p.cursor),
                last_error: p.last_error.clone(),
            })
            .collect();
        ReplicationStatus {
            name: self.shared.me.clone(),
            replication_factor: self.factor,
            write_quorum: self.quorum,
            synced: self.shared.synced.load(Ordering::Relaxed),
            lag: peers.iter().map(|p| p.lag).sum(),
            head,
            peers,
        }
    }

    /// The `replication` part of `/health`.
    pub fn health(&self) -> ReplicationHealth {
        let status = self.status(0);
        ReplicationHealth {
            factor: status.replication_factor,
            lag: status.lag,
            synced: status.synced,
        }
    }

    /// Stops the senders and pullers (pending pushes are dropped: catch-up covers them).
    pub fn stop(&self) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
    }
}
