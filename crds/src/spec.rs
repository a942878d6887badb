//! `KvClusterSpec`: what a user asks for. Every field has a documented default, so
//! `spec: {}` is a valid three-server cluster; bounds and enums live in the schema so that
//! `kubectl apply` rejects a bad spec before the operator ever sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::env::{ExtraEnv, gateway_env_list, server_env_list};
use crate::status::KvClusterStatus;

/// A kvstore cluster: a StatefulSet of storage servers behind a gateway Deployment.
// Each `printcolumn(...)` repeats `type_ = ...`: that is kube's syntax, not a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kvstore.dev",
    version = "v1alpha1",
    kind = "KvCluster",
    plural = "kvclusters",
    shortname = "kvc",
    category = "kvstore",
    namespaced,
    status = "KvClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Servers", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Gateway",
        type_ = "string",
        json_path = ".status.gatewayEndpoint"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", default)]
pub struct KvClusterSpec {
    /// Number of storage servers (default 3). Changing it on a running cluster moves keys while
    /// the cluster serves (docs/rebalancing.md): on scale up the new servers start first, on
    /// scale down the StatefulSet shrinks only once the keys have left; the `Rebalancing`
    /// condition and `status.ring` show the progress.
    #[schemars(range(min = 1, max = 64))]
    pub replicas: i32,

    /// Virtual nodes per server on the hash ring shared by the gateway and the servers
    /// (default 150, the seed's placement).
    #[schemars(range(min = 1, max = 4096))]
    pub vnodes: i32,

    /// Copies of every version (see docs/replication.md).
    pub replication: ReplicationSpec,

    /// Container images (default: the operator's own release of each).
    pub image: ImageSpec,

    /// Per-server persistent volume.
    pub storage: StorageSpec,

    /// Storage server settings.
    pub server: ServerSpec,

    /// Gateway settings.
    pub gateway: GatewaySpec,

    /// PodDisruptionBudget over the servers.
    pub pod_disruption_budget: PdbSpec,

    /// What happens to the servers' PersistentVolumeClaims.
    pub pvc_retention: PvcRetention,

    /// API-token authentication at the gateway (off when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
}

impl Default for KvClusterSpec {
    fn default() -> Self {
        KvClusterSpec {
            replicas: 3,
            vnodes: 150,
            replication: ReplicationSpec::default(),
            image: ImageSpec::default(),
            storage: StorageSpec::default(),
            server: ServerSpec::default(),
            gateway: GatewaySpec::default(),
            pod_disruption_budget: PdbSpec::default(),
            pvc_retention: PvcRetention::default(),
            auth: None,
        }
    }
}

/// Replication: every version of a key is stored on `factor` servers, and a put is answered
/// once `writeQuorum` of them hold it. The factor in force is `min(factor, replicas)`, the
/// quorum `min(writeQuorum, that factor)`.
// Field-level defaults: `KubeSchema` (for the CEL rule) cannot use a container `default`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.writeQuorum) || self.writeQuorum <= self.factor")
    .message("writeQuorum must not exceed factor"))]
pub struct ReplicationSpec {
    /// Servers holding each key (default 3; 1 = no replication).
    #[serde(default = "default_factor")]
    #[schemars(range(min = 1, max = 64))]
    pub factor: i32,
    /// Servers that must hold a version before a put is answered (default: a majority of the
    /// factor, 2 of 3). At most `factor`. An answered version survives the loss of
    /// `writeQuorum - 1` servers; writes go on with `factor - writeQuorum` replicas down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub write_quorum: Option<i32>,
    /// How long a put waits for its write quorum before it is answered `503 quorum_failed`
    /// (default 2; at most 300). Raise it for large values or slow disks: a primary also
    /// counts a replica unreachable once a put waited this long for it. Gateways wait 8 s
    /// longer, and at least 10 s.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = MAX_REPLICATION_TIMEOUT_SECONDS))]
    pub timeout_seconds: i32,
}

/// `kv-server --replication-timeout-ms`, in seconds: its default (kv-common's
/// `replication::DEFAULT_REPLICATION_TIMEOUT_MS`; the operator's tests hold them equal, this
/// crate stays a leaf) and the most the CRD takes.
pub const DEFAULT_REPLICATION_TIMEOUT_SECONDS: i32 = 2;
pub const MAX_REPLICATION_TIMEOUT_SECONDS: i32 = 300;

