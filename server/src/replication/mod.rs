//! Replication between servers (the contract is `docs/replication.md`): a primary pushes each
//! new version to the key's other replicas and answers once a write quorum holds it; every
//! server pulls from its peers what it missed. The ring is a state that changes while serving
//! (`docs/rebalancing.md`): placement is swapped atomically and peers follow it. No HTTP
//! framework types here: `http/internal.rs` serves the peers' side.
//!
//! - `peer_client.rs`: the pooled HTTP client towards peers.
//! - `sender.rs`: one push task per peer, batching.
//! - `catch_up.rs`: one pull task per peer, with a cursor committed alongside the data.
//! - `peers.rs`: starting and stopping those tasks as the ring's members change.
//! - `quorum.rs`: waiting for W confirmations (pure counting, unit-tested).
//! - `reach.rs`: which peers answer, so a put its quorum cannot confirm is refused up front.
//! - `ring_state.rs`: which ring states are adopted and what that implies (pure).
//! - `adopt.rs`: adopting a state durably; the clean-up after a commit.
//! - `copy_base.rs`: how far a copy needs only the keys a server gains (pure).
//! - `gossip.rs`: asking peers for their ring states, so a server that missed one converges.

mod adopt;
mod catch_up;
mod copy_base;
mod gossip;
mod peer_client;
mod peers;
pub mod quorum;
mod reach;
pub mod ring_state;
mod sender;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use kv_common::replication::{PeerStatus, Record, ReplicationHealth, ReplicationStatus};
use kv_common::ring_config::{CleanupReport, Placement, RingHealth, RingState, RingView};
use serde_json::value::RawValue;
use tokio::sync::{Notify, OwnedRwLockReadGuard, RwLock, oneshot};
use tokio::task::JoinHandle;

use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::metrics::ReplicationMetrics;
use crate::store::{Store, Versioned};
pub use adopt::Adoption;
use copy_base::CopyBase;
use peer_client::PeerClient;
use reach::Reach;
use sender::Push;

/// Versions that may wait for one peer's sender; beyond that a put does not count on that
/// peer (catch-up fetches the version later).
const PUSH_QUEUE: usize = 16_384;

/// `kv_meta` entry naming the ring this database last caught up under.
const RING_META: &str = "ring";

/// [`Shared::frozen_head`] when not frozen.
const NOT_FROZEN: u64 = u64::MAX;

/// What the tasks share with the request path.
pub(crate) struct Shared {
    me: String,
    store: Store,
    client: PeerClient,
    /// Which peers answered their last exchange (see `reach.rs`).
    reach: Reach,
    catch_up_interval: Duration,
    metrics: ReplicationMetrics,
    /// The ring state in force and the rings built from it; swapped whole on adoption.
    placement: ArcSwap<Placement>,
    /// Puts hold a read guard from their ring checks to their local commit; adopting a state
    /// takes the write guard, so once a state is adopted no put checked under the old one is
    /// still uncommitted (a frozen state's head covers every version of a moving key).
    freeze: Arc<RwLock<()>>,
    /// One adoption (or clean-up) at a time.
    adopting: tokio::sync::Mutex<()>,
    /// Pokes the gossip task (a request named a newer epoch).
    gossip_now: Notify,
    /// Senders and pullers by peer name.
    peers: Mutex<BTreeMap<String, peers::PeerTasks>>,
    progress: Mutex<BTreeMap<String, Progress>>,
    /// False while the database is not complete for `current` (new database, or a ring it
    /// missed): no key is served meanwhile.
    synced: AtomicBool,
    /// With `next`: every puller reached its peer's head once since `next` was learned.
    copied: AtomicBool,
    /// Versions stored by catch-up since `next` was learned.
    copied_versions: AtomicU64,
    /// With `next`: up to where each peer's feed is read for gained keys only.
    copy_base: ArcSwapOption<CopyBase>,
    /// A new `current` was adopted and `/internal/cleanup` has not run since.
    cleanup_pending: AtomicBool,
    /// While frozen: this server's head when it took the freeze (or started frozen), so every
    /// version of a key whose primary moves that it will ever hold is at or below it.
    /// [`NOT_FROZEN`] otherwise.
    frozen_head: AtomicU64,
    /// `--write-quorum`, if given; otherwise a majority of the ring's factor.
    write_quorum: Option<usize>,
    /// Where `--peers` says each name is now. Ring configurations carry the URLs members had
    /// when the ring was made; a server started elsewhere since (a local cluster on new free
    /// ports, a compose file edited) is dialled where its launcher says. Local only: the
    /// state itself, stored and gossiped, keeps its URLs, so servers never disagree on it.
    dial: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    url: String,
    cursor: u64,
    head: u64,
    last_error: Option<String>,
    /// A pull reached the peer's head at least once since this puller (re)started.
    caught_up_once: bool,
}

