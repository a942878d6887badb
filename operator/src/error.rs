//! The operator library's one error type. `metric_label` names each failure in
//! `kv_operator_reconcile_failures_total{reason}`, so the labels stay a small fixed set.

/// Everything the operator library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A read or write against the API server failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[source] kube::Error),

    /// Server-side apply of one child object failed.
    #[error("applying {kind} {name} failed: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },

    /// The KvCluster lacks something every stored object has (namespace, uid).
    #[error("KvCluster has no {0}")]
    InvalidObject(&'static str),

    /// The KvCluster CRD is not served by the API server.
    #[error(
        "the KvCluster CRD (kvclusters.kvstore.dev) is not installed: {0}. Install it with \
         `kubectl apply --server-side -f crds/kvcluster.yaml` (or \
         `cargo run -p kv-crds --bin crdgen - | kubectl apply --server-side -f -`)"
    )]
    CrdMissing(String),

    /// Leader election could not run.
    #[error("leader election failed: {0}")]
    Lease(#[source] kube_lease_manager::LeaseManagerError),

    /// This replica lost the Lease while it was reconciling.
    #[error("lost leadership of the Lease; stopping so that another replica takes over")]
    LostLeadership,

    /// The health/metrics listener failed.
    #[error("HTTP server failed: {0}")]
    Io(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, bounded label for the failure counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::Apply { .. } => "apply",
            Error::InvalidObject(_) => "invalid_object",
            Error::CrdMissing(_) => "crd_missing",
            Error::Lease(_) => "lease",
            Error::LostLeadership => "lost_leadership",
            Error::Io(_) => "io",
        }
    }
}
