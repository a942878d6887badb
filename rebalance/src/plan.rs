//! The coordinator's decisions, as a pure function of what the servers said: given every
//! server's ring view and replication status, and the ring the cluster should end up with,
//! what is the one next action? No IO here, so every phase and failure case is unit-tested.
//!
//! Every action is idempotent and every decision is made again from fresh observations, so
//! whoever drives this (the CLI, the operator after a restart) can stop and resume anywhere.

use std::collections::BTreeMap;

use kv_common::replication::ReplicationStatus;
use kv_common::ring_config::{RingConfig, RingMember, RingState, RingView};
use serde::{Deserialize, Serialize};

/// The ring the cluster should have. `vnodes` and `replication_factor` default to the
/// current ring's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub members: Vec<RingMember>,
    pub vnodes: Option<usize>,
    pub replication_factor: Option<usize>,
}

impl Target {
    /// The configuration this target means after `current`, with `epoch`.
    pub fn config(&self, current: &RingConfig, epoch: u64) -> Result<RingConfig, String> {
        RingConfig::new(
            epoch,
            self.members.clone(),
            self.vnodes.unwrap_or(current.vnodes),
            self.replication_factor
                .unwrap_or(current.replication_factor),
        )
    }
}

/// What was observed, by server name. A server that could not be asked has an `Err` with why.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub views: BTreeMap<String, Result<RingView, String>>,
    /// `/internal/status` of each server (used to know who holds whose changes).
    pub statuses: BTreeMap<String, Result<ReplicationStatus, String>>,
}

impl Observed {
    fn view(&self, name: &str) -> Option<&RingView> {
        self.views.get(name).and_then(|v| v.as_ref().ok())
    }

    fn why_not(&self, name: &str) -> String {
        match self.views.get(name) {
            Some(Err(why)) => why.clone(),
            Some(Ok(_)) => String::new(),
            None => "not asked".into(),
        }
    }

    /// The most advanced state any server holds: the cluster's.
    pub fn cluster_state(&self) -> Option<&RingState> {
        self.views
            .values()
            .filter_map(|v| v.as_ref().ok())
            .map(|v| &v.state)
            .max_by_key(|s| s.order())
    }

    /// Whether `q` has read every change `p` had when it took the freeze (writes of keys
    /// whose primary does not move go on meanwhile: the live head is a moving target).
    fn has_read_frozen_changes(&self, q: &str, p: &str) -> bool {
        let Some(head) = self.view(p).and_then(|v| v.frozen_head) else {
            return false;
        };
        match self.statuses.get(q) {
            Some(Ok(status)) => status
                .peers
                .iter()
                .any(|peer| peer.name == p && peer.cursor >= head),
            _ => false,
        }
    }
}

/// Where a transition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The next ring is being announced to the servers.
    Announcing,
    /// New replicas copy the keys they will hold.
    Copying,
    /// Writes of keys whose primary moves pause; their new primaries take the last versions.
    Draining,
    /// The new ring is being put in force.
    Switching,
    /// Servers delete the keys they no longer hold.
    CleaningUp,
    /// The cluster runs the target ring and holds nothing it should not.
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Announcing => "Announcing",
            Phase::Copying => "Copying",
            Phase::Draining => "Draining",
            Phase::Switching => "Switching",
            Phase::CleaningUp => "CleaningUp",
            Phase::Done => "Done",
        }
    }
}

/// The one thing to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// PUT `state` to the servers: each of `required` must take it before the transition
    /// goes on; `best_effort` ones learn it from their peers if the push fails.
    Push {
        state: RingState,
        required: Vec<RingMember>,
        best_effort: Vec<RingMember>,
    },
    /// POST `/internal/cleanup` to these servers.
    Cleanup(Vec<RingMember>),
    /// Nothing to do but wait: `waiting_for` names the servers and `reason` says for what.
    Wait {
        reason: String,
        waiting_for: Vec<String>,
    },
    /// The target is in force and clean.
    Done,
}

