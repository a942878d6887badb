//! Every phase of a transition and its failure cases, from fabricated observations.

use kv_common::replication::{PeerStatus, ReplicationStatus};
use kv_common::ring_config::{RingConfig, RingMember, RingState, RingView};

use super::*;

fn member(name: &str) -> RingMember {
    RingMember {
        name: name.into(),
        url: format!("http://{name}:8080"),
    }
}

fn config(epoch: u64, names: &[&str]) -> RingConfig {
    RingConfig::new(epoch, names.iter().map(|n| member(n)).collect(), 150, 3).unwrap()
}

fn target(names: &[&str]) -> Target {
    Target {
        members: names.iter().map(|n| member(n)).collect(),
        vnodes: None,
        replication_factor: None,
    }
}

/// A cluster where each server reports `state`, with `head` 100 and, for every peer, the
/// cursor given by `cursor(server, peer)`.
struct Cluster {
    observed: Observed,
}

impl Cluster {
    fn new(names: &[&str], state: &RingState) -> Cluster {
        let mut cluster = Cluster {
            observed: Observed::default(),
        };
        for name in names {
            cluster.set(name, state, |_| {});
        }
        cluster
    }

    fn set(&mut self, name: &str, state: &RingState, edit: impl FnOnce(&mut RingView)) {
        let mut view = RingView {
            name: name.into(),
            state: state.clone(),
            copied: false,
            synced: true,
            head: 100,
            copied_versions: 0,
            cleanup_pending: false,
            frozen_head: state.frozen.then_some(100),
        };
        edit(&mut view);
        self.observed.views.insert(name.into(), Ok(view));
        self.set_cursors(name, 0);
    }

    fn set_cursors(&mut self, name: &str, cursor: u64) {
        let peers = self
            .observed
            .views
            .keys()
            .filter(|p| *p != name)
            .map(|p| PeerStatus {
                name: p.clone(),
                url: String::new(),
                cursor,
                head: 100,
                lag: 100u64.saturating_sub(cursor),
                last_error: None,
                reachable: true,
            })
            .collect();
        self.observed.statuses.insert(
            name.into(),
            Ok(ReplicationStatus {
                name: name.into(),
                replication_factor: 3,
                write_quorum: 2,
                synced: true,
                lag: 0,
                head: 100,
                peers,
            }),
        );
    }

    fn all_read_everything(&mut self) {
        let names: Vec<String> = self.observed.views.keys().cloned().collect();
        for name in &names {
            self.set_cursors(name, 100);
        }
    }

    fn down(&mut self, name: &str) {
        self.observed
            .views
            .insert(name.into(), Err("cannot connect".into()));
        self.observed
            .statuses
            .insert(name.into(), Err("cannot connect".into()));
    }
}

/// Servers s1..s3 moving to s1..s4, frozen.
fn frozen_3_to_4() -> RingState {
    RingState {
        current: config(0, &["s1", "s2", "s3"]),
        next: Some(config(1, &["s1", "s2", "s3", "s4"])),
        frozen: true,
    }
}

fn pushed(decision: &Decision) -> (&RingState, Vec<&str>, Vec<&str>) {
    match &decision.action {
        Action::Push {
            state,
            required,
            best_effort,
        } => (
            state,
            required.iter().map(|m| m.name.as_str()).collect(),
            best_effort.iter().map(|m| m.name.as_str()).collect(),
        ),
        other => panic!("expected a push, got {other:?}"),
    }
}

