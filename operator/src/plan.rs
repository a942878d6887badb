//! What the reconciler will actually do with a spec, given what already runs: a pure function.
//!
//! - The number of servers: a change moves keys between servers (docs/rebalancing.md). The
//!   StatefulSet runs every server of the ring in force and of the target, so on scale up the
//!   new pods start before any key moves, and on scale down the old ones run until the keys
//!   have left them ([`RingPlan`]). The seeds (`KV_PEERS`) never change after creation.
//! - A volume change the StatefulSet cannot make: `volumeClaimTemplates` are immutable, so the
//!   existing template is kept; a larger size is applied to the existing claims instead
//!   (volume expansion), a smaller size or another class is refused.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kv_crds::{KvCluster, StorageSpec};

use crate::names::Names;

/// Reasons of refusals, used for the `Degraded` condition and the Event.
pub mod reasons {
    pub const STORAGE_CLASS_IMMUTABLE: &str = "StorageClassImmutable";
    pub const STORAGE_SHRINK_REFUSED: &str = "StorageShrinkRefused";
    pub const STORAGE_EXPANSION_FAILED: &str = "StorageExpansionFailed";
}

/// A part of the spec that is not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// The ring: where it is, where the spec wants it, and whether keys must move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingPlan {
    /// The first ring's servers: every server's `KV_PEERS`, fixed for the cluster's life.
    pub seeds: Vec<String>,
    /// Servers of the ring in force, as the status last recorded it (the seeds at first).
    pub members: Vec<String>,
    /// Servers of the ring being moved to, as the status last recorded it.
    pub next_members: Vec<String>,
    /// Servers the spec asks for: pods `0..spec.replicas`.
    pub target: Vec<String>,
    /// The spec's replication factor and vnodes differ from the ring in force's (or the
    /// status does not know those yet: a round finds out, and moves keys if they differ).
    pub relayout: bool,
    /// Keys must move (the target is not in force), or a move is not finished yet.
    pub moving: bool,
}

impl RingPlan {
    /// Scale up: the target has servers the ring in force does not.
    pub fn grows(&self) -> bool {
        self.target.iter().any(|t| !self.members.contains(t))
    }
}

/// The reconciler's decisions for one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Servers to run (the StatefulSet's replicas): the target's, and during a move also
    /// every server of the rings in force and being moved to.
    pub replicas: i32,
    pub ring: RingPlan,
    /// The StatefulSet's volume claim template.
    pub storage: StorageSpec,
    /// Grow the existing claims to this size.
    pub expand_to: Option<Quantity>,
    pub refusals: Vec<Refusal>,
}

impl Plan {
    /// The plan for `cluster` given its StatefulSet, if one exists.
    pub fn new(cluster: &KvCluster, existing: Option<&StatefulSet>) -> Plan {
        let spec = &cluster.spec;
        let mut plan = Plan {
            replicas: spec.replicas,
            ring: RingPlan::new(cluster, existing),
            storage: spec.storage.clone(),
            expand_to: None,
            refusals: Vec::new(),
        };
        // Every server of the rings in force and being moved to keeps running.
        plan.replicas = plan
            .ring
            .target
            .iter()
            .chain(&plan.ring.members)
            .chain(&plan.ring.next_members)
            .filter_map(|name| ordinal(name))
            .map(|o| o + 1)
            .max()
            .unwrap_or(spec.replicas)
            .max(plan.ring.target.len() as i32);
        let Some(sts) = existing else { return plan };
        if let Some(current) = current_storage(sts) {
            plan.storage = current.clone();
            plan.check_storage(&spec.storage, &current);
        }
        plan
    }

    fn check_storage(&mut self, wanted: &StorageSpec, current: &StorageSpec) {
        if let Some(class) = &wanted.storage_class_name
            && current.storage_class_name.as_ref() != Some(class)
        {
            let have = current
                .storage_class_name
                .as_deref()
                .unwrap_or("the default class");
            self.refusals.push(Refusal {
                reason: reasons::STORAGE_CLASS_IMMUTABLE,
                message: format!(
                    "spec.storage.storageClassName is {class} but the servers' volumes use {have}, \
                     and a volume's class cannot change. Set it back, or move the data to a new \
                     KvCluster with the new class."
                ),
            });
        }
        let (want, have) = (&wanted.size.0, &current.size.0);
        match (parse_bytes(want), parse_bytes(have)) {
            (Some(w), Some(h)) if w > h => self.expand_to = Some(wanted.size.clone()),
            (Some(w), Some(h)) if w < h => self.refusals.push(Refusal {
                reason: reasons::STORAGE_SHRINK_REFUSED,
                message: format!(
                    "spec.storage.size {want} is smaller than the servers' volumes ({have}), and \
                     volumes cannot shrink. Set it back to at least {have}."
                ),
            }),
            _ => {}
        }
    }

    /// The claims were not expanded (their storage class does not allow it, usually).
    pub fn expansion_failed(&mut self, detail: &str) {
        let want = self.expand_to.take().map(|q| q.0).unwrap_or_default();
        self.refusals.push(Refusal {
            reason: reasons::STORAGE_EXPANSION_FAILED,
            message: format!(
                "could not grow the servers' volumes from {} to {want}: {detail}. Use a storage \
                 class with allowVolumeExpansion: true, or set spec.storage.size back to {}.",
                self.storage.size.0, self.storage.size.0
            ),
        });
    }
}