fn default_factor() -> i32 {
    3
}

fn default_timeout_seconds() -> i32 {
    DEFAULT_REPLICATION_TIMEOUT_SECONDS
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        ReplicationSpec {
            factor: default_factor(),
            write_quorum: None,
            timeout_seconds: default_timeout_seconds(),
        }
    }
}

impl ReplicationSpec {
    /// The (factor, write quorum) in force with `servers` servers: the factor capped at the
    /// number of servers, the quorum (when set) capped at that factor.
    pub fn effective(&self, servers: i32) -> (i32, Option<i32>) {
        let factor = self.factor.min(servers).max(1);
        (factor, self.write_quorum.map(|w| w.clamp(1, factor)))
    }
}

/// Images and how to pull them.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ImageSpec {
    /// `kv-server` image; the operator's default when empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// `kv-gateway` image; the operator's default when empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub pull_policy: PullPolicy,
    /// Names of image pull Secrets in the cluster's namespace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

/// One volume per server, from the StatefulSet's `volumeClaimTemplates`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct StorageSpec {
    /// Requested size (default 1Gi). Growing it expands existing claims where the storage
    /// class allows it; shrinking is refused.
    pub size: Quantity,
    /// Storage class (default: the cluster's default class). Fixed once the cluster exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: Quantity("1Gi".into()),
            storage_class_name: None,
        }
    }
}

/// The sizes `kv-server --cache-max-bytes` accepts (kv-common's `bytesize::PATTERN`; the
/// operator's tests hold the two equal, this crate stays a leaf).
pub const BYTE_SIZE_PATTERN: &str = "^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$";

/// `kv-server --max-value-bytes`: its default and the most it accepts (kv-common's
/// `api::DEFAULT_MAX_VALUE_BYTES` and `api::MAX_VALUE_BYTES_LIMIT`; the operator's tests hold
/// them equal, this crate stays a leaf).
pub const DEFAULT_MAX_VALUE_BYTES: i32 = 1 << 20;
pub const MAX_VALUE_BYTES: i32 = 64 << 20;

/// The log filters `logLevel` accepts: a level, or `target=level`, comma-separated
/// (kv-common's `telemetry::LOG_FILTER_PATTERN`; the operator's tests hold the two equal, this
/// crate stays a leaf).
pub const LOG_FILTER_PATTERN: &str = "^(off|error|warn|info|debug|trace|[A-Za-z0-9_:]+=(off|error|warn|info|debug|trace))(,(off|error|warn|info|debug|trace|[A-Za-z0-9_:]+=(off|error|warn|info|debug|trace)))*$";

/// Storage server (`kv-server`) settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ServerSpec {
    /// Keys held in each server's LRU cache (default 100; 0 disables it).
    #[schemars(range(min = 0))]
    pub cache_size: i32,
    /// Memory each server's cache may hold, as whole bytes or with a suffix Ki, Mi, Gi, Ti
    /// or k, M, G, T (default `64Mi`; `0` disables the cache). Whichever of this and
    /// `cacheSize` is reached first evicts. Leave room for it in `resources.limits.memory`.
    #[schemars(pattern(BYTE_SIZE_PATTERN))]
    pub cache_max_bytes: String,
    /// Largest value a put may store, in bytes (default 1048576, 1 MiB; at most 67108864,
    /// 64 MiB). A larger value is refused with 413 and nothing is stored. Gateways are given
    /// room for it: above 16 MiB their request limit is raised to this plus 64 KiB.
    #[schemars(range(min = 1, max = MAX_VALUE_BYTES))]
    pub max_value_bytes: i32,
    /// `Full` fsyncs every commit (default); `Normal` survives a process crash, not power loss.
    pub sync: SyncMode,
    /// The servers' log filter (default `info`): a level (`off`, `error`, `warn`, `info`,
    /// `debug`, `trace`), or `target=level`, comma-separated, e.g.
    /// `info,kv_server::replication=debug`. Changing it restarts the servers one at a time.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(LOG_FILTER_PATTERN), length(max = 1024))]
    pub log_level: Option<String>,
    /// Environment variables added to each server's container, after the operator's: for the
    /// `kv-server` flags this spec does not cover (`KV_READERS`, `KV_WRITE_QUEUE`,
    /// `KV_CATCH_UP_INTERVAL_MS`, `KV_CACHE_TTL_MINUTES`; see the README) and for the process
    /// (`RUST_BACKTRACE`). The variables the operator sets are refused. Changing it restarts
    /// the servers one at a time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = server_env_list)]
    pub env: Vec<ExtraEnv>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    pub scheduling: Scheduling,
}

