//! The rules a server applies to ring states (docs/rebalancing.md, "Server side"): the state
//! it starts from, whether an offered state is adopted, and what adopting it implies. Pure:
//! `adopt.rs` does the IO.

use kv_common::ring_config::{Placement, RingConfig, RingMember, RingState};

use crate::config::ReplicationConfig;

/// `kv_meta` entry holding the server's ring state as JSON.
pub const RING_STATE_META: &str = "ring_state";
/// `kv_meta` entry naming the `next` epoch this server finished copying for.
pub const COPIED_EPOCH_META: &str = "copied_epoch";
/// `kv_meta` entry: "true" from a new `current` until `/internal/cleanup` ran.
pub const CLEANUP_PENDING_META: &str = "cleanup_pending";

/// Epoch 0 from the flags: `--peers`, plus this server only if `--peers` names it. A server
/// missing from a non-empty `--peers` is a joiner: it owns nothing until a ring names it.
pub fn from_flags(settings: &ReplicationConfig, me: &str) -> Result<RingState, String> {
    let members = settings
        .peers
        .iter()
        .map(|p| RingMember {
            name: p.name.clone(),
            url: p.url.clone(),
        })
        .collect();
    let factor = settings
        .replication_factor
        .unwrap_or(crate::config::DEFAULT_REPLICATION_FACTOR);
    let current = RingConfig::new(0, members, settings.vnodes, factor)
        .map_err(|e| format!("--peers of '{me}': {e}"))?;
    Ok(RingState::stable(current))
}

/// What the database was last complete for (`kv_meta` entry `ring`). Epoch 0 keeps the
/// format from before ring states existed, so an upgraded server stays synced.
pub fn fingerprint(config: &RingConfig) -> String {
    let base = format!(
        "vnodes={};replicas={};members={}",
        config.vnodes,
        config.factor(),
        config.names().join(",")
    );
    if config.epoch == 0 {
        base
    } else {
        format!("{base};epoch={}", config.epoch)
    }
}

/// What an offered state does to a server holding `own`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Below (or beside) the own state: refused, with why.
    Refuse(String),
    /// The own state again: nothing to do.
    Same,
    Adopt(Change),
}

/// What changes when a state is adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// `current` has another epoch: a commit (or a missed one).
    pub new_current: bool,
    /// `next` is set and has another epoch than before: copying starts over.
    pub new_next: bool,
}

/// Whether `offered` is adopted by a server holding `own` (both valid).
pub fn decide(own: &RingState, offered: &RingState) -> Decision {
    if offered == own {
        return Decision::Same;
    }
    if offered.order() < own.order() {
        return Decision::Refuse(format!(
            "ring state {:?} is older than this server's {:?}",
            offered.order(),
            own.order()
        ));
    }
    if offered.order() == own.order() {
        return Decision::Refuse(format!(
            "another ring state with the same epochs {:?} is held here",
            own.order()
        ));
    }
    let new_current = offered.current.epoch != own.current.epoch;
    if !new_current && offered.current != own.current {
        return Decision::Refuse(format!(
            "another ring epoch {} is in force here",
            own.current.epoch
        ));
    }
    // Once frozen, the transition is finished before another target: the old primaries
    // refuse writes of moving keys and the new ones may be taking them over.
    if own.frozen && !new_current {
        return Decision::Refuse(format!(
            "frozen for epoch {}: that transition must be committed before another target",
            own.latest_epoch()
        ));
    }
    // Copying is for the union of `current` and `next`: either changing starts it over.
    let new_next = match (&offered.next, &own.next) {
        (Some(offered), Some(own)) => offered.epoch != own.epoch || new_current,
        (Some(_), None) => true,
        (None, _) => false,
    };
    Decision::Adopt(Change {
        new_current,
        new_next,
    })
}

