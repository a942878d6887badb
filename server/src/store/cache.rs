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
//! Why shards of `std::sync::Mutex`: every lookup mutates LRU order, so a read lock would not
//! help; critical sections are a hash and a few pointer moves, never IO or `.await`. Small
//! caches use one shard, so their eviction order is exact LRU as the seed documents; large
//! ones split into up to 16 shards, each an exact LRU over its share of the capacity.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use prometheus_client::metrics::counter::Counter;

use super::model::Versioned;

/// Older versions kept per cached key, besides the latest.
const EXACT_VERSIONS_PER_KEY: usize = 4;
/// Keys per shard below which sharding does not pay.
const KEYS_PER_SHARD: usize = 1024;
const MAX_SHARDS: usize = 16;

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
    /// Bumped by every commit that lands in this shard.
    epoch: u64,
}

/// Hit, miss and eviction counters, shared with `/metrics`.
#[derive(Clone, Default, Debug)]
pub struct CacheCounters {
    pub hits: Counter,
    pub misses: Counter,
    pub evictions: Counter,
}

/// Snapshot for `/cache/stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSnapshot {
    pub current_size: u64,
    pub max_size: u64,
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
    ttl: Duration,
    counters: CacheCounters,
}

impl Cache {
    /// `capacity` is in keys; 0 disables caching.
    pub fn new(capacity: usize, ttl: Duration, counters: CacheCounters) -> Cache {
        let shard_count = (capacity / KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        let shards = (0..shard_count)
            .map(|i| {
                // Spread the capacity exactly: the shards add up to `capacity`.
                let cap = capacity / shard_count + usize::from(i < capacity % shard_count);
                Mutex::new(Shard {
                    lru: LruCache::new(NonZeroUsize::new(cap.max(1)).expect("max(1)")),
                    epoch: 0,
                })
            })
            .collect();
        Cache {
            shards,
            capacity,
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
        self.capacity > 0
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
            shard.lru.pop(key);
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
        self.note_eviction(evicted);
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
        self.note_eviction(evicted);
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
        self.note_eviction(evicted);
    }

    /// Forgets a key whose versions were deleted (ring clean-up). Bumping the shard epoch
    /// drops any fill from a read that started before the delete.
    pub fn evict(&self, key: &str) {
        let mut shard = self.lock(self.shard_of(key));
        shard.epoch = shard.epoch.wrapping_add(1);
        shard.lru.pop(key);
    }

    /// Updates the key's entry (created empty if missing); returns whether another key had to
    /// be evicted to make room.
    fn upsert(&self, shard: &mut Shard, key: &Arc<str>, update: impl FnOnce(&mut Entry)) -> bool {
        if let Some(entry) = shard.lru.get_mut(key) {
            if entry.touched.elapsed() > self.ttl {
                *entry = Entry::empty();
            }
            update(entry);
            return false;
        }
        let mut entry = Entry::empty();
        update(&mut entry);
        shard.lru.push(key.clone(), entry).is_some()
    }

    fn note_eviction(&self, evicted: bool) {
        if evicted {
            self.counters.evictions.inc();
        }
    }

    pub fn snapshot(&self) -> CacheSnapshot {
        let current_size = (0..self.shards.len())
            .map(|i| {
                let shard = self.lock(i);
                shard
                    .lru
                    .iter()
                    .filter(|(_, e)| e.touched.elapsed() <= self.ttl)
                    .count() as u64
            })
            .sum();
        CacheSnapshot {
            current_size,
            max_size: self.capacity as u64,
            ttl: self.ttl,
            hits: self.counters.hits.get(),
            misses: self.counters.misses.get(),
            evictions: self.counters.evictions.get(),
        }
    }
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
        let c = Cache::new(10, Duration::from_millis(0), CacheCounters::default());
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
    }
}