impl Default for ServerSpec {
    fn default() -> Self {
        ServerSpec {
            cache_size: 100,
            cache_max_bytes: "64Mi".into(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            sync: SyncMode::Full,
            log_level: None,
            env: Vec::new(),
            resources: None,
            scheduling: Scheduling::default(),
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    #[default]
    Full,
    Normal,
}

impl SyncMode {
    /// The value of `kv-server --sync`.
    pub fn as_flag(self) -> &'static str {
        match self {
            SyncMode::Full => "full",
            SyncMode::Normal => "normal",
        }
    }
}

/// Gateway (`kv-gateway`) settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpec {
    /// Gateway pods (default 2). Any number: gateways hold no state.
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// The gateways' log filter (default `info`), written as `server.logLevel` is, e.g.
    /// `info,kv_gateway=debug`. Changing it restarts the gateways (a rolling update).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(LOG_FILTER_PATTERN), length(max = 1024))]
    pub log_level: Option<String>,
    /// Environment variables added to each gateway's container, after the operator's: for the
    /// `kv-gateway` flags this spec does not cover (`KV_WORKER_THREADS`,
    /// `KV_LINKS_PER_SERVER`, `KV_BACKEND_TRANSPORT`, `KV_HEALTH_INTERVAL_MS`,
    /// `KV_CONNECT_TIMEOUT_MS`; see the README) and for the process. The variables the
    /// operator sets are refused. Changing it restarts the gateways (a rolling update).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = gateway_env_list)]
    pub env: Vec<ExtraEnv>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    pub service: GatewayServiceSpec,
    pub scheduling: Scheduling,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        GatewaySpec {
            replicas: 2,
            log_level: None,
            env: Vec::new(),
            resources: None,
            service: GatewayServiceSpec::default(),
            scheduling: Scheduling::default(),
        }
    }
}

/// The gateway's Service, the only way into the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.nodePort) || self.type != 'ClusterIP'")
    .message("nodePort needs service type NodePort or LoadBalancer"))]
pub struct GatewayServiceSpec {
    /// Default ClusterIP.
    #[serde(rename = "type", default)]
    pub type_: ServiceType,
    /// Fixed node port (NodePort / LoadBalancer only); allocated by Kubernetes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Passed through unchanged to the pod template.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Scheduling {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
}

/// PodDisruptionBudget over the servers: a key is readable while one of its `factor` servers
/// is up, but writable only while its primary is (and acknowledged with `writeQuorum` of them),
/// so a drain should take servers one at a time.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PdbSpec {
    /// Default true.
    pub enabled: bool,
    /// Servers that may be down at once for voluntary disruptions (default 1).
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

impl Default for PdbSpec {
    fn default() -> Self {
        PdbSpec {
            enabled: true,
            max_unavailable: 1,
        }
    }
}

/// The StatefulSet's `persistentVolumeClaimRetentionPolicy`. `Retain` (the default) keeps data
/// when the cluster is deleted: deleting a database should take a deliberate second step.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PvcRetention {
    pub when_deleted: RetentionPolicy,
    pub when_scaled: RetentionPolicy,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetentionPolicy {
    #[default]
    Retain,
    Delete,
}

impl RetentionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionPolicy::Retain => "Retain",
            RetentionPolicy::Delete => "Delete",
        }
    }
}

/// The gateway's API token, read from a Secret in the cluster's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the token in the Secret (default `token`).
    #[serde(default = "default_auth_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_auth_key() -> String {
    "token".into()
}
