//! The ring configuration as data (docs/rebalancing.md): which servers own key ranges in which
//! epoch, and the transition from one configuration to the next. Servers store it, gateways
//! route by it, the coordinator (`kv-rebalance`, driven by `kvstore ring` or the operator)
//! moves clusters from one to the next. Pure data and rules, no IO.
//!
//! States are totally ordered ([`RingState::order`]) and a server only ever moves forward,
//! so a state learned twice, late, or from a peer instead of the coordinator does no harm.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ring::Ring;

/// Request header, gateway -> server: the epoch of the ring the gateway routed by. A server
/// with a newer current epoch answers `409 stale_ring` (with its ring), one with an older
/// epoch `503 ring_behind`. Absent (direct clients, gateways without a ring configuration):
/// no check.
pub const RING_EPOCH_HEADER: &str = "x-kv-ring-epoch";

/// One server of a ring configuration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct RingMember {
    /// The name placed on the ring.
    pub name: String,
    /// Where servers and gateways reach it: `http://host:port`.
    pub url: String,
}

/// Which servers own key ranges in one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RingConfig {
    /// Grows by at least one with every new configuration. 0 is the configuration a server
    /// derives from its flags (`--peers`) before any was applied.
    pub epoch: u64,
    /// Sorted by name, names unique.
    pub members: Vec<RingMember>,
    pub vnodes: usize,
    /// Servers holding each key, as configured; [`RingConfig::factor`] is what is in force.
    pub replication_factor: usize,
}

impl RingConfig {
    /// A configuration with `members` sorted and checked.
    pub fn new(
        epoch: u64,
        mut members: Vec<RingMember>,
        vnodes: usize,
        replication_factor: usize,
    ) -> Result<RingConfig, String> {
        members.sort();
        let config = RingConfig {
            epoch,
            members,
            vnodes,
            replication_factor,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.members.is_empty() {
            return Err(format!("ring epoch {} has no members", self.epoch));
        }
        if self.vnodes == 0 || self.replication_factor == 0 {
            return Err("vnodes and replication factor must be at least 1".into());
        }
        let mut names = BTreeSet::new();
        for (i, member) in self.members.iter().enumerate() {
            if member.name.is_empty() || !names.insert(member.name.as_str()) {
                return Err(format!(
                    "member name '{}' is empty or repeated",
                    member.name
                ));
            }
            if i > 0 && self.members[i - 1].name > member.name {
                return Err("members must be sorted by name".into());
            }
            if !member.url.starts_with("http://") {
                return Err(format!(
                    "member '{}': URL must start with http://",
                    member.name
                ));
            }
        }
        Ok(())
    }

    /// Builds the hash ring (150 vnodes: about 1 ms per member; callers keep it).
    pub fn ring(&self) -> Ring {
        Ring::new(self.members.iter().map(|m| m.name.clone()), self.vnodes)
    }

    /// The replication factor in force: never more than the members.
    pub fn factor(&self) -> usize {
        self.replication_factor.min(self.members.len()).max(1)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.members.iter().any(|m| m.name == name)
    }

    pub fn url_of(&self, name: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.url.as_str())
    }

    pub fn names(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.name.as_str()).collect()
    }

    /// Same owners for every key: same names, vnodes and factor (URLs may differ).
    pub fn same_placement(&self, other: &RingConfig) -> bool {
        self.vnodes == other.vnodes
            && self.factor() == other.factor()
            && self.names() == other.names()
    }
}

/// A server's (or the cluster's) ring state: the configuration in force and, during a
/// transition, the one being moved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RingState {
    /// Routes every request: primaries assign versions by it.
    pub current: RingConfig,
    /// Announced, not in force: its new replicas copy their keys and get every new version
    /// too (dual write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<RingConfig>,
    /// With `next`: writes of keys whose primary differs between `current` and `next` are
    /// refused (`503 rebalancing`) so the new primary can take everything the old one holds.
    #[serde(default)]
    pub frozen: bool,
}

