//! The writer's memory of the latest committed version of recently written keys, so a put
//! of a hot key skips a `SELECT MAX(version)`. A miss only costs that lookup, so the bound
//! is what matters: at most [`MAX_ENTRIES`] keys and [`MAX_BYTES`] of key text, whichever is
//! reached first (keys may be 1 KiB each; a count alone would let 64k of them hold 64 MiB).

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

/// Most keys remembered.
pub const MAX_ENTRIES: usize = 65_536;
/// Most bytes of key text remembered, plus [`ENTRY_OVERHEAD`] per key.
pub const MAX_BYTES: usize = 8 << 20;
/// What an entry costs beside its key's text: the `Arc` header, the LRU's node and hash slot,
/// the version. An estimate; it only has to keep the bound honest for short keys.
const ENTRY_OVERHEAD: usize = 64;

pub struct KnownLatest {
    lru: LruCache<Arc<str>, u64>,
    bytes: usize,
    max_bytes: usize,
}

impl Default for KnownLatest {
    fn default() -> KnownLatest {
        KnownLatest::new(MAX_ENTRIES, MAX_BYTES)
    }
}

impl KnownLatest {
    pub fn new(max_entries: usize, max_bytes: usize) -> KnownLatest {
        KnownLatest {
            lru: LruCache::new(NonZeroUsize::new(max_entries.max(1)).expect("non-zero")),
            bytes: 0,
            max_bytes,
        }
    }

    /// The remembered latest version of `key`, marking it recently used.
    pub fn get(&mut self, key: &str) -> Option<u64> {
        self.lru.get(key).copied()
    }

    /// Remembers `version` as the latest of `key`, evicting the least recently used keys
    /// while over either bound.
    pub fn put(&mut self, key: Arc<str>, version: u64) {
        let added = cost(&key);
        if added > self.max_bytes {
            self.pop(&key);
            return;
        }
        if let Some(known) = self.lru.get_mut(&*key) {
            *known = version;
            return;
        }
        // At the entry bound, `push` evicts the least recently used key and hands it back.
        if let Some((evicted, _)) = self.lru.push(key, version) {
            self.bytes -= cost(&evicted);
        }
        self.bytes += added;
        while self.bytes > self.max_bytes {
            match self.lru.pop_lru() {
                Some((evicted, _)) => self.bytes -= cost(&evicted),
                None => break,
            }
        }
    }

    /// Forgets `key` (its versions were deleted).
    pub fn pop(&mut self, key: &str) {
        if let Some((evicted, _)) = self.lru.pop_entry(key) {
            self.bytes -= cost(&evicted);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// What the remembered keys cost, by the estimate the bound uses.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

fn cost(key: &str) -> usize {
    key.len() + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Arc<str> {
        text.into()
    }

    #[test]
    fn long_keys_are_bounded_by_bytes_and_short_ones_by_count() {
        // Room for 3 keys of 1 KiB, or 10 short ones.
        let mut known = KnownLatest::new(10, 3 * cost(&"x".repeat(1024)));
        for i in 0..5 {
            known.put(key(&format!("{i}{}", "x".repeat(1023))), i);
        }
        assert_eq!(known.len(), 3);
        assert!(known.bytes() <= 3 * cost(&"x".repeat(1024)));
        // The least recently used went first.
        assert_eq!(known.get(&format!("0{}", "x".repeat(1023))), None);
        assert_eq!(known.get(&format!("4{}", "x".repeat(1023))), Some(4));

        let mut known = KnownLatest::new(10, 1 << 20);
        for i in 0..25 {
            known.put(key(&format!("k{i}")), i);
        }
        assert_eq!(known.len(), 10);
        assert_eq!(
            known.bytes(),
            (15..25).map(|i| cost(&format!("k{i}"))).sum::<usize>()
        );
        assert_eq!(known.get("k14"), None);
        assert_eq!(known.get("k24"), Some(24));
    }

    #[test]
    fn updating_a_key_counts_it_once_and_popping_gives_its_bytes_back() {
        let mut known = KnownLatest::new(10, 1 << 20);
        known.put(key("a"), 1);
        known.put(key("a"), 2);
        known.put(key("bb"), 7);
        assert_eq!(known.get("a"), Some(2));
        assert_eq!(known.bytes(), cost("a") + cost("bb"));
        known.pop("a");
        known.pop("missing");
        assert_eq!(known.get("a"), None);
        assert_eq!(known.bytes(), cost("bb"));
    }

    #[test]
    fn a_key_larger_than_the_budget_is_not_remembered() {
        let mut known = KnownLatest::new(10, 100);
        known.put(key("small"), 1);
        known.put(key(&"y".repeat(200)), 3);
        assert_eq!(known.get(&"y".repeat(200)), None);
        assert_eq!(known.get("small"), Some(1));
    }
}
