//! Desired state as a pure function: a KvCluster (plus the operator's defaults and the plan's
//! decisions) in, every child object out. No I/O here, so golden files can hold it.
//!
//! Every child carries the cluster's controller owner reference, so deleting the KvCluster
//! deletes them; PVCs follow the StatefulSet's retention policy instead.

mod access;
mod gateway;
mod server;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use kv_crds::KvCluster;
use serde::Serialize;

pub use gateway::gateway_command;

use crate::config::RenderConfig;
use crate::error::{Error, Result};
use crate::names::{Component, Names};
use crate::plan::Plan;

/// Every object a KvCluster owns, in the order they are applied: permissions and Services
/// before the workloads that need them.
#[derive(Debug, Clone)]
pub struct Children {
    pub gateway_service_account: ServiceAccount,
    pub gateway_role: Role,
    pub gateway_role_binding: RoleBinding,
    pub server_service: Service,
    pub server_stateful_set: StatefulSet,
    pub gateway_service: Service,
    pub gateway_deployment: Deployment,
    /// `None` when `spec.podDisruptionBudget.enabled` is false (the reconciler deletes it).
    pub server_pdb: Option<PodDisruptionBudget>,
    pub server_network_policy: NetworkPolicy,
}

/// What every builder needs: the cluster, its names, namespace and owner reference.
pub(crate) struct Ctx<'a> {
    pub cluster: &'a KvCluster,
    pub names: Names,
    pub namespace: String,
    pub owner: OwnerReference,
    pub config: &'a RenderConfig,
    pub plan: &'a Plan,
}

