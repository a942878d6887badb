//! What the reconciler will actually do with a spec, given what already runs: a pure function.
//!
//! Two things a spec may ask for are not done (yet), and are reported instead of ignored:
//! - a different number of servers: it moves keys between servers, which needs rebalancing
//!   (a later issue). Until then the current size is kept, so no key is ever orphaned.
//! - a volume change the StatefulSet cannot make: `volumeClaimTemplates` are immutable, so the
//!   existing template is kept; a larger size is applied to the existing claims instead
//!   (volume expansion), a smaller size or another class is refused.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kv_crds::{KvCluster, StorageSpec};

/// Reasons of refusals, used for the `Degraded` condition and the Event.
pub mod reasons {
    pub const SCALE_NOT_SUPPORTED: &str = "ScaleNotSupported";
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

/// The reconciler's decisions for one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Servers to run.
    pub replicas: i32,
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
            storage: spec.storage.clone(),
            expand_to: None,
            refusals: Vec::new(),
        };
        let Some(sts) = existing else { return plan };
        let sts_spec = sts.spec.as_ref();
        if let Some(current) = sts_spec.and_then(|s| s.replicas)
            && current != spec.replicas
        {
            plan.replicas = current;
            plan.refusals.push(Refusal {
                reason: reasons::SCALE_NOT_SUPPORTED,
                message: format!(
                    "spec.replicas asks for {} servers but the cluster runs {current}: changing the \
                     number of servers moves keys between them, which needs rebalancing (not \
                     available yet). Keeping {current} servers; set spec.replicas back to \
                     {current} to clear this.",
                    spec.replicas
                ),
            });
        }
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
}