impl RingState {
    pub fn stable(current: RingConfig) -> RingState {
        RingState {
            current,
            next: None,
            frozen: false,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.current.validate()?;
        match &self.next {
            Some(next) => {
                next.validate()?;
                if next.epoch <= self.current.epoch {
                    return Err(format!(
                        "next epoch {} must be above the current {}",
                        next.epoch, self.current.epoch
                    ));
                }
            }
            None if self.frozen => return Err("frozen without a next ring".into()),
            None => {}
        }
        Ok(())
    }

    /// The total order of states: a server adopts a state only if it is above its own.
    /// Announcing (or replacing) `next`, freezing, then committing each move it up.
    pub fn order(&self) -> (u64, u64, bool) {
        (
            self.current.epoch,
            self.next.as_ref().map_or(0, |n| n.epoch),
            self.frozen,
        )
    }

    /// The highest epoch this state names.
    pub fn latest_epoch(&self) -> u64 {
        self.next.as_ref().map_or(self.current.epoch, |n| n.epoch)
    }

    /// Every member of `current` and `next`, by name, with the newest URL known.
    pub fn all_members(&self) -> Vec<RingMember> {
        let mut out: Vec<RingMember> = self.next.iter().flat_map(|n| n.members.clone()).collect();
        for member in &self.current.members {
            if !out.iter().any(|m| m.name == member.name) {
                out.push(member.clone());
            }
        }
        out.sort();
        out
    }
}

/// `GET /internal/ring`: a server's ring state and how far it is with the transition.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RingView {
    /// The answering server.
    pub name: String,
    pub state: RingState,
    /// With `next`: since this server learned `next`, it pulled every peer's changes from the
    /// start to the head (so it holds every version, acknowledged before it learned `next`,
    /// of the keys it holds under `next`; later ones reach it by dual write and catch-up).
    pub copied: bool,
    /// False while this server's database is not complete for `current` (new database, or a
    /// ring it missed): it serves no key as primary meanwhile.
    pub synced: bool,
    /// This server's newest change sequence.
    pub head: u64,
    /// Versions stored by catch-up since `next` was learned (progress of the copy).
    pub copied_versions: u64,
    /// A new `current` was adopted and `POST /internal/cleanup` has not run since: this
    /// server may still hold keys it no longer owns.
    #[serde(default)]
    pub cleanup_pending: bool,
    /// While frozen: this server's head when it took the freeze. Every version of a key whose
    /// primary moves that this server holds is at or below it; writes of other keys go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_head: Option<u64>,
}

/// `POST /internal/cleanup` answer: versions of keys this server no longer holds, deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CleanupReport {
    pub name: String,
    pub epoch: u64,
    pub keys_deleted: u64,
    pub versions_deleted: u64,
}

/// The ring part of a server's `/health`: lets gateways notice a newer ring within one
/// health interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RingHealth {
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_epoch: Option<u64>,
    #[serde(default)]
    pub frozen: bool,
}

impl From<&RingState> for RingHealth {
    fn from(state: &RingState) -> RingHealth {
        RingHealth {
            epoch: state.current.epoch,
            next_epoch: state.next.as_ref().map(|n| n.epoch),
            frozen: state.frozen,
        }
    }
}

/// Placement under a state: who holds a key now, who will, and whether its writes pause.
/// Built once per state (it holds two rings), shared by a server's request path.
#[derive(Debug, Clone)]
pub struct Placement {
    pub state: RingState,
    pub current: Ring,
    pub next: Option<Ring>,
}

