//! The server's Prometheus registry: HTTP metrics (from kv-common), the cache counters and the
//! write path (batch sizes, commit latency, failed writes). Built once in `run`.

use std::path::Path;
use std::sync::Arc;

use kv_common::http_metrics::HttpMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::store::CacheCounters;

/// Write-path metrics, handed to the writer thread.
#[derive(Clone)]
pub struct StoreMetrics {
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub write_errors: Counter,
    /// Replicated versions refused because a different value was held.
    pub replica_conflicts: Counter,
    /// WAL checkpoints run by the checkpoint thread (paced: a few a second at most).
    pub checkpoints: Counter,
    /// Frames the WAL held at the last checkpoint.
    pub wal_frames: Gauge,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            // 1 .. 2048 puts per transaction.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            // 50 µs .. ~1.6 s per commit (fsync included).
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            write_errors: Counter::default(),
            replica_conflicts: Counter::default(),
            checkpoints: Counter::default(),
            wal_frames: Gauge::default(),
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// Replication metrics, shared by the senders, the pullers and the put path.
#[derive(Clone, Default)]
pub struct ReplicationMetrics {
    /// `head - cursor` per peer, in change-sequence numbers.
    pub lag: Family<Labels, Gauge>,
    /// Versions pushed to each peer, by outcome (`ok`, `conflict`, `refused`, `unreachable`).
    pub pushed: Family<Labels, Counter>,
    /// Versions this server stored from catch-up pulls, by peer.
    pub pulled: Family<Labels, Counter>,
    /// Versions catch-up pulls brought that this server held already, by peer.
    pub pulled_duplicates: Family<Labels, Counter>,
    pub quorum_failures: Counter,
    /// Puts refused before storing anything, their quorum's replicas unreachable.
    pub quorum_unavailable: Counter,
    /// 1 while a peer counts as unreachable for quorums (`replication/reach.rs`).
    pub peer_unreachable: Family<Labels, Gauge>,
    /// Epoch of the ring in force.
    pub ring_epoch: Gauge,
    /// 1 once this server caught up with every peer (it serves its keys as primary), 0
    /// while it answers `503 syncing`. Set when `/metrics` is read.
    pub synced: Gauge,
    /// 1 while a next ring is announced (a move in progress), 0 otherwise. Set when
    /// `/metrics` is read.
    pub ring_transition: Gauge,
    /// Puts refused `503 rebalancing` (their key's primary is moving, writes frozen).
    pub rebalancing_refusals: Counter,
    /// Versions deleted by `/internal/cleanup`.
    pub cleanup_deleted_versions: Counter,
}

impl ReplicationMetrics {
    pub fn pushed(&self, peer: &str, outcome: &'static str, versions: u64) {
        self.pushed
            .get_or_create(&vec![
                ("peer", peer.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc_by(versions);
    }

    pub fn pulled(&self, peer: &str, versions: u64, duplicates: u64) {
        let labels = vec![("peer", peer.to_owned())];
        self.pulled.get_or_create(&labels).inc_by(versions);
        self.pulled_duplicates
            .get_or_create(&labels)
            .inc_by(duplicates);
    }

    pub fn set_unreachable(&self, peer: &str, unreachable: bool) {
        self.peer_unreachable
            .get_or_create(&vec![("peer", peer.to_owned())])
            .set(i64::from(unreachable));
    }

    pub fn set_lag(&self, peer: &str, lag: u64) {
        self.lag
            .get_or_create(&vec![("peer", peer.to_owned())])
            .set(lag.min(i64::MAX as u64) as i64);
    }
}

/// Everything `/metrics` shows.
pub struct Metrics {
    pub registry: Registry,
    pub http: Arc<HttpMetrics>,
    pub store: StoreMetrics,
    pub cache: CacheCounters,
    pub replication: ReplicationMetrics,
    /// HTTP connections open on the server's port (peers, health checks, HTTP clients).
    pub connections: kv_common::serve::ConnectionMetrics,
    /// Gateway links open.
    pub links: Gauge,
    /// Put bodies admitted under `--max-inflight-body-bytes`, and puts that waited for room.
    pub body_bytes: Gauge,
    pub body_waits: Counter,
    hit_ratio: Gauge<f64, AtomicU64>,
    storage: StorageGauges,
}

/// The database's files and the volume holding them, read when `/metrics` is read.
#[derive(Default)]
struct StorageGauges {
    database_bytes: Gauge,
    wal_bytes: Gauge,
    volume_size_bytes: Gauge,
    volume_available_bytes: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kv_server");
        let http = HttpMetrics::register(&mut registry);
        let store = StoreMetrics::default();
        let cache = CacheCounters::default();
        let hit_ratio = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "write_batch_size",
            "Puts committed per SQLite transaction",
            store.batch_size.clone(),
        );
        registry.register(
            "sqlite_commit_seconds",
            "Time to write and commit one batch, fsync included",
            store.commit_seconds.clone(),
        );
        registry.register(
            "write_errors",
            "Puts that failed because their batch could not be committed",
            store.write_errors.clone(),
        );
        registry.register(
            "replica_conflicts",
            "Replicated versions refused because this server holds another value for them",
            store.replica_conflicts.clone(),
        );
        registry.register(
            "wal_checkpoints",
            "WAL checkpoints run off the write path (at most one per 200 ms under load)",
            store.checkpoints.clone(),
        );
        registry.register(
            "wal_frames",
            "Frames (pages) the WAL held at the last checkpoint; it starts over once a \
             checkpoint has copied all of them",
            store.wal_frames.clone(),
        );
        let connections = kv_common::serve::ConnectionMetrics::default();
        registry.register(
            "http_connections",
            "HTTP connections open on the server's port: peers, health checks, HTTP clients",
            connections.open.clone(),
        );
        let links = Gauge::default();
        registry.register(
            "gateway_links",
            "Gateway links open on the server's port",
            links.clone(),
        );
        let replication = ReplicationMetrics::default();
        registry.register(
            "replication_lag",
            "Change-sequence numbers of a peer this server has not pulled yet",
            replication.lag.clone(),
        );
        registry.register(
            "replication_pushed_versions",
            "Versions pushed to a peer, by outcome",
            replication.pushed.clone(),
        );
        registry.register(
            "replication_pulled_versions",
            "Versions stored from catch-up pulls, by peer",
            replication.pulled.clone(),
        );
        registry.register(
            "replication_pulled_duplicates",
            "Versions catch-up pulls brought that this server held already, by peer",
            replication.pulled_duplicates.clone(),
        );
        registry.register(
            "replication_quorum_failures",
            "Puts answered 503 because too few replicas confirmed them in time",
            replication.quorum_failures.clone(),
        );
        registry.register(
            "replication_quorum_unavailable",
            "Puts refused with nothing stored because too few of their replicas answer",
            replication.quorum_unavailable.clone(),
        );
        registry.register(
            "replication_peer_unreachable",
            "1 while a peer got no answer since its last failed exchange (puts needing it are refused)",
            replication.peer_unreachable.clone(),
        );
        registry.register(
            "ring_epoch",
            "Epoch of the ring configuration in force on this server",
            replication.ring_epoch.clone(),
        );
        registry.register(
            "replication_synced",
            "1 once this server has caught up with every peer and serves its keys, 0 while it \
             answers 503 syncing (a new or cleaned database, a restored backup)",
            replication.synced.clone(),
        );
        registry.register(
            "ring_transition",
            "1 while a next ring is announced and keys move to it, 0 otherwise",
            replication.ring_transition.clone(),
        );
        registry.register(
            "rebalancing_refusals",
            "Puts refused because their key's primary is moving (ring transition, frozen)",
            replication.rebalancing_refusals.clone(),
        );
        registry.register(
            "cleanup_deleted_versions",
            "Versions of keys this server no longer holds, deleted by /internal/cleanup",
            replication.cleanup_deleted_versions.clone(),
        );
        registry.register(
            "cache_hits",
            "Reads answered from the cache",
            cache.hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Reads that went to SQLite",
            cache.misses.clone(),
        );
        registry.register(
            "cache_evictions",
            "Keys evicted to make room",
            cache.evictions.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes the cached keys and values hold (see --cache-max-bytes)",
            cache.bytes.clone(),
        );
        registry.register(
            "cache_hit_ratio",
            "hits / (hits + misses) since start",
            hit_ratio.clone(),
        );
        let (body_bytes, body_waits) = (Gauge::default(), Counter::default());
        registry.register(
            "request_body_bytes",
            "Bytes of put bodies held in memory now (at most --max-inflight-body-bytes)",
            body_bytes.clone(),
        );
        registry.register(
            "request_body_waits",
            "Puts that waited, unread, for room under --max-inflight-body-bytes",
            body_waits.clone(),
        );
        let storage = StorageGauges::default();
        registry.register(
            "database_bytes",
            "Size of the database file (kv_store.db)",
            storage.database_bytes.clone(),
        );
        registry.register(
            "wal_bytes",
            "Size of the database's write-ahead log (kv_store.db-wal)",
            storage.wal_bytes.clone(),
        );
        registry.register(
            "volume_size_bytes",
            "Size of the file system holding the database",
            storage.volume_size_bytes.clone(),
        );
        registry.register(
            "volume_available_bytes",
            "Bytes the server may still write on the file system holding the database (puts \
             answer 507 storage_full when it is full)",
            storage.volume_available_bytes.clone(),
        );
        Metrics {
            registry,
            http,
            store,
            cache,
            replication,
            connections,
            links,
            body_bytes,
            body_waits,
            hit_ratio,
            storage,
        }
    }

    /// Reads the database's file sizes and its volume's space into their gauges. Blocking
    /// (a few `stat` calls): run it off the async workers. A volume that cannot be read
    /// keeps its last figures.
    pub fn refresh_storage(&self, db_path: &Path) {
        let bytes = |n: u64| n.min(i64::MAX as u64) as i64;
        let (database, wal) = crate::store::db::file_sizes(db_path);
        self.storage.database_bytes.set(bytes(database));
        self.storage.wal_bytes.set(bytes(wal));
        let dir = db_path.parent().unwrap_or(Path::new("."));
        if let Ok(space) = kv_common::disk::space(dir) {
            self.storage.volume_size_bytes.set(bytes(space.total));
            self.storage
                .volume_available_bytes
                .set(bytes(space.available));
        }
    }

    /// Prometheus text, with derived gauges brought up to date first.
    pub fn render(&self) -> String {
        let (hits, misses) = (self.cache.hits.get(), self.cache.misses.get());
        let total = hits + misses;
        self.hit_ratio.set(if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        });
        kv_common::http_metrics::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
