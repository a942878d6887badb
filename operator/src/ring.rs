//! Moving keys when `spec.replicas`, `spec.replication.factor` or `spec.vnodes` changes: one
//! round of kv-rebalance's coordinator per reconcile pass, towards the ring of pods
//! `0..spec.replicas` with the spec's layout (docs/rebalancing.md), and the ring part of the
//! status.
//!
//! The order is the plan's: on scale up the StatefulSet grows first and the round waits until
//! every server is ready; on scale down the StatefulSet keeps every server until the round
//! says the target is in force and clean, and the next pass shrinks it. Every round is
//! idempotent and decided from what the servers report, so an operator restart, a failed
//! status write or a new `spec.replicas` mid-move (a new target) just means the next round.
//!
//! The coordinator is behind [`RingStepper`] so the reconciler can be tested against a mocked
//! API server with a fake stepper; servers are reached by their pod DNS names, through
//! [`Rebalancing::url_map`] where a test reaches pods some other way.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::ResourceExt;
use kv_common::ring_config::{RingMember, RingState};
use kv_crds::{KvCluster, RingStatus, rebalancing_reasons};
use kv_rebalance::{Coordinator, Progress, Target, UrlMap};

use crate::names::Names;
use crate::plan::{Plan, ordinal};

/// What one round saw and did.
#[derive(Debug, Clone)]
pub struct Round {
    /// The cluster's ring state as the servers reported it before the round acted (`None`
    /// when no server answered).
    pub state: Option<RingState>,
    pub progress: Progress,
}

/// One round of moving the cluster towards `target` (kv-rebalance's `Coordinator::step`).
/// `Err` when no decision could be made (no server answered).
pub trait RingStepper: Send + Sync {
    fn step<'a>(
        &'a self,
        seeds: &'a [RingMember],
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Round, String>>;
}

impl RingStepper for Coordinator {
    fn step<'a>(
        &'a self,
        seeds: &'a [RingMember],
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Round, String>> {
        Box::pin(async move {
            let progress = Coordinator::step(self, seeds, target)
                .await
                .map_err(|e| e.to_string())?;
            // The StatefulSet must keep every member of both rings: the state says which.
            let state = progress.observed.clone();
            Ok(Round { state, progress })
        })
    }
}

/// How the operator moves keys.
#[derive(Clone)]
pub struct Rebalancing {
    pub stepper: Arc<dyn RingStepper>,
    /// Maps a server's URL (its pod's DNS name) to the one to dial and to put in ring
    /// configurations, which servers dial too. `None` in a cluster; simulators and tests that
    /// reach pods through local forwarders set it.
    pub url_map: Option<UrlMap>,
    /// How soon the next round runs while keys move.
    pub poll: Duration,
}

impl Rebalancing {
    /// The coordinator over HTTP, `timeout` per request.
    pub fn coordinator(timeout: Duration) -> Rebalancing {
        Rebalancing {
            stepper: Arc::new(Coordinator::new(timeout)),
            url_map: None,
            poll: Duration::from_secs(2),
        }
    }

    pub fn with_url_map(mut self, map: UrlMap) -> Rebalancing {
        self.url_map = Some(map);
        self
    }

    fn member(&self, names: &Names, namespace: &str, pod: &str) -> RingMember {
        let url = names.server_url(pod, namespace);
        RingMember {
            name: pod.to_owned(),
            url: match &self.url_map {
                Some(map) => map(&url),
                None => url,
            },
        }
    }
}

impl Default for Rebalancing {
    fn default() -> Rebalancing {
        Rebalancing::coordinator(Duration::from_secs(5))
    }
}

/// The ring part of a pass: the status to record, and the `Rebalancing` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct RingOutcome {
    pub status: RingStatus,
    /// (status, reason, message) of the `Rebalancing` condition.
    pub rebalancing: (bool, String, String),
    /// The ring is still to be pinned (its servers could not all be reached): look again
    /// soon rather than at the next periodic resync.
    pub pin_pending: bool,
}

impl RingOutcome {
    pub fn moving(&self) -> bool {
        self.rebalancing.0
    }
}

