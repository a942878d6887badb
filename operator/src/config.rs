//! The operator's configuration: clap flags with environment fallbacks. `RenderConfig` is
//! the part the pure renderer needs, kept apart so tests build it without a command line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// Images used when a KvCluster does not name its own: the operator's own release.
pub const DEFAULT_SERVER_IMAGE: &str = concat!("kvstore/kv-server:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_GATEWAY_IMAGE: &str = concat!("kvstore/kv-gateway:", env!("CARGO_PKG_VERSION"));

/// Flatten into the binary's parser (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorConfig {
    /// Address of the operator's own `/health` and `/metrics`.
    #[arg(long, env = "KV_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Watch KvClusters of this namespace only (default: all namespaces).
    #[arg(long, env = "KV_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    #[command(flatten)]
    pub render: RenderConfig,

    #[command(flatten)]
    pub leader: LeaderConfig,
}

/// What the renderer takes from the operator rather than from the KvCluster.
#[derive(Debug, Clone, clap::Args)]
pub struct RenderConfig {
    /// `kv-server` image for clusters that do not set `spec.image.server`.
    #[arg(long, env = "KV_SERVER_IMAGE", default_value = DEFAULT_SERVER_IMAGE)]
    pub server_image: String,

    /// `kv-gateway` image for clusters that do not set `spec.image.gateway`.
    #[arg(long, env = "KV_GATEWAY_IMAGE", default_value = DEFAULT_GATEWAY_IMAGE)]
    pub gateway_image: String,

    /// Namespace the operator runs in (the chart sets it from the downward API). The servers'
    /// NetworkPolicy lets the operator's pods of this namespace in (the operator moves keys
    /// through the servers' `/internal/` routes); unset: its pods of any namespace.
    #[arg(long, env = "KV_OPERATOR_NAMESPACE")]
    pub operator_namespace: Option<String>,

    /// Labels of the operator's own pods, `key=value,...` (the chart's selector labels).
    #[arg(long, env = "KV_OPERATOR_POD_LABELS", default_value = DEFAULT_OPERATOR_POD_LABELS)]
    pub operator_pod_labels: PodLabels,
}

/// The operator pods' label the chart always sets.
pub const DEFAULT_OPERATOR_POD_LABELS: &str = "app.kubernetes.io/name=kvstore-operator";

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            server_image: DEFAULT_SERVER_IMAGE.into(),
            gateway_image: DEFAULT_GATEWAY_IMAGE.into(),
            operator_namespace: None,
            operator_pod_labels: DEFAULT_OPERATOR_POD_LABELS
                .parse()
                .expect("valid default labels"),
        }
    }
}

/// Pod labels given as `key=value,...`: at least one, none empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLabels(pub BTreeMap<String, String>);

impl FromStr for PodLabels {
    type Err = String;

    fn from_str(raw: &str) -> Result<PodLabels, String> {
        let mut labels = BTreeMap::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| format!("'{entry}' is not key=value"))?;
            if key.trim().is_empty() {
                return Err(format!("'{entry}' has an empty key"));
            }
            labels.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        if labels.is_empty() {
            return Err("at least one label (key=value) is needed".into());
        }
        Ok(PodLabels(labels))
    }
}

/// Leader election on a `coordination.k8s.io` Lease, so two replicas never both reconcile.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderConfig {
    /// Run without leader election (a single replica, or local development).
    #[arg(long, env = "KV_OPERATOR_NO_LEADER_ELECTION")]
    pub no_leader_election: bool,

    /// Name of the Lease.
    #[arg(
        long,
        env = "KV_OPERATOR_LEASE_NAME",
        default_value = "kv-operator-leader"
    )]
    pub lease_name: String,

    /// Namespace of the Lease (set it to the operator's own, e.g. from the downward API).
    #[arg(long, env = "KV_OPERATOR_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease (the pod name is a good one).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, env = "KV_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
}

impl LeaderConfig {
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }
}