impl Shared {
    /// The peers this server works with under its state: every member of `current` and
    /// `next` but itself, by name, with the address to dial (its `--peers` URL when named
    /// there, else the ring's).
    fn peer_addresses(&self) -> BTreeMap<String, String> {
        self.placement
            .load()
            .state
            .all_members()
            .into_iter()
            .filter(|m| m.name != self.me)
            .map(|m| {
                let url = self.dial.get(&m.name).cloned().unwrap_or(m.url);
                (m.name, url)
            })
            .collect()
    }

    /// One exchange with `peer` at `url`, noting whether it answered at all (`reach.rs`).
    async fn call_peer(
        &self,
        peer: &str,
        method: http::Method,
        url: &str,
        json_body: Option<Vec<u8>>,
    ) -> std::result::Result<(http::StatusCode, bytes::Bytes), String> {
        let answer = self.client.call(method, url, json_body).await;
        match &answer {
            Ok(_) => self.reach.answered(peer, &self.metrics),
            Err(why) => self.reach.failed(peer, why, &self.metrics),
        }
        answer
    }

    fn set_progress(&self, peer: &str, update: impl FnOnce(&mut Progress)) {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = progress.get_mut(peer) else {
            return;
        };
        update(entry);
        self.metrics
            .set_lag(peer, entry.head.saturating_sub(entry.cursor));
        self.check_caught_up(&progress);
    }

    /// Once every puller reached its peer's head since it (re)started: synced, and copied
    /// for `next` if one is announced. True at once without peers (a one-member ring).
    fn check_caught_up(&self, progress: &BTreeMap<String, Progress>) {
        if !progress.values().all(|p| p.caught_up_once) {
            return;
        }
        let placement = self.placement.load();
        if !self.synced.load(Ordering::Relaxed) {
            self.synced.store(true, Ordering::Relaxed);
            tracing::info!(
                epoch = placement.epoch(),
                "caught up with every peer: serving keys as primary"
            );
            // Remember the ring this database is complete for; a crash before this lands
            // just means one more full pass at the next start.
            let ring = ring_state::fingerprint(&placement.state.current);
            self.record_meta(RING_META, ring);
        }
        if let Some(next) = &placement.state.next
            && !self.copied.swap(true, Ordering::Relaxed)
        {
            tracing::info!(
                next = next.epoch,
                versions = self.copied_versions.load(Ordering::Relaxed),
                "copied every peer's changes for the next ring"
            );
            self.record_meta(ring_state::COPIED_EPOCH_META, next.epoch.to_string());
        }
    }

    fn record_meta(&self, name: &'static str, value: String) {
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.set_meta(name, &value).await {
                tracing::warn!(%error, name, "cannot record replication metadata");
            }
        });
    }

    fn quorum_default(&self, factor: usize) -> usize {
        self.write_quorum.unwrap_or(factor / 2 + 1).clamp(1, factor)
    }
}

/// What a put holds between its ring checks and its local commit (see `Shared::freeze`).
pub struct PutPermit {
    _checked: OwnedRwLockReadGuard<()>,
    placement: Arc<Placement>,
    /// The write quorum the put was admitted for.
    quorum: usize,
}

impl PutPermit {
    /// Call once the version is committed locally: adoptions may go on, replication follows
    /// the placement the put was checked under, for the quorum it was admitted with.
    pub fn committed(self) -> Committed {
        Committed {
            placement: self.placement,
            quorum: self.quorum,
        }
    }
}

/// A put committed here, to replicate.
pub struct Committed {
    pub placement: Arc<Placement>,
    pub quorum: usize,
}

/// The replication side of one server. Absent (`None` in the app state) when standalone.
pub struct Replication {
    timeout: Duration,
    shared: Arc<Shared>,
    gossip: Mutex<Option<JoinHandle<()>>>,
}