fn waits_for(decision: &Decision) -> Vec<String> {
    match &decision.action {
        Action::Wait { waiting_for, .. } => waiting_for.clone(),
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[test]
fn a_cluster_at_its_target_is_done() {
    let stable = RingState::stable(config(3, &["s1", "s2", "s3"]));
    let cluster = Cluster::new(&["s1", "s2", "s3"], &stable);
    let decision = decide(&cluster.observed, &target(&["s1", "s2", "s3"])).unwrap();
    assert_eq!(decision.phase, Phase::Done);
    assert_eq!(decision.action, Action::Done);
}

#[test]
fn a_flags_derived_ring_is_pinned_as_epoch_1_first() {
    let stable = RingState::stable(config(0, &["s1", "s2", "s3"]));
    let cluster = Cluster::new(&["s1", "s2", "s3"], &stable);
    let decision = decide(&cluster.observed, &target(&["s1", "s2", "s3"])).unwrap();
    let (state, required, _) = pushed(&decision);
    assert_eq!(state, &RingState::stable(config(1, &["s1", "s2", "s3"])));
    assert_eq!(required, ["s1", "s2", "s3"]);
    // A move from epoch 0 announces right away (its switch gives epoch 1 or more).
    let decision = decide(&cluster.observed, &target(&["s1", "s2"])).unwrap();
    assert_eq!(decision.phase, Phase::Announcing);
}

#[test]
fn scale_up_goes_announce_copy_freeze_drain_switch_clean() {
    let a = config(0, &["s1", "s2", "s3"]);
    let stable = RingState::stable(a.clone());
    let mut cluster = Cluster::new(&["s1", "s2", "s3"], &stable);
    let goal = target(&["s1", "s2", "s3", "s4", "s5"]);

    // 1. Announce epoch 1 to old and new servers alike.
    let d = decide(&cluster.observed, &goal).unwrap();
    assert_eq!(d.phase, Phase::Announcing);
    let (announced, required, best) = pushed(&d);
    let announced = announced.clone();
    assert_eq!(announced.next.as_ref().unwrap().epoch, 1);
    assert!(!announced.frozen);
    assert!(required.is_empty());
    assert_eq!(best, ["s1", "s2", "s3", "s4", "s5"]);

    // 2. Everyone has it; s4 has not finished copying.
    for name in ["s1", "s2", "s3", "s4", "s5"] {
        cluster.set(name, &announced, |v| {
            v.copied = name != "s4";
            v.copied_versions = 10;
        });
    }
    let d = decide(&cluster.observed, &goal).unwrap();
    assert_eq!(d.phase, Phase::Copying);
    assert_eq!(waits_for(&d), ["s4"]);
    assert_eq!(d.copied_servers, (4, 5));
    assert_eq!(d.copied_versions, 50);

    // 3. All copied: freeze, which every old server must take.
    cluster.set("s4", &announced, |v| v.copied = true);
    let d = decide(&cluster.observed, &goal).unwrap();
    let (frozen, required, best) = pushed(&d);
    let frozen = frozen.clone();
    assert!(frozen.frozen);
    assert_eq!(required, ["s1", "s2", "s3"]);
    assert_eq!(best, ["s4", "s5"]);

    // 4. Frozen everywhere, but the new servers have not read up to the old heads.
    for name in ["s1", "s2", "s3", "s4", "s5"] {
        cluster.set(name, &frozen, |v| v.copied = true);
    }
    let d = decide(&cluster.observed, &goal).unwrap();
    assert_eq!(d.phase, Phase::Draining);
    assert_eq!(waits_for(&d), ["s1", "s2", "s3", "s4", "s5"]);

    // 5. Drained: switch, every new server must take it, removed ones (none here) best effort.
    cluster.all_read_everything();
    let d = decide(&cluster.observed, &goal).unwrap();
    assert_eq!(d.phase, Phase::Switching);
    let (committed, required, best) = pushed(&d);
    let committed = committed.clone();
    assert_eq!(
        committed,
        RingState::stable(announced.next.clone().unwrap())
    );
    assert_eq!(required, ["s1", "s2", "s3", "s4", "s5"]);
    assert!(best.is_empty());

    // 6. In force; clean-up waits for every replica to be synced, then runs.
    for name in ["s1", "s2", "s3", "s4", "s5"] {
        cluster.set(name, &committed, |v| {
            v.cleanup_pending = true;
            v.synced = name != "s5";
        });
    }
    cluster.all_read_everything();
    let d = decide(&cluster.observed, &goal).unwrap();
    assert_eq!(d.phase, Phase::CleaningUp);
    assert_eq!(waits_for(&d), ["s5"]);
    cluster.set("s5", &committed, |v| v.cleanup_pending = true);
    cluster.all_read_everything();
    let d = decide(&cluster.observed, &goal).unwrap();
    match &d.action {
        Action::Cleanup(members) => assert_eq!(members.len(), 5),
        other => panic!("expected clean-up, got {other:?}"),
    }
    for name in ["s1", "s2", "s3", "s4", "s5"] {
        cluster.set(name, &committed, |_| {});
    }
    let d = decide(&cluster.observed, &goal).unwrap();
    assert_eq!(d.phase, Phase::Done);
}

#[test]
fn scale_down_switches_removed_servers_best_effort() {
    let a = config(4, &["s1", "s2", "s3"]);
    let b = config(5, &["s1", "s2"]);
    let frozen = RingState {
        current: a,
        next: Some(b.clone()),
        frozen: true,
    };
    let mut cluster = Cluster::new(&["s1", "s2", "s3"], &frozen);
    cluster.all_read_everything();
    let d = decide(&cluster.observed, &target(&["s1", "s2"])).unwrap();
    let (state, required, best) = pushed(&d);
    assert_eq!(state, &RingState::stable(b));
    assert_eq!(required, ["s1", "s2"]);
    assert_eq!(best, ["s3"]);
}

#[test]
fn a_server_behind_gets_the_state_before_anything_else() {
    let a = config(0, &["s1", "s2", "s3"]);
    let announced = RingState {
        current: a.clone(),
        next: Some(config(1, &["s1", "s2", "s3", "s4"])),
        frozen: false,
    };
    let frozen = RingState {
        frozen: true,
        ..announced.clone()
    };
    let mut cluster = Cluster::new(&["s1", "s2", "s4"], &frozen);
    // s3 restarted and only knows the announcement.
    cluster.set("s3", &announced, |v| v.copied = true);
    cluster.all_read_everything();
    let d = decide(&cluster.observed, &target(&["s1", "s2", "s3", "s4"])).unwrap();
    assert_eq!(d.phase, Phase::Draining);
    let (state, required, _) = pushed(&d);
    assert_eq!(state, &frozen);
    assert_eq!(required, ["s3"]);
}

#[test]
fn a_dead_old_server_blocks_the_drain_not_the_cluster() {
    let frozen = frozen_3_to_4();
    let mut cluster = Cluster::new(&["s1", "s2", "s3", "s4"], &frozen);
    cluster.all_read_everything();
    cluster.down("s2");
    let d = decide(&cluster.observed, &target(&["s1", "s2", "s3", "s4"])).unwrap();
    assert_eq!(d.phase, Phase::Draining);
    let waiting = waits_for(&d);
    assert_eq!(waiting.len(), 1);
    assert!(waiting[0].starts_with("s2 (cannot connect"), "{waiting:?}");
}

#[test]
fn a_new_server_that_lost_its_cursors_is_not_drained() {
    let frozen = frozen_3_to_4();
    let mut cluster = Cluster::new(&["s1", "s2", "s3", "s4"], &frozen);
    cluster.all_read_everything();
    cluster.set_cursors("s4", 99);
    let d = decide(&cluster.observed, &target(&["s1", "s2", "s3", "s4"])).unwrap();
    assert_eq!(waits_for(&d), ["s4"]);
}

#[test]
fn a_new_target_during_the_copy_replaces_next() {
    let announced = RingState {
        current: config(0, &["s1", "s2", "s3"]),
        next: Some(config(1, &["s1", "s2", "s3", "s4", "s5"])),
        frozen: false,
    };
    let cluster = Cluster::new(&["s1", "s2", "s3", "s4", "s5"], &announced);
    let d = decide(&cluster.observed, &target(&["s1", "s2"])).unwrap();
    assert_eq!(d.phase, Phase::Announcing);
    let (state, _, best) = pushed(&d);
    assert_eq!(state.current.epoch, 0);
    assert_eq!(state.next.as_ref().unwrap().epoch, 2);
    assert_eq!(state.next.as_ref().unwrap().names(), ["s1", "s2"]);
    assert!(state.order() > announced.order());
    // The servers leaving both targets still hear of it (they are sources of the copy).
    assert_eq!(best, ["s1", "s2", "s3"]);
}

#[test]
fn a_new_target_after_the_freeze_waits_for_the_switch() {
    let frozen = frozen_3_to_4();
    let mut cluster = Cluster::new(&["s1", "s2", "s3", "s4"], &frozen);
    cluster.all_read_everything();
    let d = decide(&cluster.observed, &target(&["s1", "s2"])).unwrap();
    // The frozen transition finishes first (epoch 1 in force), the next round starts epoch 2.
    let (state, _, _) = pushed(&d);
    assert_eq!(
        state,
        &RingState::stable(config(1, &["s1", "s2", "s3", "s4"]))
    );
}

#[test]
fn the_most_advanced_server_tells_the_cluster_state() {
    let a = RingState::stable(config(3, &["s1", "s2"]));
    let b = RingState::stable(config(4, &["s1", "s2", "s3"]));
    let mut cluster = Cluster::new(&["s1", "s2", "s3"], &b);
    // s1 missed the switch (its push failed): it is pushed the state, nothing else happens.
    cluster.set("s1", &a, |_| {});
    let d = decide(&cluster.observed, &target(&["s1", "s2", "s3"])).unwrap();
    let (state, required, _) = pushed(&d);
    assert_eq!(state, &b);
    assert_eq!(required, ["s1"]);
}

#[test]
fn nobody_answering_is_an_error() {
    let mut cluster = Cluster {
        observed: Observed::default(),
    };
    cluster.down("s1");
    let err = decide(&cluster.observed, &target(&["s1"])).unwrap_err();
    assert!(err.contains("s1: cannot connect"), "{err}");
}