impl RingPlan {
    fn new(cluster: &KvCluster, existing: Option<&StatefulSet>) -> RingPlan {
        let names = Names::new(&cluster.name_any());
        let ring = cluster.status.as_ref().and_then(|s| s.ring.as_ref());
        // The seeds: recorded at creation; for a cluster from before they were recorded, the
        // peers its pods already run with; for a new one, the servers asked for.
        let seeds = match ring.filter(|r| !r.seeds.is_empty()) {
            Some(ring) => ring.seeds.clone(),
            None => existing
                .map(|sts| {
                    let peers = peers_of(sts);
                    if peers.is_empty() {
                        let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                        names.server_pods(replicas)
                    } else {
                        peers
                    }
                })
                .unwrap_or_else(|| names.server_pods(cluster.spec.replicas)),
        };
        let members = ring
            .map(|r| r.members.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| seeds.clone());
        let next_members = ring.map(|r| r.next_members.clone()).unwrap_or_default();
        let target = names.server_pods(cluster.spec.replicas);
        let unfinished = ring.is_some_and(|r| !r.phase.is_empty() && r.phase != "Done");
        // Before the first ring is pinned the servers' flags are the spec's (KV_VNODES,
        // KV_REPLICATION_FACTOR) and the pin records them; after it, the recorded ring decides.
        let spec = &cluster.spec;
        let relayout = ring.is_some_and(|r| {
            r.epoch > 0
                && (r.replication_factor != Some(spec.replication.factor)
                    || r.vnodes != Some(spec.vnodes))
        });
        RingPlan {
            moving: unfinished || relayout || sorted(&target) != sorted(&members),
            seeds,
            members,
            next_members,
            target,
            relayout,
        }
    }
}

fn sorted(names: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = names.iter().map(String::as_str).collect();
    out.sort_unstable();
    out
}

/// A server's ordinal, from its pod name (`<statefulset>-<ordinal>`).
pub fn ordinal(pod: &str) -> Option<i32> {
    pod.rsplit_once('-')?.1.parse().ok()
}

/// The names in the StatefulSet's `KV_PEERS` (`NAME=URL,...`).
fn peers_of(sts: &StatefulSet) -> Vec<String> {
    let env = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.env.as_ref());
    env.into_iter()
        .flatten()
        .find(|e| e.name == "KV_PEERS")
        .and_then(|e| e.value.as_deref())
        .map(|list| {
            list.split(',')
                .filter_map(|entry| entry.split_once('=').map(|(n, _)| n.trim().to_owned()))
                .filter(|n| !n.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The storage the StatefulSet's `data` claim template asks for.
fn current_storage(sts: &StatefulSet) -> Option<StorageSpec> {
    let template = sts
        .spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .first()?;
    let spec = template.spec.as_ref()?;
    let size = spec
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?
        .clone();
    Some(StorageSpec {
        size,
        storage_class_name: spec.storage_class_name.clone(),
    })
}

/// Bytes of a Kubernetes quantity (`1Gi`, `500M`, `1.5Ti`, `1e9`); `None` if unreadable, in
/// which case no decision is made on it.
pub fn parse_bytes(quantity: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024f64),
        ("Mi", 1_048_576f64),
        ("Gi", 1_073_741_824f64),
        ("Ti", 1_099_511_627_776f64),
        ("Pi", 1_125_899_906_842_624f64),
        ("Ei", 1_152_921_504_606_846_976f64),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let q = quantity.trim();
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = q.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    q.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_bytes("1Gi"), Some(1_073_741_824.0));
        assert_eq!(parse_bytes("500M"), Some(5e8));
        assert_eq!(parse_bytes("1.5Ki"), Some(1536.0));
        assert_eq!(parse_bytes("1e3"), Some(1000.0));
        assert!(parse_bytes("2Gi").unwrap() > parse_bytes("2G").unwrap());
        assert_eq!(parse_bytes("lots"), None);
    }

    /// A 3-server cluster whose recorded ring is `epoch` with the given layout.
    fn cluster(factor: i32, epoch: i64, layout: Option<(i32, i32)>) -> KvCluster {
        let mut cluster = KvCluster::new(
            "demo",
            kv_crds::KvClusterSpec {
                replication: kv_crds::ReplicationSpec {
                    factor,
                    ..kv_crds::ReplicationSpec::default()
                },
                ..kv_crds::KvClusterSpec::default()
            },
        );
        let pods: Vec<String> = (0..3).map(|i| format!("demo-server-{i}")).collect();
        cluster.status = Some(kv_crds::KvClusterStatus {
            ring: Some(kv_crds::RingStatus {
                seeds: pods.clone(),
                members: pods,
                epoch,
                phase: "Done".into(),
                replication_factor: layout.map(|l| l.0),
                vnodes: layout.map(|l| l.1),
                ..kv_crds::RingStatus::default()
            }),
            ..kv_crds::KvClusterStatus::default()
        });
        cluster
    }

    #[test]
    fn a_new_replication_factor_or_vnodes_moves_keys_once_the_ring_is_pinned() {
        let ring = |c: &KvCluster| Plan::new(c, None).ring;
        let settled = ring(&cluster(3, 1, Some((3, 150))));
        assert!(!settled.moving && !settled.relayout);
        let refactored = ring(&cluster(2, 1, Some((3, 150))));
        assert!(refactored.moving && refactored.relayout);
        assert_eq!(refactored.target, refactored.members, "the same servers");
        let mut revnoded = cluster(3, 1, Some((3, 150)));
        revnoded.spec.vnodes = 200;
        assert!(ring(&revnoded).relayout);
        // A ring pinned before the layout was recorded: one round finds out.
        assert!(ring(&cluster(3, 1, None)).relayout);
        // Not pinned yet: the servers run with the spec's flags, which the pin records.
        let unpinned = ring(&cluster(2, 0, None));
        assert!(!unpinned.moving && !unpinned.relayout);
    }
}