/// Runs this pass's round if keys must move, after the children were applied (`sts` is the
/// StatefulSet as the API server answered).
pub async fn drive(
    rebalancing: &Rebalancing,
    cluster: &KvCluster,
    plan: &Plan,
    sts: &StatefulSet,
) -> RingOutcome {
    let names = Names::new(&cluster.name_any());
    let namespace = cluster.namespace().unwrap_or_default();
    let ring = &plan.ring;
    let previous = cluster
        .status
        .as_ref()
        .and_then(|s| s.ring.clone())
        .unwrap_or_default();
    let mut status = RingStatus {
        seeds: ring.seeds.clone(),
        epoch: previous.epoch,
        members: ring.members.clone(),
        next_epoch: previous.next_epoch,
        next_members: previous.next_members.clone(),
        target_members: ring.target.clone(),
        replication_factor: previous.replication_factor,
        vnodes: previous.vnodes,
        ..RingStatus::default()
    };
    let spec = &cluster.spec;
    let wanted_layout = (spec.replication.factor, spec.vnodes);
    if !ring.moving {
        let mut pin_pending = false;
        if previous.epoch == 0 && plan.replicas > 0 && ready_servers(sts) >= plan.replicas {
            let (epoch, layout) = pin(rebalancing, &names, &namespace, &ring.members).await;
            status.epoch = epoch;
            pin_pending = epoch == 0;
            if let Some((factor, vnodes)) = layout.or((epoch > 0).then_some(wanted_layout)) {
                status.replication_factor = Some(factor);
                status.vnodes = Some(vnodes);
            }
        }
        status.target_members.clear();
        status.phase = "Done".into();
        status.message = format!(
            "ring epoch {} in force with {} servers",
            status.epoch,
            status.members.len()
        );
        return RingOutcome {
            pin_pending,
            rebalancing: (
                false,
                rebalancing_reasons::BALANCED.into(),
                status.message.clone(),
            ),
            status,
        };
    }
    let mut from_to = format!("{} -> {} servers", ring.members.len(), ring.target.len());
    // Layout changes as far as the status knows them (an unknown one is only being checked).
    if let Some(was) = previous
        .replication_factor
        .filter(|f| *f != wanted_layout.0)
    {
        from_to.push_str(&format!(
            ", replication factor {was} -> {}",
            wanted_layout.0
        ));
    }
    if let Some(was) = previous.vnodes.filter(|v| *v != wanted_layout.1) {
        from_to.push_str(&format!(", vnodes {was} -> {}", wanted_layout.1));
    }

    // Scale up: no key moves before every server is up (the first round names them all).
    let started = previous.next_epoch.is_some()
        || [
            "Announcing",
            "Copying",
            "Draining",
            "Switching",
            "CleaningUp",
        ]
        .contains(&previous.phase.as_str());
    let ready = ready_servers(sts);
    if ring.grows() && !started && ready < plan.replicas {
        status.phase = rebalancing_reasons::WAITING_FOR_SERVERS.into();
        status.message = format!(
            "{from_to}: waiting for the new servers to start ({ready}/{} ready)",
            plan.replicas
        );
        return RingOutcome {
            pin_pending: false,
            rebalancing: (true, status.phase.clone(), status.message.clone()),
            status,
        };
    }

    // Seeds: every server that exists or may (a server a ring names the coordinator finds
    // anyway, by asking the others).
    let running = sts
        .status
        .as_ref()
        .map_or(0, |s| s.replicas)
        .max(plan.replicas);
    let mut seeds: Vec<String> = names.server_pods(running);
    for name in ring.members.iter().chain(&ring.next_members) {
        if !seeds.contains(name) {
            seeds.push(name.clone());
        }
    }
    let seeds: Vec<RingMember> = seeds
        .iter()
        .map(|pod| rebalancing.member(&names, &namespace, pod))
        .collect();
    let target = Target {
        members: ring
            .target
            .iter()
            .map(|pod| rebalancing.member(&names, &namespace, pod))
            .collect(),
        vnodes: usize::try_from(spec.vnodes).ok(),
        replication_factor: usize::try_from(spec.replication.factor).ok(),
    };
    let round = match rebalancing.stepper.step(&seeds, &target).await {
        Ok(round) => round,
        Err(why) => {
            tracing::warn!(%why, "no rebalancing decision this round");
            status.phase = if started {
                previous.phase.clone()
            } else {
                rebalancing_reasons::UNREACHABLE.into()
            };
            status.message = format!("{from_to}: {why}");
            return RingOutcome {
                pin_pending: false,
                rebalancing: (
                    true,
                    rebalancing_reasons::UNREACHABLE.into(),
                    status.message.clone(),
                ),
                status,
            };
        }
    };
    let progress = &round.progress;
    if let Some(state) = &round.state {
        (status.replication_factor, status.vnodes) = layout_of(state);
        status.members = by_ordinal(state.current.names());
        status.next_members = state
            .next
            .as_ref()
            .map(|n| by_ordinal(n.names()))
            .unwrap_or_default();
    }
    status.epoch = int(progress.epoch);
    status.next_epoch = progress.next_epoch.map(int);
    status.phase = progress.phase.as_str().into();
    status.copied_versions = int(progress.copied_versions);
    let cleaned_before = if started {
        previous.cleaned_versions
    } else {
        0
    };
    status.cleaned_versions = cleaned_before.saturating_add(int(progress.cleaned_versions));
    status.waiting_for = progress.waiting_for.clone();
    if progress.next_epoch.is_some() {
        let (copied, all) = progress.copied_servers;
        status.copied_servers = Some(format!("{copied}/{all}"));
    }
    if progress.done() {
        status.members = ring.target.clone();
        // The spec's layout, not the observed one: servers cap R at the members, so a factor
        // above them is "in force" without a new configuration (the coordinator is done), and
        // recording the servers' lower number would start a round at every pass.
        status.replication_factor = Some(wanted_layout.0);
        status.vnodes = Some(wanted_layout.1);
        status.next_members.clear();
        status.next_epoch = None;
        status.target_members.clear();
        status.message = format!(
            "{from_to} done: ring epoch {} in force, {} versions cleaned up",
            progress.epoch, status.cleaned_versions
        );
        tracing::info!(
            epoch = progress.epoch,
            servers = ring.target.len(),
            "rebalanced"
        );
        return RingOutcome {
            pin_pending: false,
            rebalancing: (
                false,
                rebalancing_reasons::BALANCED.into(),
                status.message.clone(),
            ),
            status,
        };
    }
    status.message = progress.message.clone();
    let mut message = format!("{from_to}, epoch {}", progress.epoch);
    if let Some(next) = progress.next_epoch {
        message.push_str(&format!(" -> {next}"));
    }
    message.push_str(&format!(": {}", progress.message));
    if let Some(copied) = &status.copied_servers {
        message.push_str(&format!(
            "; {copied} servers copied, {} versions copied",
            progress.copied_versions
        ));
    }
    if !progress.waiting_for.is_empty() {
        message.push_str(&format!(
            "; waiting for {}",
            progress.waiting_for.join(", ")
        ));
    }
    tracing::info!(phase = progress.phase.as_str(), "{message}");
    RingOutcome {
        pin_pending: false,
        rebalancing: (true, status.phase.clone(), message),
        status,
    }
}

