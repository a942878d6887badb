//! kvstore's Kubernetes custom resource: `KvCluster` (`kvstore.dev/v1alpha1`).
//!
//! Architecture Invariant: this crate is a leaf of types only. It depends on kube's derive
//! macros, k8s-openapi and schemars, never on a client, tokio or the operator, so anything
//! (the operator, the CLI, tests) can read and write `KvCluster`s without a runtime.
//!
//! The CRD YAML committed beside this crate (`kvcluster.yaml`) is generated from these types by
//! the `crdgen` binary and held by a test; see [`crd_yaml`].

mod env;
mod spec;
mod status;

pub use env::{ENV_NAME_PATTERN, ExtraEnv, GATEWAY_MANAGED_ENV, MAX_EXTRA_ENV, SERVER_MANAGED_ENV};

pub use spec::{
    AuthSpec, BYTE_SIZE_PATTERN, DEFAULT_MAX_VALUE_BYTES, DEFAULT_REPLICATION_TIMEOUT_SECONDS,
    GatewayServiceSpec, GatewaySpec, ImageSpec, KvCluster, KvClusterSpec, LOG_FILTER_PATTERN,
    MAX_REPLICATION_TIMEOUT_SECONDS, MAX_VALUE_BYTES, PdbSpec, PullPolicy, PvcRetention,
    ReplicationSpec, RetentionPolicy, Scheduling, ServerSpec, ServiceType, StorageSpec, SyncMode,
};
pub use status::{KvClusterStatus, Phase, RingStatus, condition_types, rebalancing_reasons};

use kube::CustomResourceExt;

/// API group of every kvstore resource (must match the `#[kube(group)]` attribute).
pub const GROUP: &str = "kvstore.dev";

/// The committed CRD file, relative to this crate's folder.
pub const CRD_FILE: &str = "kvcluster.yaml";

/// The CRD as YAML, exactly as committed in `crds/kvcluster.yaml` (with its header).
pub fn crd_yaml() -> String {
    let body = serde_saphyr::to_string(&KvCluster::crd()).expect("a CRD always serializes");
    format!(
        "# Generated from crds/src by `cargo run -p kv-crds --bin crdgen`: do not edit by hand.\n\
         # Install or upgrade with `kubectl apply --server-side -f crds/kvcluster.yaml`\n\
         # (Helm never upgrades CRDs it installed from a chart's crds/ folder).\n\
         {body}"
    )
}