/// A decision and where it leaves the transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub phase: Phase,
    /// Current epoch, and the next one during a transition.
    pub epoch: u64,
    pub next_epoch: Option<u64>,
    pub action: Action,
    /// Versions copied so far by the servers of the next ring (progress of `Copying`).
    pub copied_versions: u64,
    /// Servers of the next ring that finished copying, and how many it has.
    pub copied_servers: (usize, usize),
}

/// Decides the next action. `Err` only when no server at all could be asked or the target
/// is not a valid ring.
pub fn decide(observed: &Observed, target: &Target) -> Result<Decision, String> {
    let Some(state) = observed.cluster_state().cloned() else {
        let why: Vec<String> = observed
            .views
            .iter()
            .map(|(name, v)| format!("{name}: {}", v.as_ref().err().cloned().unwrap_or_default()))
            .collect();
        return Err(format!("no server answered: {}", why.join("; ")));
    };
    let mut decision = Decision {
        phase: Phase::Done,
        epoch: state.current.epoch,
        next_epoch: state.next.as_ref().map(|n| n.epoch),
        action: Action::Done,
        copied_versions: 0,
        copied_servers: (0, 0),
    };
    let all = state.all_members();
    // Servers behind the cluster's state get it first: every later check assumes they have it.
    let behind: Vec<RingMember> = all
        .iter()
        .filter(|m| {
            observed
                .view(&m.name)
                .is_some_and(|v| v.state.order() < state.order())
        })
        .cloned()
        .collect();

    let Some(next) = state.next.clone() else {
        // Stable. Is it the target?
        let wanted = target.config(&state.current, state.current.epoch + 1)?;
        if !state.current.same_placement(&wanted) {
            decision.phase = Phase::Announcing;
            decision.next_epoch = Some(wanted.epoch);
            decision.action = Action::Push {
                state: RingState {
                    current: state.current.clone(),
                    next: Some(wanted.clone()),
                    frozen: false,
                },
                required: Vec::new(),
                best_effort: union(&state.current.members, &wanted.members),
            };
            return Ok(decision);
        }
        if !behind.is_empty() {
            decision.phase = Phase::Switching;
            decision.action = Action::Push {
                state: state.clone(),
                required: behind,
                best_effort: Vec::new(),
            };
            return Ok(decision);
        }
        if state.current.epoch == 0 {
            // Pin the flags-derived ring as epoch 1. Gateways then route by it and ignore
            // servers it does not name: a new server (a joiner) appearing among a Kubernetes
            // Service's endpoints before a move names it must not take keys.
            decision.phase = Phase::Switching;
            decision.next_epoch = None;
            let mut pinned = state.current.clone();
            pinned.epoch = 1;
            decision.action = Action::Push {
                state: RingState::stable(pinned),
                required: state.current.members.clone(),
                best_effort: Vec::new(),
            };
            return Ok(decision);
        }
        decision.phase = Phase::CleaningUp;
        let members = &state.current.members;
        let pending: Vec<RingMember> = members
            .iter()
            .filter(|m| observed.view(&m.name).is_some_and(|v| v.cleanup_pending))
            .cloned()
            .collect();
        if pending.is_empty() {
            decision.phase = Phase::Done;
            return Ok(decision);
        }
        // Delete nothing while a server of the ring is down or resyncing (it may need a
        // leftover copy). Otherwise every version is where it must be: copied before the
        // freeze, drained for moving primaries, and acknowledged on W servers of the new
        // list since the announcement (joint quorum); a server deleting a key was never its
        // only holder.
        let not_ready: Vec<String> = members
            .iter()
            .filter(|q| !observed.view(&q.name).is_some_and(|v| v.synced))
            .map(|m| describe(observed, &m.name))
            .collect();
        decision.action = if not_ready.is_empty() {
            Action::Cleanup(pending)
        } else {
            Action::Wait {
                reason: "every server of the new ring synced before clean-up".into(),
                waiting_for: not_ready,
            }
        };
        return Ok(decision);
    };

    let olds = &state.current.members;
    let news = &next.members;
    if !state.frozen {
        // Until the freeze a new target simply replaces `next`.
        let wanted = target.config(&state.current, next.epoch + 1)?;
        if !next.same_placement(&wanted) {
            decision.phase = Phase::Announcing;
            decision.next_epoch = Some(wanted.epoch);
            decision.action = Action::Push {
                state: RingState {
                    current: state.current.clone(),
                    next: Some(wanted.clone()),
                    frozen: false,
                },
                required: Vec::new(),
                best_effort: union(olds, &wanted.members),
            };
            return Ok(decision);
        }
    }
    if !behind.is_empty() {
        // Frozen: every old primary must refuse before anything is read as final.
        decision.phase = if state.frozen {
            Phase::Draining
        } else {
            Phase::Announcing
        };
        decision.action = Action::Push {
            state: state.clone(),
            required: behind,
            best_effort: Vec::new(),
        };
        return Ok(decision);
    }
    decision.copied_versions = news
        .iter()
        .filter_map(|m| observed.view(&m.name))
        .filter(|v| v.state.next.as_ref().map(|n| n.epoch) == Some(next.epoch))
        .map(|v| v.copied_versions)
        .sum();
    let not_copied: Vec<String> = news
        .iter()
        .filter(|m| {
            !observed.view(&m.name).is_some_and(|v| {
                v.copied && v.state.next.as_ref().map(|n| n.epoch) == Some(next.epoch)
            })
        })
        .map(|m| describe(observed, &m.name))
        .collect();
    decision.copied_servers = (news.len() - not_copied.len(), news.len());
    if !state.frozen {
        decision.phase = Phase::Copying;
        decision.action = if not_copied.is_empty() {
            Action::Push {
                state: RingState {
                    frozen: true,
                    ..state.clone()
                },
                // Every old server may be a primary of a moving key: all must refuse.
                required: olds.clone(),
                best_effort: news
                    .iter()
                    .filter(|m| !state.current.contains(&m.name))
                    .cloned()
                    .collect(),
            }
        } else {
            Action::Wait {
                reason: "servers of the next ring copying their keys".into(),
                waiting_for: not_copied,
            }
        };
        return Ok(decision);
    }
    // Frozen. Every old server took it (else `behind` above, or unreachable: wait for it).
    decision.phase = Phase::Draining;
    let unreachable: Vec<String> = olds
        .iter()
        .filter(|m| observed.view(&m.name).is_none())
        .map(|m| describe(observed, &m.name))
        .collect();
    if !unreachable.is_empty() {
        decision.action = Action::Wait {
            reason: "old servers must confirm the freeze".into(),
            waiting_for: unreachable,
        };
        return Ok(decision);
    }
    // Each new server has read every old server's changes up to its head after the freeze:
    // it holds every version any old primary stored of the keys it will hold.
    let not_drained: Vec<String> = news
        .iter()
        .filter(|q| {
            olds.iter()
                .any(|p| p.name != q.name && !observed.has_read_frozen_changes(&q.name, &p.name))
        })
        .map(|m| m.name.clone())
        .collect();
    if !not_drained.is_empty() {
        decision.action = Action::Wait {
            reason: "new servers reading the last versions of the old ones".into(),
            waiting_for: not_drained,
        };
        return Ok(decision);
    }
    decision.phase = Phase::Switching;
    decision.action = Action::Push {
        state: RingState::stable(next.clone()),
        required: news.clone(),
        best_effort: olds
            .iter()
            .filter(|m| !next.contains(&m.name))
            .cloned()
            .collect(),
    };
    Ok(decision)
}

/// `name`, with why it could not be asked when it could not.
fn describe(observed: &Observed, name: &str) -> String {
    match observed.why_not(name) {
        why if why.is_empty() => name.to_owned(),
        why => format!("{name} ({why})"),
    }
}

fn union(a: &[RingMember], b: &[RingMember]) -> Vec<RingMember> {
    let mut out: Vec<RingMember> = b.to_vec();
    for m in a {
        if !out.iter().any(|o| o.name == m.name) {
            out.push(m.clone());
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests;