impl Ctx<'_> {
    pub fn meta(&self, name: String, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.names.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// Renders every child of `cluster`. Fails only if the cluster lacks a namespace or uid.
pub fn render(cluster: &KvCluster, plan: &Plan, config: &RenderConfig) -> Result<Children> {
    let namespace = cluster
        .namespace()
        .ok_or(Error::InvalidObject("namespace"))?;
    let owner = cluster
        .controller_owner_ref(&())
        .ok_or(Error::InvalidObject("uid"))?;
    let ctx = Ctx {
        cluster,
        names: Names::new(&cluster.name_any()),
        namespace,
        owner,
        config,
        plan,
    };
    Ok(Children {
        gateway_service_account: access::service_account(&ctx),
        gateway_role: access::role(&ctx),
        gateway_role_binding: access::role_binding(&ctx),
        server_service: server::headless_service(&ctx),
        server_stateful_set: server::stateful_set(&ctx),
        gateway_service: gateway::service(&ctx),
        gateway_deployment: gateway::deployment(&ctx),
        server_pdb: access::pod_disruption_budget(&ctx),
        server_network_policy: access::network_policy(&ctx),
    })
}

impl Children {
    /// All children as one multi-document YAML stream, in apply order (the golden format).
    pub fn to_yaml(&self) -> String {
        fn doc<T: Serialize>(out: &mut String, obj: &T) {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(obj).expect("k8s objects serialize"));
        }
        let mut out = String::new();
        doc(&mut out, &self.gateway_service_account);
        doc(&mut out, &self.gateway_role);
        doc(&mut out, &self.gateway_role_binding);
        doc(&mut out, &self.server_service);
        doc(&mut out, &self.server_stateful_set);
        doc(&mut out, &self.gateway_service);
        doc(&mut out, &self.gateway_deployment);
        if let Some(pdb) = &self.server_pdb {
            doc(&mut out, pdb);
        }
        doc(&mut out, &self.server_network_policy);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_crds::{KvClusterSpec, ReplicationSpec};

    fn cluster(replicas: i32, replication: ReplicationSpec) -> KvCluster {
        let mut cluster = KvCluster::new(
            "demo",
            KvClusterSpec {
                replicas,
                replication,
                ..KvClusterSpec::default()
            },
        );
        cluster.meta_mut().namespace = Some("kv".into());
        cluster.meta_mut().uid = Some("00000000-0000-4000-8000-000000000000".into());
        cluster
    }

    /// A container's literal environment variables, as (name, value).
    type Env = Vec<(String, String)>;

    fn env_of(containers: &[k8s_openapi::api::core::v1::Container]) -> Env {
        containers[0]
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    }

    /// The environment of the servers and of the gateway.
    fn rendered(cluster: &KvCluster) -> (Env, Env) {
        let plan = Plan::new(cluster, None);
        let children = render(cluster, &plan, &RenderConfig::default()).unwrap();
        let pod = |t: Option<&k8s_openapi::api::core::v1::PodSpec>| env_of(&t.unwrap().containers);
        let sts = children.server_stateful_set.spec.unwrap();
        let deployment = children.gateway_deployment.spec.unwrap();
        (
            pod(sts.template.spec.as_ref()),
            pod(deployment.template.spec.as_ref()),
        )
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_crd_accepts_exactly_the_cache_sizes_the_server_parses() {
        // The CRD's pattern is what stops a bad size before it reaches a pod (where it would
        // crash-loop); it must be the server's own syntax.
        assert_eq!(kv_crds::BYTE_SIZE_PATTERN, kv_common::bytesize::PATTERN);
        let default = kv_crds::ServerSpec::default().cache_max_bytes;
        assert_eq!(kv_common::bytesize::parse(&default), Ok(64 << 20));
        let (server, _) = rendered(&cluster(3, ReplicationSpec::default()));
        assert_eq!(get(&server, "KV_CACHE_MAX_BYTES"), Some("64Mi"));
    }

    #[test]
    fn the_value_limit_reaches_the_servers_and_the_gateways_make_room_for_it() {
        // The CRD's bounds are the server's own, so the API server refuses what would make
        // the pods crash-loop.
        assert_eq!(
            kv_crds::DEFAULT_MAX_VALUE_BYTES as usize,
            kv_common::api::DEFAULT_MAX_VALUE_BYTES
        );
        assert_eq!(
            kv_crds::MAX_VALUE_BYTES as usize,
            kv_common::api::MAX_VALUE_BYTES_LIMIT
        );
        // The default limit adds nothing to the pod templates (an operator upgrade must not
        // roll existing clusters), and 1 MiB fits the gateway's default body limit.
        let (server, gateway) = rendered(&cluster(3, ReplicationSpec::default()));
        assert_eq!(get(&server, "KV_MAX_VALUE_BYTES"), None);
        assert_eq!(get(&gateway, "KV_MAX_BODY_BYTES"), None);

        let mut small = cluster(3, ReplicationSpec::default());
        small.spec.server.max_value_bytes = 4096;
        let (server, gateway) = rendered(&small);
        assert_eq!(get(&server, "KV_MAX_VALUE_BYTES"), Some("4096"));
        assert_eq!(get(&gateway, "KV_MAX_BODY_BYTES"), None);

        let mut large = cluster(3, ReplicationSpec::default());
        large.spec.server.max_value_bytes = 32 << 20;
        let (server, gateway) = rendered(&large);
        assert_eq!(get(&server, "KV_MAX_VALUE_BYTES"), Some("33554432"));
        assert_eq!(
            get(&gateway, "KV_MAX_BODY_BYTES"),
            Some(
                ((32 << 20) + kv_common::api::PUT_BODY_OVERHEAD)
                    .to_string()
                    .as_str()
            )
        );
    }

    #[test]
    fn the_replication_timeout_reaches_the_servers_and_the_gateways_outwait_it() {
        assert_eq!(
            u64::try_from(kv_crds::DEFAULT_REPLICATION_TIMEOUT_SECONDS).unwrap() * 1000,
            kv_common::replication::DEFAULT_REPLICATION_TIMEOUT_MS
        );
        // The default adds nothing to the pod templates (an operator upgrade must not roll
        // existing clusters).
        let (server, gateway) = rendered(&cluster(3, ReplicationSpec::default()));
        assert_eq!(get(&server, "KV_REPLICATION_TIMEOUT_MS"), None);
        assert_eq!(get(&gateway, "KV_REQUEST_TIMEOUT_MS"), None);

        // Up to 2 s, the gateway's default 10 s already leaves the 8 s margin.
        let timeout = |seconds| ReplicationSpec {
            timeout_seconds: seconds,
            ..ReplicationSpec::default()
        };
        let (server, gateway) = rendered(&cluster(3, timeout(1)));
        assert_eq!(get(&server, "KV_REPLICATION_TIMEOUT_MS"), Some("1000"));
        assert_eq!(get(&gateway, "KV_REQUEST_TIMEOUT_MS"), None);

        let (server, gateway) = rendered(&cluster(3, timeout(30)));
        assert_eq!(get(&server, "KV_REPLICATION_TIMEOUT_MS"), Some("30000"));
        assert_eq!(get(&gateway, "KV_REQUEST_TIMEOUT_MS"), Some("38000"));
    }

    #[test]
    fn log_levels_reach_only_their_own_pods_and_only_when_set() {
        // The CRD's pattern is the one kv-common documents and tests against the binaries'
        // parser, so the API server refuses what would make the pods crash-loop.
        assert_eq!(
            kv_crds::LOG_FILTER_PATTERN,
            kv_common::telemetry::LOG_FILTER_PATTERN
        );
        // Unset adds nothing to the pod templates (an operator upgrade must not roll
        // existing clusters).
        let (server, gateway) = rendered(&cluster(3, ReplicationSpec::default()));
        assert_eq!(get(&server, "KV_LOG_LEVEL"), None);
        assert_eq!(get(&gateway, "KV_LOG_LEVEL"), None);

        let mut debug_servers = cluster(3, ReplicationSpec::default());
        debug_servers.spec.server.log_level = Some("info,kv_server::replication=debug".into());
        let (server, gateway) = rendered(&debug_servers);
        assert_eq!(
            get(&server, "KV_LOG_LEVEL"),
            Some("info,kv_server::replication=debug")
        );
        assert_eq!(get(&gateway, "KV_LOG_LEVEL"), None);

        let mut debug_gateways = cluster(3, ReplicationSpec::default());
        debug_gateways.spec.gateway.log_level = Some("debug".into());
        let (server, gateway) = rendered(&debug_gateways);
        assert_eq!(get(&server, "KV_LOG_LEVEL"), None);
        assert_eq!(get(&gateway, "KV_LOG_LEVEL"), Some("debug"));
    }

    /// Every variable name of the servers' and the gateways' container, in order, values
    /// from a source included.
    fn env_names(cluster: &KvCluster) -> (Vec<String>, Vec<String>) {
        let plan = Plan::new(cluster, None);
        let children = render(cluster, &plan, &RenderConfig::default()).unwrap();
        let names = |t: Option<k8s_openapi::api::core::v1::PodSpec>| -> Vec<String> {
            t.unwrap().containers[0]
                .env
                .iter()
                .flatten()
                .map(|e| e.name.clone())
                .collect()
        };
        (
            names(children.server_stateful_set.spec.unwrap().template.spec),
            names(children.gateway_deployment.spec.unwrap().template.spec),
        )
    }

    fn extra(name: &str, value: &str) -> kv_crds::ExtraEnv {
        kv_crds::ExtraEnv {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    #[test]
    fn every_variable_the_operator_sets_is_one_the_crd_keeps_out_of_env() {
        // Every optional setting on, so that every variable the operator can set is there.
        let mut full = cluster(
            3,
            ReplicationSpec {
                factor: 3,
                write_quorum: Some(2),
                timeout_seconds: 30,
            },
        );
        full.spec.server.max_value_bytes = 32 << 20;
        full.spec.server.log_level = Some("debug".into());
        full.spec.gateway.log_level = Some("debug".into());
        full.spec.auth = Some(kv_crds::AuthSpec {
            secret_name: "token".into(),
            key: "token".into(),
        });
        let (server, gateway) = env_names(&full);
        for name in &server {
            assert!(
                kv_crds::SERVER_MANAGED_ENV.contains(&name.as_str()),
                "{name}"
            );
        }
        for name in &gateway {
            assert!(
                kv_crds::GATEWAY_MANAGED_ENV.contains(&name.as_str()),
                "{name}"
            );
        }
        // The optional ones were all set.
        for name in [
            "KV_WRITE_QUORUM",
            "KV_REPLICATION_TIMEOUT_MS",
            "KV_MAX_VALUE_BYTES",
        ] {
            assert!(server.iter().any(|n| n == name), "{name}");
        }
        for name in [
            "KV_MAX_BODY_BYTES",
            "KV_REQUEST_TIMEOUT_MS",
            "KV_API_TOKEN_FILE",
        ] {
            assert!(gateway.iter().any(|n| n == name), "{name}");
        }
    }

    #[test]
    fn user_variables_come_after_the_operators_and_never_replace_them() {
        let plain = cluster(3, ReplicationSpec::default());
        let (plain_server, plain_gateway) = env_names(&plain);

        let mut tuned = plain.clone();
        tuned.spec.server.log_level = Some("warn".into());
        let token = k8s_openapi::api::core::v1::EnvVarSource {
            secret_key_ref: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                name: "s".into(),
                key: "k".into(),
                optional: None,
            }),
            ..Default::default()
        };
        tuned.spec.server.env = vec![
            extra("RUST_BACKTRACE", "1"),
            extra("KV_READERS", "4"),
            // Refused by the CRD; skipped should a spec get past it.
            extra("KV_PEERS", "evil=http://elsewhere"),
            extra("KV_LOG_LEVEL", "trace"),
            extra("KV_READERS", "8"),
            kv_crds::ExtraEnv {
                name: "FROM_SECRET".into(),
                value: None,
                value_from: Some(token.clone()),
            },
        ];
        tuned.spec.gateway.env = vec![extra("KV_WORKER_THREADS", "1"), extra("RUST_LOG", "x")];
        let (server, gateway) = env_names(&tuned);
        let mut expected = plain_server.clone();
        expected.insert(
            expected.iter().position(|n| n == "KV_VNODES").unwrap(),
            "KV_LOG_LEVEL".into(),
        );
        expected.extend(["RUST_BACKTRACE", "KV_READERS", "FROM_SECRET"].map(String::from));
        assert_eq!(server, expected);
        let mut expected = plain_gateway;
        expected.push("KV_WORKER_THREADS".into());
        assert_eq!(gateway, expected);

        // The operator's values stand; the user's first value of a name is the one kept.
        let (values, gateway_values) = rendered(&tuned);
        assert_eq!(get(&values, "KV_READERS"), Some("4"));
        assert_eq!(get(&values, "KV_LOG_LEVEL"), Some("warn"));
        assert_eq!(
            get(&values, "KV_PEERS"),
            get(&rendered(&plain).0, "KV_PEERS")
        );
        assert_eq!(get(&gateway_values, "KV_WORKER_THREADS"), Some("1"));
        let plan = Plan::new(&tuned, None);
        let children = render(&tuned, &plan, &RenderConfig::default()).unwrap();
        let template = children
            .server_stateful_set
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let from_secret = template.containers[0].env.iter().flatten().last().unwrap();
        assert_eq!(from_secret.value_from, Some(token));
    }

    #[test]
    fn servers_know_every_peer_by_its_stable_dns_name() {
        let (server, gateway) = rendered(&cluster(3, ReplicationSpec::default()));
        assert_eq!(
            get(&server, "KV_PEERS"),
            Some(
                "demo-server-0=http://demo-server-0.demo-server.kv.svc:8080,\
                 demo-server-1=http://demo-server-1.demo-server.kv.svc:8080,\
                 demo-server-2=http://demo-server-2.demo-server.kv.svc:8080"
            )
        );
        // Peer names are ring names: the pod names the servers also take as KV_NODE_NAME.
        assert_eq!(get(&server, "KV_NODE_NAME"), Some("$(POD_NAME)"));
        for env in [&server, &gateway] {
            assert_eq!(get(env, "KV_REPLICATION_FACTOR"), Some("3"));
            assert_eq!(get(env, "KV_WRITE_QUORUM"), None);
            assert_eq!(get(env, "KV_VNODES"), Some("150"));
        }
    }

    #[test]
    fn replication_is_as_configured_and_a_lone_server_names_itself() {
        let quorum = ReplicationSpec {
            factor: 5,
            write_quorum: Some(4),
            ..ReplicationSpec::default()
        };
        // Servers and gateways cap R and W at the servers of the ring in force themselves, so
        // the pods need not change when the number of servers does.
        let (server, gateway) = rendered(&cluster(2, quorum.clone()));
        assert_eq!(get(&server, "KV_PEERS").unwrap().split(',').count(), 2);
        for env in [&server, &gateway] {
            assert_eq!(get(env, "KV_REPLICATION_FACTOR"), Some("5"));
            assert_eq!(get(env, "KV_WRITE_QUORUM"), Some("4"));
        }
        // A one-member ring, so that it can grow.
        let (server, _) = rendered(&cluster(1, quorum));
        assert_eq!(
            get(&server, "KV_PEERS"),
            Some("demo-server-0=http://demo-server-0.demo-server.kv.svc:8080")
        );
        assert_eq!(get(&server, "KV_REPLICATION_FACTOR"), Some("5"));
    }

    /// A cluster whose first ring had 3 servers, now asked for `replicas`.
    fn scaled(replicas: i32, members: i32) -> KvCluster {
        let mut c = cluster(replicas, ReplicationSpec::default());
        let names = Names::new("demo");
        c.status = Some(kv_crds::KvClusterStatus {
            ring: Some(kv_crds::RingStatus {
                seeds: names.server_pods(3),
                members: names.server_pods(members),
                phase: "Done".into(),
                ..kv_crds::RingStatus::default()
            }),
            ..kv_crds::KvClusterStatus::default()
        });
        c
    }

    #[test]
    fn scaling_never_changes_the_pod_template() {
        let render_of = |c: &KvCluster| {
            let plan = Plan::new(c, None);
            let sts = render(c, &plan, &RenderConfig::default())
                .unwrap()
                .server_stateful_set
                .spec
                .unwrap();
            (sts.replicas, sts.template)
        };
        let (replicas, template) = render_of(&scaled(3, 3));
        assert_eq!(replicas, Some(3));
        // Scale up: the new servers start at once, with the same template (joiners).
        let (replicas, grown) = render_of(&scaled(5, 3));
        assert_eq!(replicas, Some(5));
        assert_eq!(grown, template);
        // Scale down: every server of the ring in force runs until the keys have moved.
        let (replicas, shrunk) = render_of(&scaled(2, 5));
        assert_eq!(replicas, Some(5));
        assert_eq!(shrunk, template);
        // ... then the StatefulSet shrinks.
        let (replicas, _) = render_of(&scaled(2, 2));
        assert_eq!(replicas, Some(2));
        let (server, _) = rendered(&scaled(2, 2));
        assert_eq!(get(&server, "KV_PEERS").unwrap().split(',').count(), 3);
    }

    #[test]
    fn servers_accept_their_gateway_each_other_and_the_operator() {
        let cluster = cluster(3, ReplicationSpec::default());
        let plan = Plan::new(&cluster, None);
        let config = RenderConfig {
            operator_namespace: Some("kv-system".into()),
            ..RenderConfig::default()
        };
        let policy = render(&cluster, &plan, &config)
            .unwrap()
            .server_network_policy;
        let rule = &policy.spec.unwrap().ingress.unwrap()[0];
        let peers = rule.from.as_ref().unwrap();
        let label = |peer: &k8s_openapi::api::networking::v1::NetworkPolicyPeer, key: &str| {
            peer.pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[key]
                .clone()
        };
        let components: Vec<_> = peers[..2]
            .iter()
            .map(|peer| label(peer, "app.kubernetes.io/component"))
            .collect();
        assert_eq!(components, ["gateway", "server"]);
        assert_eq!(
            label(&peers[2], "app.kubernetes.io/name"),
            "kvstore-operator"
        );
        let namespaces = peers[2].namespace_selector.as_ref().unwrap();
        assert_eq!(
            namespaces.match_labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
            "kv-system"
        );
    }

    #[test]
    fn anyone_may_scrape_the_servers_metrics_port_and_only_that_port() {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let cluster = cluster(3, ReplicationSpec::default());
        let plan = Plan::new(&cluster, None);
        let children = render(&cluster, &plan, &RenderConfig::default()).unwrap();
        let rules = children
            .server_network_policy
            .spec
            .unwrap()
            .ingress
            .unwrap();
        let port = |rule: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule| {
            let ports = rule.ports.as_ref().unwrap();
            assert_eq!(ports.len(), 1);
            ports[0].port.clone().unwrap()
        };
        let (data, metrics) = (&rules[0], &rules[1]);
        assert_eq!(rules.len(), 2);
        assert_eq!(port(data), IntOrString::Int(crate::names::SERVER_PORT));
        assert!(data.from.as_ref().is_some_and(|from| !from.is_empty()));
        assert_eq!(port(metrics), IntOrString::Int(crate::names::METRICS_PORT));
        assert_eq!(metrics.from, None, "no `from`: every source");
        // The server listens there, and says so to annotation-driven scrapers.
        let (server, _) = rendered(&cluster);
        assert_eq!(get(&server, "KV_METRICS_LISTEN"), Some("0.0.0.0:9090"));
        let template = children.server_stateful_set.spec.unwrap().template;
        let annotations = template.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations["prometheus.io/port"], "9090");
    }
}
