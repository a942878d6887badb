//! The consistent-hash ring: which member owns a key. Pure data, no IO.
//!
//! Placement is the seed's, bit for bit, so a seed user who keeps the same server names keeps
//! the same placement: virtual node `i` of member `m` sits at `sha256("{m}#{i}")`, a key at
//! `sha256(key)` (UTF-8), both compared as 256-bit big-endian numbers (which is exactly the
//! lexicographic order of the 32-byte digests), and a key belongs to the first point at or
//! after it, wrapping to the first point.
//!
//! A ring is immutable. Membership changes build a new one (see `membership`), so a request
//! always sees one whole ring.

use sha2::{Digest, Sha256};

/// Virtual nodes per member unless configured: the seed's value, needed for its placement.
pub const DEFAULT_VNODES: usize = 150;

type Hash = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Point {
    hash: Hash,
    /// Index into `Ring::members`.
    member: u32,
}

/// An immutable SHA-256 consistent-hash ring.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Sorted by hash, then by member name, so that every gateway replica given the same set
    /// of names builds the same ring whatever order it learned them in.
    points: Vec<Point>,
    /// Member names, sorted and unique.
    members: Vec<String>,
    vnodes: usize,
}

impl Ring {
    /// Builds the ring of `members` (duplicates ignored) with `vnodes` points each.
    pub fn new<I, S>(members: I, vnodes: usize) -> Ring
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut members: Vec<String> = members.into_iter().map(Into::into).collect();
        members.sort();
        members.dedup();
        let mut points = Vec::with_capacity(members.len() * vnodes);
        for (index, name) in members.iter().enumerate() {
            let member = u32::try_from(index).expect("fewer than 2^32 members");
            for i in 0..vnodes {
                points.push(Point {
                    hash: sha256(format!("{name}#{i}").as_bytes()),
                    member,
                });
            }
        }
        // Members are sorted, so ordering ties by index orders them by name.
        points.sort_unstable_by(|a, b| a.hash.cmp(&b.hash).then(a.member.cmp(&b.member)));
        Ring {
            points,
            members,
            vnodes,
        }
    }

    /// The member owning `key`, or `None` for an empty ring.
    pub fn owner(&self, key: &str) -> Option<&str> {
        let hash = sha256(key.as_bytes());
        let index = self.points.partition_point(|p| p.hash < hash);
        let point = self.points.get(index).or_else(|| self.points.first())?;
        Some(&self.members[point.member as usize])
    }

    /// The key's preference list: the first `r` distinct members clockwise from the key (all
    /// members when there are fewer than `r`). The first is the key's primary, the owner
    /// [`Ring::owner`] names; the others hold its replicas. Empty for an empty ring.
    ///
    /// One binary search, then a walk that stops as soon as `r` members are found: a few
    /// points per member in practice, the whole ring at worst.
    pub fn preference_list(&self, key: &str, r: usize) -> Vec<&str> {
        let want = r.min(self.members.len());
        let mut found: Vec<&str> = Vec::with_capacity(want);
        if want == 0 {
            return found;
        }
        let hash = sha256(key.as_bytes());
        let start = self.points.partition_point(|p| p.hash < hash);
        let mut seen = vec![false; self.members.len()];
        for offset in 0..self.points.len() {
            let point = &self.points[(start + offset) % self.points.len()];
            let member = point.member as usize;
            if !seen[member] {
                seen[member] = true;
                found.push(&self.members[member]);
                if found.len() == want {
                    break;
                }
            }
        }
        found
    }

    /// Whether `name` is one of the `r` members holding `key`.
    pub fn replicates(&self, name: &str, key: &str, r: usize) -> bool {
        self.preference_list(key, r).contains(&name)
    }

    /// Member names, sorted.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    pub fn contains(&self, name: &str) -> bool {
        self.members
            .binary_search_by(|m| m.as_str().cmp(name))
            .is_ok()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn vnodes(&self) -> usize {
        self.vnodes
    }

    /// Each member's share of the hash space, in member order; sums to 1 for a non-empty ring.
    ///
    /// Uses the top 128 bits of each point: exact enough for a share, and cheap.
    pub fn shares(&self) -> Vec<(&str, f64)> {
        if self.members.len() == 1 {
            return vec![(self.members[0].as_str(), 1.0)];
        }
        let whole = 2f64.powi(128);
        let top = |h: &Hash| u128::from_be_bytes(h[..16].try_into().expect("16 bytes"));
        let mut shares = vec![0f64; self.members.len()];
        for (i, point) in self.points.iter().enumerate() {
            let previous = if i == 0 {
                self.points.last().expect("non-empty")
            } else {
                &self.points[i - 1]
            };
            // A point owns the arc after its predecessor up to itself; wrapping arithmetic
            // handles the arc that crosses zero.
            let arc = top(&point.hash).wrapping_sub(top(&previous.hash));
            shares[point.member as usize] += arc as f64 / whole;
        }
        self.members
            .iter()
            .map(String::as_str)
            .zip(shares)
            .collect()
    }
}

fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SEED: [&str; 2] = ["server-1:8080", "server-2:8080"];

    fn counts(ring: &Ring, keys: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for i in 0..keys {
            *counts
                .entry(ring.owner(&format!("key{i}")).unwrap().to_owned())
                .or_default() += 1;
        }
        counts
    }

    #[test]
    fn vnode_hash_matches_the_seed() {
        let hash = hex::encode(sha256(b"server-1:8080#0"));
        assert!(hash.starts_with("bdc0e3e4bfe7f241"), "{hash}");
    }

    #[test]
    fn seed_ring_has_300_unique_points_with_the_seed_extremes() {
        let ring = Ring::new(SEED, DEFAULT_VNODES);
        assert_eq!(ring.points.len(), 300);
        assert!(ring.points.windows(2).all(|w| w[0].hash < w[1].hash));
        assert!(hex::encode(ring.points[0].hash).starts_with("0075baa4ed443487"));
        assert!(hex::encode(ring.points[299].hash).starts_with("feeb6da22a5488b4"));
    }

    #[test]
    fn keys_land_where_the_seed_puts_them() {
        let ring = Ring::new(SEED, DEFAULT_VNODES);
        let long = "x".repeat(100);
        for key in [
            "baz",
            "hello",
            "user:2",
            "k2",
            "key3",
            "with space",
            "été",
            "bench",
            &long,
        ] {
            assert_eq!(ring.owner(key), Some("server-1:8080"), "{key}");
        }
        for key in [
            "mykey", "foo", "bar", "user:1", "a", "b", "c", "k0", "k1", "key1", "key2",
        ] {
            assert_eq!(ring.owner(key), Some("server-2:8080"), "{key}");
        }
        let counts = counts(&ring, 10_000);
        assert_eq!(counts["server-1:8080"], 4974);
        assert_eq!(counts["server-2:8080"], 5026);
    }

    #[test]
    fn local_run_vectors_and_member_order_does_not_matter() {
        let ring = Ring::new(["127.0.0.1:18082", "127.0.0.1:18081"], DEFAULT_VNODES);
        let counts = counts(&ring, 10_000);
        assert_eq!(counts["127.0.0.1:18081"], 5117);
        assert_eq!(counts["127.0.0.1:18082"], 4883);
        assert_eq!(ring.owner("user:1"), Some("127.0.0.1:18081"));
        assert_eq!(ring.owner("mykey"), Some("127.0.0.1:18082"));
    }

    #[test]
    fn empty_ring_owns_nothing_and_one_member_owns_everything() {
        assert_eq!(Ring::new(Vec::<String>::new(), 150).owner("k"), None);
        let ring = Ring::new(["only"], 1);
        assert_eq!(ring.owner("k"), Some("only"));
        assert_eq!(ring.shares(), vec![("only", 1.0)]);
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("kv-server-{i}")).collect()
    }

    /// The most loaded member's keys over the mean, for 100k keys.
    fn max_over_mean(n: usize, vnodes: usize) -> f64 {
        let counts = counts(&Ring::new(names(n), vnodes), 100_000);
        *counts.values().max().unwrap() as f64 / (100_000.0 / n as f64)
    }

    #[test]
    fn load_is_balanced() {
        // The seed's 150 virtual nodes cannot promise 1.10x for every member count (5 members
        // reach ~1.18x); 500 can. 150 stays the default because it is the seed's placement.
        for n in [3, 5, 10] {
            let ratio = max_over_mean(n, 500);
            assert!(ratio <= 1.10, "{n} members, 500 vnodes: {ratio}");
            let ratio = max_over_mean(n, DEFAULT_VNODES);
            assert!(ratio <= 1.20, "{n} members, 150 vnodes: {ratio}");
        }
    }

    #[test]
    fn adding_a_member_moves_about_its_share_and_only_onto_it() {
        for n in [3, 5] {
            let before = Ring::new(names(n), DEFAULT_VNODES);
            let after = Ring::new(names(n + 1), DEFAULT_VNODES);
            let new = format!("kv-server-{n}");
            let mut moved = 0;
            for i in 0..100_000 {
                let key = format!("key{i}");
                let (old, now) = (before.owner(&key).unwrap(), after.owner(&key).unwrap());
                if old != now {
                    assert_eq!(now, new, "{key} moved between old members");
                    moved += 1;
                }
            }
            let expected = 100_000.0 / (n + 1) as f64;
            let ratio = moved as f64 / expected;
            assert!(
                (0.75..=1.25).contains(&ratio),
                "{n}->{}: moved {moved}",
                n + 1
            );
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let before = Ring::new(names(4), DEFAULT_VNODES);
        let after = Ring::new(
            names(4).into_iter().filter(|m| m != "kv-server-2"),
            DEFAULT_VNODES,
        );
        for i in 0..50_000 {
            let key = format!("key{i}");
            let (old, now) = (before.owner(&key).unwrap(), after.owner(&key).unwrap());
            if old != "kv-server-2" {
                assert_eq!(old, now, "{key} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn preference_lists_start_at_the_owner_and_hold_distinct_members() {
        let ring = Ring::new(names(5), DEFAULT_VNODES);
        for i in 0..2_000 {
            let key = format!("key{i}");
            let list = ring.preference_list(&key, 3);
            assert_eq!(list.len(), 3, "{key}");
            assert_eq!(Some(list[0]), ring.owner(&key), "{key}");
            let mut unique = list.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 3, "{key}: {list:?}");
            // A shorter list is a prefix of a longer one: R can grow without moving primaries.
            assert_eq!(ring.preference_list(&key, 2), list[..2], "{key}");
            assert!(ring.replicates(list[2], &key, 3) && !ring.replicates(list[2], &key, 2));
        }
        // Asking for more members than exist gives all of them, once each.
        let mut all = ring.preference_list("k", 9);
        all.sort();
        assert_eq!(all, names(5));
        assert!(ring.preference_list("k", 0).is_empty());
        assert!(
            Ring::new(Vec::<String>::new(), 3)
                .preference_list("k", 3)
                .is_empty()
        );
    }

    #[test]
    fn preference_lists_follow_the_ring_clockwise() {
        // The second member of a list is the owner of the first point after the primary's
        // run of points: checked against a brute-force walk over the seed ring.
        let ring = Ring::new(SEED, DEFAULT_VNODES);
        for key in ["mykey", "baz", "été"] {
            let list = ring.preference_list(key, 2);
            let mut other: Vec<&str> = SEED.to_vec();
            other.retain(|m| *m != list[0]);
            assert_eq!(list[1], other[0], "{key}");
        }
        // Each member is a replica of about R/n of the keys.
        let ring = Ring::new(names(4), DEFAULT_VNODES);
        let held = (0..20_000)
            .filter(|i| ring.replicates("kv-server-1", &format!("key{i}"), 2))
            .count() as f64;
        assert!((0.40..=0.60).contains(&(held / 20_000.0)), "{held}");
    }

    #[test]
    fn shares_sum_to_one_and_track_the_key_counts() {
        let ring = Ring::new(SEED, DEFAULT_VNODES);
        let shares = ring.shares();
        let total: f64 = shares.iter().map(|(_, s)| s).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let counts = counts(&ring, 10_000);
        for (name, share) in shares {
            let observed = counts[name] as f64 / 10_000.0;
            assert!(
                (observed - share).abs() < 0.03,
                "{name}: {observed} vs {share}"
            );
        }
        assert!(ring.contains("server-1:8080") && !ring.contains("server-3:8080"));
    }
}
