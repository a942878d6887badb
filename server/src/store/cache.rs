//! The read cache: a sharded LRU of keys, each holding the key's latest known version and a
//! few exact versions that were read.
//!
//! Invariant: the cache never answers a "latest" older than the latest committed version.
//! The writer thread calls [`Cache::on_commit`] after every commit, which only ever moves a
//! key's latest forward. A reader that missed and went to SQLite fills the cache through
//! [`Cache::fill_latest`] with the shard's write epoch it saw *before* reading: if any commit
//! touched the shard since, the fill is dropped, because the row it read may already be stale
//! (and the commit may even have been evicted again, so "only forward" alone is not enough).
//! Exact versions never change, so filling them is always safe.
//!
//! Two limits, whichever is reached first: `--cache-size` keys (the seed's limit) and
//! `--cache-max-bytes`, the memory the entries hold (keys, values and a fixed estimate of the
//! bookkeeping per entry and per version). A count of keys alone lets a few large values use
//! gigabytes: 100 keys of 1 MiB values with their exact versions is 500 MiB. An entry larger
//! than its shard's byte budget is not cached at all, rather than flushing everything else.
//!
//! Why shards of `std::sync::Mutex`: every lookup mutates LRU order, so a read lock would not
//! help; critical sections are a hash and a few pointer moves, never IO or `.await`. Small
//! caches use one shard, so their eviction order is exact LRU as the seed documents; large
//! ones split into up to 16 shards, each an exact LRU over its share of the capacity.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::model::Versioned;

/// Older versions kept per cached key, besides the latest.
const EXACT_VERSIONS_PER_KEY: usize = 4;
/// Keys per shard below which sharding does not pay.
const KEYS_PER_SHARD: usize = 1024;
const MAX_SHARDS: usize = 16;
/// Bytes charged per cached key besides its text and values: the entry, the LRU's node (two
/// links) and hash slot, the key's `Arc` counts, allocator headers. An estimate, held above
/// the types' sizes by a test.
const ENTRY_OVERHEAD: usize = 160;
/// Bytes charged per cached version besides its value text: `Versioned` and the value's
/// `Arc` counts and allocator header.
const VERSION_OVERHEAD: usize = 56;

#[derive(Debug)]
struct Entry {
    latest: Option<Versioned>,
    /// Exact versions read by `?version=N`, most recent last.
    exact: Vec<Versioned>,
    /// When the entry was created or last written; the TTL counts from here, like the seed's
    /// expiry counted from its newest item.
    touched: Instant,
}

struct Shard {
    lru: LruCache<Arc<str>, Entry>,
    /// What the entries of this shard hold, by [`cost`].
    bytes: usize,
    /// This shard's share of `--cache-max-bytes`.
    max_bytes: usize,
    /// The cache's total across shards, for `/metrics`; moved with `bytes`.
    total: Gauge,
    /// Bumped by every commit that lands in this shard.
    epoch: u64,
}

/// Hit, miss and eviction counters and the bytes held, shared with `/metrics`.
#[derive(Clone, Default, Debug)]
pub struct CacheCounters {
    pub hits: Counter,
    pub misses: Counter,
    pub evictions: Counter,
    pub bytes: Gauge,
}

/// Snapshot for `/cache/stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSnapshot {
    pub current_size: u64,
    pub max_size: u64,
    /// Bytes the cached entries hold (expired ones included until they are dropped).
    pub current_bytes: u64,
    pub max_bytes: u64,
    pub ttl: Duration,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// Opaque proof of the shard epoch seen before a database read.
#[derive(Debug, Clone, Copy)]
pub struct FillTicket {
    shard: usize,
    epoch: u64,
}

pub struct Cache {
    shards: Box<[Mutex<Shard>]>,
    capacity: usize,
    max_bytes: usize,
    ttl: Duration,
    counters: CacheCounters,
}