/// The keys among `keys` that `me` does not hold under `current`: what clean-up deletes.
pub fn not_held(placement: &Placement, me: &str, keys: Vec<String>) -> Vec<String> {
    keys.into_iter()
        .filter(|key| !placement.holds_now(me, key))
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::Peer;

    /// A ring of `names` (URLs `http://NAME:1`, 16 vnodes, R = 3), also for `copy_base.rs`.
    pub(in crate::replication) fn config(epoch: u64, names: &[&str]) -> RingConfig {
        let members = names
            .iter()
            .map(|n| RingMember {
                name: (*n).into(),
                url: format!("http://{n}:1"),
            })
            .collect();
        RingConfig::new(epoch, members, 16, 3).unwrap()
    }

    fn peers(names: &[&str]) -> ReplicationConfig {
        ReplicationConfig {
            peers: names
                .iter()
                .map(|n| Peer {
                    name: (*n).into(),
                    url: format!("http://{n}:1"),
                })
                .collect(),
            vnodes: 16,
            ..ReplicationConfig::default()
        }
    }

    #[test]
    fn a_server_named_in_peers_is_a_member_of_epoch_0_and_a_joiner_is_not() {
        let member = from_flags(&peers(&["a", "b", "c"]), "b").unwrap();
        assert_eq!(member.current, config(0, &["a", "b", "c"]));
        assert!(member.next.is_none());
        let joiner = from_flags(&peers(&["a", "b", "c"]), "d").unwrap();
        assert_eq!(joiner.current.names(), ["a", "b", "c"]);
        assert!(!joiner.current.contains("d"));
        // Only itself: a one-member ring that can grow later.
        let alone = from_flags(&peers(&["a"]), "a").unwrap();
        assert_eq!(
            (alone.current.names(), alone.current.factor()),
            (vec!["a"], 1)
        );
    }

    #[test]
    fn clean_up_keeps_exactly_the_keys_held_under_current() {
        let placement = Placement::new(RingState::stable(config(1, &["a", "b", "c", "d"])));
        let keys: Vec<String> = (0..400).map(|i| format!("k{i}")).collect();
        let doomed = not_held(&placement, "a", keys.clone());
        // R = 3 of 4: "a" holds about three quarters of the keys.
        assert!((60..140).contains(&doomed.len()), "{}", doomed.len());
        for key in &keys {
            assert_eq!(
                doomed.contains(key),
                !placement.replicas(key).contains(&"a")
            );
        }
        // A server outside the ring holds nothing.
        assert_eq!(not_held(&placement, "z", keys.clone()).len(), keys.len());
    }

    #[test]
    fn the_epoch_0_fingerprint_is_the_one_recorded_before_ring_states() {
        let c = config(0, &["r0", "r1", "r2"]);
        assert_eq!(fingerprint(&c), "vnodes=16;replicas=3;members=r0,r1,r2");
        assert!(fingerprint(&config(4, &["r0", "r1", "r2"])).ends_with(";epoch=4"));
    }

    #[test]
    fn states_are_adopted_only_forward_and_a_frozen_transition_finishes_first() {
        let a = config(1, &["s1", "s2", "s3"]);
        let b = config(2, &["s1", "s2", "s3", "s4"]);
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
        let committed = RingState::stable(b.clone());
        let adopt = |new_current, new_next| {
            Decision::Adopt(Change {
                new_current,
                new_next,
            })
        };
        assert_eq!(decide(&stable, &announced), adopt(false, true));
        assert_eq!(decide(&announced, &announced), Decision::Same);
        assert_eq!(decide(&announced, &frozen), adopt(false, false));
        assert_eq!(decide(&frozen, &committed), adopt(true, false));
        // Missed everything: a commit adopted straight from the stable state.
        assert_eq!(decide(&stable, &committed), adopt(true, false));
        assert!(matches!(decide(&committed, &frozen), Decision::Refuse(_)));
        assert!(matches!(decide(&frozen, &announced), Decision::Refuse(_)));
        // A new target replaces `next` while copying, not once frozen.
        let retarget = RingState {
            current: a.clone(),
            next: Some(config(3, &["s1", "s2"])),
            frozen: false,
        };
        assert_eq!(decide(&announced, &retarget), adopt(false, true));
        assert!(matches!(decide(&frozen, &retarget), Decision::Refuse(_)));
        // Same order, other content: a coordinator bug, never silently replaced.
        let other = RingState {
            next: Some(config(2, &["s1", "s9"])),
            ..announced.clone()
        };
        assert!(matches!(decide(&announced, &other), Decision::Refuse(_)));
        // Another `current` under the same epoch: refused whatever `next` says.
        let forged = RingState {
            current: config(1, &["s1", "s2"]),
            next: Some(config(5, &["s1"])),
            frozen: false,
        };
        assert!(matches!(decide(&announced, &forged), Decision::Refuse(_)));
        // A commit that already announces the following transition.
        let commit_and_next = RingState {
            current: b,
            next: Some(config(3, &["s1", "s2"])),
            frozen: false,
        };
        assert_eq!(decide(&frozen, &commit_and_next), adopt(true, true));
    }
}
