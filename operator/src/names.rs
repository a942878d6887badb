//! Names and labels of a KvCluster's children, in one place so the renderer, the reconciler
//! and the status agree (the gateway finds servers through these names).

use std::collections::BTreeMap;

/// The one server-side-apply field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "kv-operator";

/// Port of `kv-server` (its default `--listen`) and of `kv-gateway`.
pub const SERVER_PORT: i32 = 8080;
pub const GATEWAY_PORT: i32 = 8000;
/// The gateway picks the Service port named `http` (its `--k8s-port-name` default).
pub const PORT_NAME: &str = "http";
/// The servers' `--metrics-listen` port: `/metrics` and `/health` only, open to any scraper.
pub const METRICS_PORT: i32 = 9090;
pub const METRICS_PORT_NAME: &str = "metrics";
/// Name of the volume claim template: claims are `data-<statefulset>-<ordinal>`.
pub const DATA_VOLUME: &str = "data";
pub const DATA_DIR: &str = "/data";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Server,
    Gateway,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Server => "server",
            Component::Gateway => "gateway",
        }
    }
}

/// Names derived from one KvCluster's name.
#[derive(Debug, Clone)]
pub struct Names {
    pub cluster: String,
}

impl Names {
    pub fn new(cluster: &str) -> Self {
        Names {
            cluster: cluster.to_owned(),
        }
    }

    /// StatefulSet, headless Service, PodDisruptionBudget and NetworkPolicy of the servers.
    pub fn server(&self) -> String {
        format!("{}-server", self.cluster)
    }

    /// Deployment, Service, ServiceAccount, Role and RoleBinding of the gateway.
    pub fn gateway(&self) -> String {
        format!("{}-gateway", self.cluster)
    }

    /// Ring names of the servers: their pod hostnames, stable across restarts.
    pub fn server_pods(&self, replicas: i32) -> Vec<String> {
        (0..replicas.max(0))
            .map(|i| format!("{}-{i}", self.server()))
            .collect()
    }

    /// A server's URL by the DNS name its headless Service gives its pod: how servers name
    /// each other (`KV_PEERS`, ring configurations) and how the operator reaches them.
    pub fn server_url(&self, pod: &str, namespace: &str) -> String {
        format!(
            "http://{pod}.{}.{namespace}.svc:{SERVER_PORT}",
            self.server()
        )
    }

    pub fn data_claim(&self, ordinal: i32) -> String {
        format!("{DATA_VOLUME}-{}-{ordinal}", self.server())
    }

    /// Labels that select a component's pods. Never change these: selectors are immutable.
    pub fn selector(&self, component: Component) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "kvstore".to_owned()),
            (
                "app.kubernetes.io/instance".to_owned(),
                self.cluster.clone(),
            ),
            (
                "app.kubernetes.io/component".to_owned(),
                component.as_str().to_owned(),
            ),
        ])
    }

    /// Labels on every object of a component.
    pub fn labels(&self, component: Component) -> BTreeMap<String, String> {
        let mut labels = self.selector(component);
        labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
        labels
    }

    /// `selector(Server)` as a label-selector string (the scale subresource's selector).
    pub fn server_selector_string(&self) -> String {
        self.selector(Component::Server)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}