impl Cache {
    /// `capacity` is in keys, `max_bytes` in bytes held (see [`cost`]); either 0 disables
    /// caching.
    pub fn new(capacity: usize, max_bytes: usize, ttl: Duration, counters: CacheCounters) -> Cache {
        let shard_count = (capacity / KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        // Spread both limits exactly: the shards add up to `capacity` and `max_bytes`.
        let share =
            |total: usize, i: usize| total / shard_count + usize::from(i < total % shard_count);
        let shards = (0..shard_count)
            .map(|i| {
                let cap = share(capacity, i);
                Mutex::new(Shard {
                    lru: LruCache::new(NonZeroUsize::new(cap.max(1)).expect("max(1)")),
                    bytes: 0,
                    max_bytes: share(max_bytes, i),
                    total: counters.bytes.clone(),
                    epoch: 0,
                })
            })
            .collect();
        Cache {
            shards,
            capacity,
            max_bytes,
            ttl,
            counters,
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        if self.shards.len() == 1 {
            return 0;
        }
        // FNV-1a: cheap, and independent of the ring's SHA-256 placement.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % self.shards.len() as u64) as usize
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding the lock cannot leave an entry half-written (every update is
        // a single assignment), so a poisoned shard is still consistent.
        self.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn enabled(&self) -> bool {
        self.capacity > 0 && self.max_bytes > 0
    }

    /// The key's latest version, if cached and fresh. Counts a hit or a miss.
    pub fn get_latest(&self, key: &str) -> Option<Versioned> {
        let found = self
            .enabled()
            .then(|| self.lookup(key, |e| e.latest.clone()));
        self.count(found.flatten())
    }

    /// Exact version `version` of the key, if cached. Counts a hit or a miss.
    pub fn get_version(&self, key: &str, version: u64) -> Option<Versioned> {
        let found = self.enabled().then(|| {
            self.lookup(key, |e| {
                e.latest
                    .iter()
                    .chain(e.exact.iter())
                    .find(|v| v.version == version)
                    .cloned()
            })
        });
        self.count(found.flatten())
    }

    fn count(&self, found: Option<Versioned>) -> Option<Versioned> {
        if found.is_some() {
            self.counters.hits.inc();
        } else {
            self.counters.misses.inc();
        }
        found
    }

    fn lookup(&self, key: &str, pick: impl Fn(&Entry) -> Option<Versioned>) -> Option<Versioned> {
        let mut shard = self.lock(self.shard_of(key));
        let entry = shard.lru.get(key)?;
        if entry.touched.elapsed() > self.ttl {
            shard.remove(key);
            return None;
        }
        pick(entry)
    }

    /// Call before reading the key from the database, to fill the cache afterwards.
    pub fn ticket(&self, key: &str) -> FillTicket {
        let shard = self.shard_of(key);
        FillTicket {
            shard,
            epoch: self.lock(shard).epoch,
        }
    }

    /// Caches `latest`, read from the database after `ticket` was taken, unless a commit to
    /// the same shard happened in between (see the module comment).
    pub fn fill_latest(&self, key: &Arc<str>, latest: Versioned, ticket: FillTicket) {
        if !self.enabled() {
            return;
        }
        let mut shard = self.lock(ticket.shard);
        if shard.epoch != ticket.epoch {
            return;
        }
        let evicted = self.upsert(&mut shard, key, |entry| {
            if entry
                .latest
                .as_ref()
                .is_none_or(|l| l.version < latest.version)
            {
                entry.latest = Some(latest);
            }
        });
        self.counters.evictions.inc_by(evicted);
    }

    /// Caches an exact version read from the database. Always safe: versions never change.
    pub fn fill_version(&self, key: &Arc<str>, value: Versioned) {
        if !self.enabled() {
            return;
        }
        let mut shard = self.lock(self.shard_of(key));
        let evicted = self.upsert(&mut shard, key, |entry| {
            let known = entry.latest.iter().chain(entry.exact.iter());
            if known.clone().any(|v| v.version == value.version) {
                return;
            }
            if entry.exact.len() == EXACT_VERSIONS_PER_KEY {
                entry.exact.remove(0);
            }
            entry.exact.push(value);
        });
        self.counters.evictions.inc_by(evicted);
    }

    /// Write-through: the writer thread calls this after `committed` is durable.
    pub fn on_commit(&self, key: &Arc<str>, committed: Versioned) {
        if !self.enabled() {
            return;
        }
        let mut shard = self.lock(self.shard_of(key));
        shard.epoch = shard.epoch.wrapping_add(1);
        let evicted = self.upsert(&mut shard, key, |entry| {
            if entry
                .latest
                .as_ref()
                .is_none_or(|l| l.version < committed.version)
            {
                entry.latest = Some(committed);
            }
            entry.touched = Instant::now();
        });
        self.counters.evictions.inc_by(evicted);
    }

    /// Forgets a key whose versions were deleted (ring clean-up). Bumping the shard epoch
    /// drops any fill from a read that started before the delete.
    pub fn evict(&self, key: &str) {
        let mut shard = self.lock(self.shard_of(key));
        shard.epoch = shard.epoch.wrapping_add(1);
        shard.remove(key);
    }

    /// Updates the key's entry (created empty if missing), then evicts least recently used
    /// keys until the shard is within both limits; answers how many were evicted. An entry
    /// over the shard's whole byte budget is dropped itself (and counted as an eviction):
    /// dropping it is always safe, the next read goes to the database.
    fn upsert(&self, shard: &mut Shard, key: &Arc<str>, update: impl FnOnce(&mut Entry)) -> u64 {
        let mut evicted = 0;
        let size = if let Some(entry) = shard.lru.get_mut(key) {
            let before = cost(key, entry);
            if entry.touched.elapsed() > self.ttl {
                *entry = Entry::empty();
            }
            update(entry);
            let after = cost(key, entry);
            shard.refund(before);
            shard.charge(after);
            after
        } else {
            let mut entry = Entry::empty();
            update(&mut entry);
            let size = cost(key, &entry);
            shard.charge(size);
            if let Some((old_key, old)) = shard.lru.push(key.clone(), entry) {
                shard.refund(cost(&old_key, &old));
                evicted += 1;
            }
            size
        };
        if size > shard.max_bytes {
            shard.remove(key);
            return evicted + 1;
        }
        while shard.bytes > shard.max_bytes {
            let Some((old_key, old)) = shard.lru.pop_lru() else {
                break;
            };
            shard.refund(cost(&old_key, &old));
            evicted += 1;
        }
        evicted
    }

    pub fn snapshot(&self) -> CacheSnapshot {
        let (mut current_size, mut current_bytes) = (0, 0);
        for i in 0..self.shards.len() {
            let shard = self.lock(i);
            current_size += shard
                .lru
                .iter()
                .filter(|(_, e)| e.touched.elapsed() <= self.ttl)
                .count() as u64;
            current_bytes += shard.bytes as u64;
        }
        CacheSnapshot {
            current_size,
            max_size: self.capacity as u64,
            current_bytes,
            max_bytes: self.max_bytes as u64,
            ttl: self.ttl,
            hits: self.counters.hits.get(),
            misses: self.counters.misses.get(),
            evictions: self.counters.evictions.get(),
        }
    }
}

impl Shard {
    fn remove(&mut self, key: &str) {
        if let Some((old_key, old)) = self.lru.pop_entry(key) {
            self.refund(cost(&old_key, &old));
        }
    }

    fn charge(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.total.inc_by(bytes as i64);
    }

    fn refund(&mut self, bytes: usize) {
        self.bytes -= bytes;
        self.total.dec_by(bytes as i64);
    }
}

/// Bytes charged for a cached key: its text, its values' text and the bookkeeping estimates.
fn cost(key: &str, entry: &Entry) -> usize {
    let versions = entry.latest.iter().chain(entry.exact.iter());
    ENTRY_OVERHEAD
        + key.len()
        + versions
            .map(|v| VERSION_OVERHEAD + v.value.len())
            .sum::<usize>()
}

impl Entry {
    fn empty() -> Entry {
        Entry {
            latest: None,
            exact: Vec::new(),
            touched: Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: u64) -> Versioned {
        Versioned {
            version,
            value: Arc::from(format!("{version}")),
            timestamp: version as f64,
        }
    }

    fn cache(capacity: usize) -> Cache {
        Cache::new(
            capacity,
            usize::MAX,
            Duration::from_secs(1800),
            CacheCounters::default(),
        )
    }

    #[test]
    fn an_exact_read_never_becomes_the_latest() {
        // The seed's stale-read bug: after reading version 1, "latest" answered version 1.
        let c = cache(10);
        let k: Arc<str> = Arc::from("k");
        c.on_commit(&k, v(1));
        c.on_commit(&k, v(2));
        c.fill_version(&k, v(1));
        assert_eq!(c.get_latest("k").unwrap().version, 2);
        assert_eq!(c.get_version("k", 1).unwrap().version, 1);
    }

    #[test]
    fn latest_only_moves_forward() {
        let c = cache(10);
        let k: Arc<str> = Arc::from("k");
        c.on_commit(&k, v(3));
        let t = c.ticket("k");
        c.fill_latest(&k, v(2), t);
        assert_eq!(c.get_latest("k").unwrap().version, 3);
    }

    #[test]
    fn a_fill_racing_a_commit_is_dropped_even_if_the_commit_was_evicted() {
        let c = cache(1);
        let k: Arc<str> = Arc::from("k");
        let other: Arc<str> = Arc::from("other");
        let ticket = c.ticket("k"); // reader is about to read version 1 from SQLite
        c.on_commit(&k, v(2)); // meanwhile version 2 commits...
        c.on_commit(&other, v(1)); // ...and is evicted by another key
        c.fill_latest(&k, v(1), ticket); // the stale read must not land
        assert_eq!(c.get_latest("k"), None);
    }

    #[test]
    fn least_recently_used_key_is_evicted_and_counted() {
        let c = cache(2);
        for key in ["a", "b"] {
            c.on_commit(&Arc::from(key), v(1));
        }
        assert!(c.get_latest("a").is_some()); // "b" is now least recently used
        c.on_commit(&Arc::from("c"), v(1));
        assert!(c.get_latest("b").is_none());
        assert!(c.get_latest("a").is_some());
        let s = c.snapshot();
        assert_eq!((s.current_size, s.max_size, s.evictions), (2, 2, 1));
        assert_eq!((s.hits, s.misses), (2, 1));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let c = Cache::new(
            10,
            usize::MAX,
            Duration::from_millis(0),
            CacheCounters::default(),
        );
        c.on_commit(&Arc::from("k"), v(1));
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.get_latest("k").is_none());
        assert_eq!(c.snapshot().current_size, 0);
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let c = cache(0);
        c.on_commit(&Arc::from("k"), v(1));
        assert!(c.get_latest("k").is_none());
        assert_eq!(c.snapshot().current_size, 0);
    }

    fn text(len: usize) -> Versioned {
        Versioned {
            version: 1,
            value: Arc::from("x".repeat(len)),
            timestamp: 1.0,
        }
    }

    fn bytes_cache(max_bytes: usize) -> Cache {
        Cache::new(
            100,
            max_bytes,
            Duration::from_secs(1800),
            CacheCounters::default(),
        )
    }

    #[test]
    fn the_overhead_estimates_cover_the_types_they_stand_for() {
        use std::mem::size_of;
        let arc_counts = 2 * size_of::<usize>();
        // The node: key, entry, two links; the map: a pointer and a control byte; the key's
        // allocation: its counts.
        let node = size_of::<Arc<str>>() + size_of::<Entry>() + 2 * size_of::<usize>();
        assert!(
            node + size_of::<usize>() + 1 + arc_counts <= ENTRY_OVERHEAD,
            "{node}"
        );
        assert!(size_of::<Versioned>() + arc_counts <= VERSION_OVERHEAD);
    }

    #[test]
    fn the_byte_budget_evicts_least_recently_used_keys() {
        // Each entry: 160 + 1 (key) + 56 + 1000 = 1217 bytes; three fit in 4000, four do not.
        let c = bytes_cache(4000);
        for key in ["a", "b", "c"] {
            c.on_commit(&Arc::from(key), text(1000));
        }
        assert_eq!(c.snapshot().current_bytes, 3 * 1217);
        assert!(c.get_latest("a").is_some()); // "b" is now least recently used
        c.on_commit(&Arc::from("d"), text(1000));
        assert!(c.get_latest("b").is_none());
        for key in ["a", "c", "d"] {
            assert!(c.get_latest(key).is_some(), "{key}");
        }
        let s = c.snapshot();
        assert_eq!(
            (s.current_size, s.current_bytes, s.max_bytes, s.evictions),
            (3, 3651, 4000, 1)
        );
        assert_eq!(c.counters.bytes.get(), 3651, "the /metrics gauge follows");
    }

    #[test]
    fn growing_an_entry_counts_its_new_size_and_can_evict_others() {
        let c = bytes_cache(4000);
        let k: Arc<str> = Arc::from("k");
        c.on_commit(&Arc::from("other"), text(1000)); // 160 + 5 + 56 + 1000 = 1221
        c.on_commit(&k, v(1)); // 160 + 1 + 56 + 1 = 218
        c.fill_version(
            &k,
            Versioned {
                version: 3,
                ..text(2000)
            },
        ); // + 56 + 2000
        assert_eq!(c.snapshot().current_bytes, 1221 + 218 + 2056);
        c.fill_version(
            &k,
            Versioned {
                version: 2,
                ..text(1000)
            },
        ); // + 1056: over 4000
        assert!(
            c.get_latest("other").is_none(),
            "the least recently used key made room"
        );
        assert_eq!(c.get_latest("k").unwrap().version, 1);
        assert_eq!(c.snapshot().current_bytes, 218 + 2056 + 1056);
    }

    #[test]
    fn an_entry_over_the_budget_is_not_cached_and_does_not_flush_the_rest() {
        let c = bytes_cache(4000);
        let k: Arc<str> = Arc::from("k");
        c.on_commit(&Arc::from("small"), text(10));
        c.on_commit(&k, v(1));
        c.on_commit(
            &k,
            Versioned {
                version: 2,
                ..text(5000)
            },
        );
        // Version 1 must not be answered as the latest once version 2 committed.
        assert_eq!(c.get_latest("k"), None);
        assert!(c.get_latest("small").is_some());
        let s = c.snapshot();
        assert_eq!(
            (s.current_size, s.current_bytes, s.evictions),
            (1, 160 + 5 + 56 + 10, 1)
        );
    }

    #[test]
    fn removing_keys_gives_their_bytes_back() {
        let c = Cache::new(
            100,
            1 << 20,
            Duration::from_millis(0),
            CacheCounters::default(),
        );
        c.on_commit(&Arc::from("gone"), text(100));
        c.on_commit(&Arc::from("expired"), text(100));
        c.evict("gone");
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.get_latest("expired").is_none()); // the expired entry is dropped on lookup
        assert_eq!(c.snapshot().current_bytes, 0);
        assert_eq!(c.counters.bytes.get(), 0);
    }

    #[test]
    fn a_zero_byte_budget_disables_the_cache() {
        let c = bytes_cache(0);
        c.on_commit(&Arc::from("k"), v(1));
        assert!(c.get_latest("k").is_none());
        assert_eq!(c.snapshot().current_bytes, 0);
    }

    #[derive(Debug, Clone)]
    enum CacheOp {
        Commit(u8, u64, usize),
        FillLatest(u8, u64, usize),
        FillVersion(u8, u64, usize),
        Evict(u8),
        Get(u8),
    }

    fn cache_op() -> impl proptest::strategy::Strategy<Value = CacheOp> {
        use proptest::prelude::*;
        let key = 0u8..12;
        let size = prop_oneof![0usize..50, 200usize..3000];
        prop_oneof![
            (key.clone(), 1u64..6, size.clone()).prop_map(|(k, v, n)| CacheOp::Commit(k, v, n)),
            (key.clone(), 1u64..6, size.clone()).prop_map(|(k, v, n)| CacheOp::FillLatest(k, v, n)),
            (key.clone(), 1u64..6, size).prop_map(|(k, v, n)| CacheOp::FillVersion(k, v, n)),
            key.clone().prop_map(CacheOp::Evict),
            key.prop_map(CacheOp::Get),
        ]
    }

    proptest::proptest! {
        /// Whatever happens, each shard's byte count is what its entries cost, within its
        /// budget, and the gauge is the sum; the key count stays within its limit too.
        #[test]
        fn byte_accounting_matches_the_entries(
            ops in proptest::collection::vec(cache_op(), 1..120),
            capacity in 1usize..3000,
            max_bytes in 1usize..8000,
        ) {
            let c = Cache::new(capacity, max_bytes, Duration::from_secs(60), CacheCounters::default());
            for op in ops {
                let value = |version, len| Versioned { version, ..text(len) };
                match op {
                    CacheOp::Commit(k, v, n) => c.on_commit(&Arc::from(format!("k{k}")), value(v, n)),
                    CacheOp::FillLatest(k, v, n) => {
                        let key: Arc<str> = Arc::from(format!("k{k}"));
                        let ticket = c.ticket(&key);
                        c.fill_latest(&key, value(v, n), ticket);
                    }
                    CacheOp::FillVersion(k, v, n) => c.fill_version(&Arc::from(format!("k{k}")), value(v, n)),
                    CacheOp::Evict(k) => c.evict(&format!("k{k}")),
                    CacheOp::Get(k) => {
                        c.get_latest(&format!("k{k}"));
                    }
                }
                let mut total = 0;
                for shard in c.shards.iter() {
                    let shard = shard.lock().unwrap();
                    let held: usize = shard.lru.iter().map(|(k, e)| cost(k, e)).sum();
                    proptest::prop_assert_eq!(shard.bytes, held);
                    proptest::prop_assert!(shard.bytes <= shard.max_bytes);
                    total += shard.bytes;
                }
                proptest::prop_assert_eq!(c.counters.bytes.get(), total as i64);
                proptest::prop_assert!(c.snapshot().current_size <= capacity as u64);
            }
        }
    }

    #[test]
    fn large_caches_are_sharded_with_exact_total_capacity() {
        let c = cache(5000);
        assert_eq!(c.shards.len(), 4);
        let total: usize = c
            .shards
            .iter()
            .map(|s| s.lock().unwrap().lru.cap().get())
            .sum();
        assert_eq!(total, 5000);
        let c = Cache::new(5000, 1001, Duration::from_secs(1), CacheCounters::default());
        let bytes: usize = c.shards.iter().map(|s| s.lock().unwrap().max_bytes).sum();
        assert_eq!(bytes, 1001);
    }
}
