//! The server's Prometheus registry: HTTP metrics (from kv-common), the cache counters and the
//! write path (batch sizes, commit latency, failed writes). Built once in `run`.

use std::sync::Arc;

use kv_common::http_metrics::HttpMetrics;
use prometheus_client::metrics::counter::Counter;
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
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            // 1 .. 2048 puts per transaction.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            // 50 µs .. ~1.6 s per commit (fsync included).
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            write_errors: Counter::default(),
        }
    }
}

/// Everything `/metrics` shows.
pub struct Metrics {
    pub registry: Registry,
    pub http: Arc<HttpMetrics>,
    pub store: StoreMetrics,
    pub cache: CacheCounters,
    hit_ratio: Gauge<f64, AtomicU64>,
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
            "cache_hit_ratio",
            "hits / (hits + misses) since start",
            hit_ratio.clone(),
        );
        Metrics {
            registry,
            http,
            store,
            cache,
            hit_ratio,
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