impl Replication {
    /// Loads the ring state, starts the senders, the catch-up pullers and the gossip task;
    /// `None` without `--peers`. Must run inside a tokio runtime.
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
        let timeout = Duration::from_millis(settings.replication_timeout_ms.max(1));
        // A stored state wins over the flags: it is what the cluster moved to since.
        let state = match store.meta(ring_state::RING_STATE_META).await? {
            Some(json) => {
                let state: RingState = serde_json::from_str(&json)
                    .map_err(|e| Error::Internal(format!("stored ring state unreadable: {e}")))?;
                state.validate().map_err(Error::Internal)?;
                state
            }
            None => ring_state::from_flags(settings, &me).map_err(Error::Config)?,
        };
        // A database new to the cluster, or one that last caught up under another ring
        // (servers added or removed, another R or vnodes: keys changed hands), must first
        // learn what its peers hold, reading every peer's changes from the start.
        let fingerprint = ring_state::fingerprint(&state.current);
        let recorded = store.meta(RING_META).await?;
        let same_ring = recorded.as_deref() == Some(fingerprint.as_str());
        let synced = !store.open_info().fresh && same_ring;
        if !same_ring && !store.open_info().fresh {
            tracing::warn!(was = recorded.as_deref().unwrap_or("unknown"), now = %fingerprint,
                "the ring changed since this database last caught up: re-reading every peer \
                 before serving");
        }
        let copied_epoch = store.meta(ring_state::COPIED_EPOCH_META).await?;
        let copied = state
            .next
            .as_ref()
            .is_some_and(|n| copied_epoch.as_deref() == Some(n.epoch.to_string().as_str()));
        // Only a database complete for `current` can claim what its cursors cover.
        let copy_base = match same_ring && state.next.is_some() {
            true => CopyBase::from_meta(store.meta(copy_base::COPY_BASE_META).await?.as_deref())
                .filter(|base| base.epoch == state.current.epoch)
                .map(Arc::new),
            false => None,
        };
        let mut cleanup_pending = store
            .meta(ring_state::CLEANUP_PENDING_META)
            .await?
            .as_deref()
            == Some("true");
        // Keys may have changed hands: this server copies what it holds now and keeps what
        // it no longer does until a clean-up, which the coordinator runs once every server
        // of the ring has caught up (`kvstore up` does at once after growing offline; else
        // `kvstore ring apply` or the operator). Stored before any catch-up records the new
        // ring as complete, so a restart in between cannot forget it.
        if !same_ring && !store.open_info().fresh && !cleanup_pending {
            store
                .set_meta(ring_state::CLEANUP_PENDING_META, "true")
                .await?;
            cleanup_pending = true;
        }
        metrics.ring_epoch.set(state.current.epoch as i64);
        let epoch = state.current.epoch;
        let members = state.current.members.len();
        let is_member = state.current.contains(&me);
        // Started frozen: nothing was put since the start, so today's head covers it.
        let frozen_head = if state.frozen {
            store.head().await?
        } else {
            NOT_FROZEN
        };
        let shared = Arc::new(Shared {
            me: me.clone(),
            store: store.clone(),
            client: PeerClient::new(Duration::from_secs(1), timeout.max(Duration::from_secs(5))),
            reach: Reach::default(),
            catch_up_interval: Duration::from_millis(settings.catch_up_interval_ms.max(10)),
            metrics,
            placement: ArcSwap::from_pointee(Placement::new(state)),
            freeze: Arc::new(RwLock::new(())),
            adopting: tokio::sync::Mutex::new(()),
            gossip_now: Notify::new(),
            peers: Mutex::new(BTreeMap::new()),
            progress: Mutex::new(BTreeMap::new()),
            synced: AtomicBool::new(synced),
            copied: AtomicBool::new(copied),
            copied_versions: AtomicU64::new(0),
            copy_base: ArcSwapOption::new(copy_base),
            cleanup_pending: AtomicBool::new(cleanup_pending),
            frozen_head: AtomicU64::new(frozen_head),
            write_quorum: settings.write_quorum,
            dial: settings
                .peers
                .iter()
                .map(|p| (p.name.clone(), p.url.clone()))
                .collect(),
        });
        let cursors = if same_ring {
            store.cursors().await?
        } else {
            Vec::new()
        };
        peers::reconcile(&shared, &cursors).await;
        let gossip = tokio::spawn(gossip::run(shared.clone()));
        tracing::info!(name = %me, epoch, members, is_member, synced, copied, "replication on");
        Ok(Some(Arc::new(Replication {
            timeout,
            shared,
            gossip: Mutex::new(Some(gossip)),
        })))
    }

    pub fn name(&self) -> &str {
        &self.shared.me
    }

    /// The placement in force.
    pub fn placement(&self) -> Arc<Placement> {
        self.shared.placement.load_full()
    }

    /// The checks of a put, in order: the request's ring epoch, this server being the key's
    /// primary, the key's writes not paused, the database synced, enough of the key's
    /// replicas answering for its write quorum. The permit keeps adoptions
    /// out until the put is committed locally.
    pub async fn admit_put(
        &self,
        key: &str,
        epoch: Option<u64>,
        asked_quorum: Option<usize>,
    ) -> Result<PutPermit> {
        let checked = self.shared.freeze.clone().read_owned().await;
        let placement = self.shared.placement.load_full();
        self.check_epoch_of(&placement, epoch)?;
        let primary = placement.primary(key).unwrap_or_default();
        if primary != self.shared.me {
            return Err(Error::NotPrimary {
                key: key.to_owned(),
                me: self.shared.me.clone(),
                primary: primary.to_owned(),
            });
        }
        if placement.write_paused(key) {
            self.shared.metrics.rebalancing_refusals.inc();
            return Err(Error::Rebalancing {
                key: key.to_owned(),
                next_primary: placement.next_primary(key).unwrap_or_default().to_owned(),
            });
        }
        self.check_synced()?;
        let quorum = self.quorum(&placement, asked_quorum);
        let reach = &self.shared.reach;
        // With every peer answering (the usual case) there is nothing to count.
        if !reach.all_answer()
            && !quorum::possible(
                &self.groups(&placement, key, quorum),
                &self.shared.me,
                |peer| reach.reachable(peer),
            )
        {
            self.shared.metrics.quorum_unavailable.inc();
            return Err(Error::QuorumUnavailable {
                key: key.to_owned(),
                needed: quorum,
                unreachable: reach.unreachable(),
            });
        }
        Ok(PutPermit {
            _checked: checked,
            placement,
            quorum,
        })
    }

    /// The checks of a read: the request's ring epoch, then the database synced.
    pub fn admit_read(&self, epoch: Option<u64>) -> Result<()> {
        self.check_epoch_of(&self.shared.placement.load(), epoch)?;
        self.check_synced()
    }

    /// A request routed by an older ring is refused with the current one; one routed by a
    /// newer ring than this server knows makes it ask its peers now.
    fn check_epoch_of(&self, placement: &Placement, asked: Option<u64>) -> Result<()> {
        let Some(asked) = asked else { return Ok(()) };
        let current = placement.epoch();
        if asked < current {
            return Err(Error::StaleRing {
                asked,
                ring: Box::new(placement.state.current.clone()),
            });
        }
        if asked > current {
            self.shared.gossip_now.notify_one();
            return Err(Error::RingBehind { asked, current });
        }
        Ok(())
    }

    /// A change feed asked for by a server at ring epoch `asked` (its newest, `next` if
    /// any) is filtered by this server's rings: if they are older, keys the asker holds only
    /// under the newer ring would be skipped and its copy pass would end without them.
    pub fn check_feed_epoch(&self, asked: Option<u64>) -> Result<()> {
        let Some(asked) = asked else { return Ok(()) };
        let latest = self.shared.placement.load().state.latest_epoch();
        if asked > latest {
            self.shared.gossip_now.notify_one();
            return Err(Error::RingBehind {
                asked,
                current: latest,
            });
        }
        Ok(())
    }

    /// Fails with `Syncing` while the database is not complete for the current ring.
    pub fn check_synced(&self) -> Result<()> {
        if self.shared.synced.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(Error::Syncing(self.shared.me.clone()))
        }
    }

    /// A cheap, owned filter for the change feed of peer `name`: the keys it holds now or
    /// will under `next`; up to sequence `below` only those it gains, when it asks so
    /// (`gained = (epoch, below)`, see `copy_base.rs`) and `epoch` is the `current` here. A
    /// peer whose `current` differs gets the whole filter, a superset.
    pub fn filter_for(
        &self,
        name: String,
        gained: Option<(u64, u64)>,
    ) -> impl Fn(u64, &str) -> bool + Send + 'static {
        let placement = self.shared.placement.load_full();
        let below = gained
            .filter(|(epoch, _)| *epoch == placement.epoch() && placement.next.is_some())
            .map_or(0, |(_, below)| below);
        move |seq, key| match seq <= below {
            true => placement.gains(&name, key),
            false => placement.holds(&name, key),
        }
    }

    /// The write quorum to use: the one the put asks for (the gateway's), else the default,
    /// never more than the replication factor of `placement`.
    fn quorum(&self, placement: &Placement, asked: Option<usize>) -> usize {
        let factor = placement.state.current.factor();
        asked
            .unwrap_or_else(|| self.shared.quorum_default(factor))
            .clamp(1, factor)
    }

    /// Sends a version this primary just committed to every target of the key (dual write
    /// during a transition), and waits until `quorum` servers among its replicas in force
    /// (this one included) hold it, or the replication timeout. Returns the servers that
    /// confirmed it, this one first.
    pub async fn replicate(
        &self,
        placement: &Placement,
        key: &str,
        stored: &Versioned,
        quorum: usize,
    ) -> Result<Vec<String>> {
        let groups = self.groups(placement, key, quorum);
        let others: Vec<&str> = placement
            .targets(key)
            .into_iter()
            .filter(|name| *name != self.shared.me)
            .collect();
        let mut waits = Vec::with_capacity(others.len());
        if !others.is_empty() {
            let value = RawValue::from_string(stored.value.to_string())
                .map_err(|e| Error::Internal(format!("stored value is not JSON: {e}")))?;
            let senders = peers::senders(&self.shared, &others);
            for (name, sender) in senders {
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
                    waits.push((name, confirmed));
                }
            }
        }
        let quorum::Tally { acked, silent } =
            quorum::wait_joint(self.shared.me.clone(), &groups, waits, self.timeout).await;
        for peer in &silent {
            let why = format!("no confirmation within {:?}", self.timeout);
            self.shared.reach.failed(peer, &why, &self.shared.metrics);
        }
        if quorum::met(&groups, &acked) {
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

    /// The servers that must hold a put's version of `key`, and how many of each list.
    fn groups(&self, placement: &Placement, key: &str, quorum: usize) -> Vec<quorum::Group> {
        let replicas = placement.replicas(key);
        // During a transition a version counts only once W servers hold it in the key's list
        // under `next` too (a joint quorum, as Raft's joint consensus): at the switch every
        // acknowledged version is then on W servers of its new list, where reads fall back.
        let mut groups = vec![quorum::Group {
            members: replicas.iter().map(|n| (*n).to_owned()).collect(),
            needed: quorum,
        }];
        if let (Some(ring), Some(next)) = (&placement.next, &placement.state.next) {
            let list = ring.preference_list(key, next.factor());
            groups.push(quorum::Group {
                needed: quorum.min(list.len()),
                members: list.into_iter().map(str::to_owned).collect(),
            });
        }
        groups
    }

    /// Adopts `offered` if it is above this server's state (`PUT /internal/ring`, gossip).
    pub async fn adopt(&self, offered: RingState) -> Result<Adoption> {
        adopt::adopt(&self.shared, offered).await
    }

    /// Deletes the keys this server does not hold under `current` (after a commit).
    pub async fn cleanup(&self) -> Result<CleanupReport> {
        adopt::cleanup(&self.shared).await
    }

    /// `GET /internal/ring`; `head` is this server's newest change sequence.
    pub fn view(&self, head: u64) -> RingView {
        view(&self.shared, head)
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
                reachable: self.shared.reach.reachable(name),
            })
            .collect();
        let factor = self.shared.placement.load().state.current.factor();
        ReplicationStatus {
            name: self.shared.me.clone(),
            replication_factor: factor,
            write_quorum: self.shared.quorum_default(factor),
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

    /// Brings the gauges that mirror state (rather than count events) up to date; called
    /// when `/metrics` is read, so they can never drift from what `/health` says.
    pub fn refresh_metrics(&self) {
        let metrics = &self.shared.metrics;
        metrics
            .synced
            .set(i64::from(self.shared.synced.load(Ordering::Relaxed)));
        let transition = self.shared.placement.load().state.next.is_some();
        metrics.ring_transition.set(i64::from(transition));
        // Reachability is recorded on changes only, so a peer that never failed had no
        // sample at all: give every pulled peer one, as `/internal/status` shows it.
        let progress = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for peer in progress.keys() {
            metrics.set_unreachable(peer, !self.shared.reach.reachable(peer));
        }
    }

    /// The `ring` part of `/health`.
    pub fn ring_health(&self) -> RingHealth {
        RingHealth::from(&self.shared.placement.load().state)
    }

    /// Stops the gossip, the senders and the pullers (pending pushes are dropped: catch-up
    /// covers them).
    pub fn stop(&self) {
        if let Some(gossip) = self.gossip.lock().unwrap_or_else(|p| p.into_inner()).take() {
            gossip.abort();
        }
        peers::abort_all(&self.shared);
    }
}

fn view(shared: &Shared, head: u64) -> RingView {
    let placement = shared.placement.load();
    RingView {
        name: shared.me.clone(),
        state: placement.state.clone(),
        copied: placement.state.next.is_some() && shared.copied.load(Ordering::Relaxed),
        synced: shared.synced.load(Ordering::Relaxed),
        head,
        copied_versions: shared.copied_versions.load(Ordering::Relaxed),
        cleanup_pending: shared.cleanup_pending.load(Ordering::Relaxed),
        frozen_head: match shared.frozen_head.load(Ordering::Relaxed) {
            NOT_FROZEN => None,
            head => Some(head),
        },
    }
}