/// Pins the servers' flags-derived ring (epoch 0) as epoch 1 (a coordinator round does it,
/// then a second one sees it done): gateways then route by a ring configuration, and a new
/// server among the Service's endpoints takes no key before a move names it. Returns the
/// epoch in force, 0 when the servers could not be reached (the next pass tries again), and
/// the layout (replication factor, vnodes) in force when a server reported it.
async fn pin(
    rebalancing: &Rebalancing,
    names: &Names,
    namespace: &str,
    members: &[String],
) -> (i64, Option<(i32, i32)>) {
    let members: Vec<RingMember> = members
        .iter()
        .map(|pod| rebalancing.member(names, namespace, pod))
        .collect();
    // R and vnodes as the servers have them: a pin must never start a move.
    let target = Target {
        members: members.clone(),
        vnodes: None,
        replication_factor: None,
    };
    for _ in 0..2 {
        match rebalancing.stepper.step(&members, &target).await {
            Ok(round) if round.progress.done() => {
                let layout = round.state.as_ref().map(layout_of);
                let layout = layout.and_then(|(factor, vnodes)| Some((factor?, vnodes?)));
                return (int(round.progress.epoch), layout);
            }
            Ok(_) => {}
            Err(why) => {
                tracing::warn!(%why, "cannot pin the ring yet");
                return (0, None);
            }
        }
    }
    (0, None)
}

/// (replication factor as configured, vnodes) of the configuration in force.
fn layout_of(state: &RingState) -> (Option<i32>, Option<i32>) {
    (
        i32::try_from(state.current.replication_factor).ok(),
        i32::try_from(state.current.vnodes).ok(),
    )
}

/// A counter as the status holds it (Kubernetes schemas know int64, not uint64).
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Ready servers of the StatefulSet, counted only once its status describes its spec.
fn ready_servers(sts: &StatefulSet) -> i32 {
    let Some(status) = &sts.status else { return 0 };
    if status.observed_generation < sts.metadata.generation {
        return 0;
    }
    status.ready_replicas.unwrap_or(0)
}

/// Names ordered by pod ordinal (`-2` before `-10`), the way the status lists servers.
fn by_ordinal(names: Vec<&str>) -> Vec<String> {
    let mut out: Vec<String> = names.into_iter().map(str::to_owned).collect();
    out.sort_by_key(|n| (ordinal(n), n.clone()));
    out
}