impl Placement {
    pub fn new(state: RingState) -> Placement {
        let current = state.current.ring();
        let next = state.next.as_ref().map(RingConfig::ring);
        Placement {
            state,
            current,
            next,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.state.current.epoch
    }

    /// The key's primary in force.
    pub fn primary(&self, key: &str) -> Option<&str> {
        self.current.owner(key)
    }

    /// The key's primary under `next`, if a transition is under way.
    pub fn next_primary(&self, key: &str) -> Option<&str> {
        self.next.as_ref().and_then(|ring| ring.owner(key))
    }

    /// Whether the key's writes pause: frozen and its primary changes.
    pub fn write_paused(&self, key: &str) -> bool {
        self.state.frozen
            && self
                .next_primary(key)
                .is_some_and(|next| Some(next) != self.primary(key))
    }

    /// The key's replicas in force, primary first.
    pub fn replicas(&self, key: &str) -> Vec<&str> {
        self.current
            .preference_list(key, self.state.current.factor())
    }

    /// Where a new version must go: the replicas in force, then those under `next` that are
    /// not among them (dual write), no name twice.
    pub fn targets(&self, key: &str) -> Vec<&str> {
        let mut out = self.replicas(key);
        if let (Some(ring), Some(config)) = (&self.next, &self.state.next) {
            for name in ring.preference_list(key, config.factor()) {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// Whether `name` holds `key` now or will under `next`: what its change feed carries.
    pub fn holds(&self, name: &str, key: &str) -> bool {
        self.current
            .replicates(name, key, self.state.current.factor())
            || match (&self.next, &self.state.next) {
                (Some(ring), Some(config)) => ring.replicates(name, key, config.factor()),
                _ => false,
            }
    }

    /// Whether `name` holds `key` under `current` only (clean-up keeps exactly these).
    pub fn holds_now(&self, name: &str, key: &str) -> bool {
        self.current
            .replicates(name, key, self.state.current.factor())
    }

    /// Whether `name` gains `key` with `next`: holds it under `next`, not under `current`.
    pub fn gains(&self, name: &str, key: &str) -> bool {
        match (&self.next, &self.state.next) {
            (Some(ring), Some(config)) => {
                ring.replicates(name, key, config.factor()) && !self.holds_now(name, key)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(epoch: u64, names: &[&str], r: usize) -> RingConfig {
        RingConfig::new(
            epoch,
            names
                .iter()
                .map(|n| RingMember {
                    name: (*n).into(),
                    url: format!("http://{n}:8080"),
                })
                .collect(),
            150,
            r,
        )
        .unwrap()
    }

    #[test]
    fn states_are_ordered_announce_freeze_commit() {
        let a = config(1, &["s1", "s2", "s3"], 3);
        let b = config(2, &["s1", "s2", "s3", "s4"], 3);
        let stable = RingState::stable(a.clone());
        let announced = RingState {
            current: a.clone(),
            next: Some(b.clone()),
            frozen: false,
        };
        let frozen = RingState {
            frozen: true,
            ..announced.clone()
        };
        let committed = RingState::stable(b);
        assert!(stable.order() < announced.order());
        assert!(announced.order() < frozen.order());
        assert!(frozen.order() < committed.order());
        // A new target during the copy replaces `next` and is above it.
        let retarget = RingState {
            current: a,
            next: Some(config(3, &["s1", "s2"], 3)),
            frozen: false,
        };
        assert!(frozen.order() < retarget.order());
        for state in [stable, announced, frozen, committed, retarget] {
            state.validate().unwrap();
        }
    }

    #[test]
    fn invalid_states_are_refused() {
        let a = config(2, &["s1"], 1);
        let mut state = RingState {
            current: a.clone(),
            next: Some(config(2, &["s1", "s2"], 1)),
            frozen: false,
        };
        assert!(state.validate().is_err(), "next must be newer");
        state.next = None;
        state.frozen = true;
        assert!(state.validate().is_err(), "frozen needs next");
        assert!(RingConfig::new(1, vec![], 150, 1).is_err());
        let twice = vec![
            RingMember {
                name: "a".into(),
                url: "http://a:1".into(),
            };
            2
        ];
        assert!(RingConfig::new(1, twice, 150, 1).is_err());
        let no_scheme = vec![RingMember {
            name: "a".into(),
            url: "a:1".into(),
        }];
        assert!(RingConfig::new(1, no_scheme, 150, 1).is_err());
    }

    #[test]
    fn placement_dual_writes_and_pauses_only_moving_primaries() {
        let a = config(1, &["s1", "s2", "s3"], 2);
        let b = config(2, &["s1", "s2", "s3", "s4", "s5"], 2);
        let placement = Placement::new(RingState {
            current: a,
            next: Some(b),
            frozen: true,
        });
        let keys: Vec<String> = (0..2000).map(|i| format!("key{i}")).collect();
        let mut paused = 0;
        for key in &keys {
            let targets = placement.targets(key);
            let now = placement.replicas(key);
            assert_eq!(&targets[..now.len()], &now[..], "current replicas first");
            assert!(targets.len() <= 4);
            for name in &targets {
                assert!(placement.holds(name, key));
            }
            let moves = placement.primary(key) != placement.next_primary(key);
            assert_eq!(placement.write_paused(key), moves);
            paused += usize::from(moves);
        }
        // Going from 3 to 5 servers moves the primary of about 2/5 of the keys.
        assert!((600..1000).contains(&paused), "{paused}");
        let unfrozen = Placement::new(RingState {
            frozen: false,
            ..placement.state.clone()
        });
        assert!(keys.iter().all(|k| !unfrozen.write_paused(k)));
    }

    #[test]
    fn gained_keys_are_held_under_next_only() {
        let a = config(1, &["s1", "s2", "s3"], 2);
        let grown = Placement::new(RingState {
            current: a.clone(),
            next: Some(config(2, &["s1", "s2", "s3", "s4"], 2)),
            frozen: false,
        });
        let keys: Vec<String> = (0..2000).map(|i| format!("key{i}")).collect();
        for key in &keys {
            for name in ["s1", "s2", "s3", "s4"] {
                let next_only = grown.holds(name, key) && !grown.holds_now(name, key);
                assert_eq!(grown.gains(name, key), next_only, "{name} {key}");
            }
            // Adding a server only takes keys from the others.
            assert!(["s1", "s2", "s3"].iter().all(|n| !grown.gains(n, key)));
        }
        let s4 = keys.iter().filter(|k| grown.gains("s4", k)).count();
        assert!((800..1200).contains(&s4), "s4 gains about half: {s4}");
        // Shrinking: the servers that stay gain what the leaving one held.
        let shrunk = Placement::new(RingState {
            current: a.clone(),
            next: Some(config(2, &["s1", "s2"], 2)),
            frozen: false,
        });
        let s1 = keys.iter().filter(|k| shrunk.gains("s1", k)).count();
        assert!((400..950).contains(&s1), "{s1}");
        // Without next nobody gains anything.
        let stable = Placement::new(RingState::stable(a));
        assert!(keys.iter().all(|k| !stable.gains("s1", k)));
    }

    #[test]
    fn all_members_is_the_union() {
        let state = RingState {
            current: config(1, &["s1", "s2", "s3"], 3),
            next: Some(config(2, &["s1", "s4"], 3)),
            frozen: false,
        };
        let names: Vec<String> = state.all_members().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["s1", "s2", "s3", "s4"]);
        assert_eq!(state.latest_epoch(), 2);
    }
}
