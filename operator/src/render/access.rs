//! Who may do what: the gateway's ServiceAccount with the one permission it needs (watch
//! EndpointSlices), the servers' PodDisruptionBudget, and a NetworkPolicy so servers accept
//! traffic only from their gateway, from each other (replication) and from the operator
//! (which moves keys through their `/internal/` routes when the number of servers changes).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Ctx;
use crate::names::{Component, METRICS_PORT, SERVER_PORT};

pub(super) fn service_account(ctx: &Ctx) -> ServiceAccount {
    ServiceAccount {
        metadata: ctx.meta(ctx.names.gateway(), Component::Gateway),
        ..ServiceAccount::default()
    }
}

pub(super) fn role(ctx: &Ctx) -> Role {
    Role {
        metadata: ctx.meta(ctx.names.gateway(), Component::Gateway),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["discovery.k8s.io".into()]),
            resources: Some(vec!["endpointslices".into()]),
            verbs: ["get", "list", "watch"].map(String::from).to_vec(),
            ..PolicyRule::default()
        }]),
    }
}

pub(super) fn role_binding(ctx: &Ctx) -> RoleBinding {
    RoleBinding {
        metadata: ctx.meta(ctx.names.gateway(), Component::Gateway),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: ctx.names.gateway(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: ctx.names.gateway(),
            namespace: Some(ctx.namespace.clone()),
            api_group: None,
        }]),
    }
}

pub(super) fn pod_disruption_budget(ctx: &Ctx) -> Option<PodDisruptionBudget> {
    let pdb = &ctx.cluster.spec.pod_disruption_budget;
    pdb.enabled.then(|| PodDisruptionBudget {
        metadata: ctx.meta(ctx.names.server(), Component::Server),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(pdb.max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(ctx.names.selector(Component::Server)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// Servers answer only their own gateway's pods, their own cluster's servers (which
/// replicate to each other and pull missed writes under `/internal/`, a route the gateway
/// never forwards) and the operator's pods (the rebalancing coordinator: `/internal/ring`,
/// `/internal/status`, `/internal/cleanup`), in the operator's namespace when it knows it.
/// The metrics port (`/metrics` and `/health` only, nothing that touches data) is open to
/// every source, so Prometheus can scrape the servers from wherever it runs.
pub(super) fn network_policy(ctx: &Ctx) -> NetworkPolicy {
    let own = [Component::Gateway, Component::Server].map(|component| NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(ctx.names.selector(component)),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    });
    let operator =
        NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(ctx.config.operator_pod_labels.0.clone()),
                ..LabelSelector::default()
            }),
            // An empty selector: every namespace.
            namespace_selector: Some(LabelSelector {
                match_labels: ctx.config.operator_namespace.as_ref().map(|ns| {
                    BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), ns.clone())])
                }),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        };
    NetworkPolicy {
        metadata: ctx.meta(ctx.names.server(), Component::Server),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(ctx.names.selector(Component::Server)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(own.into_iter().chain([operator]).collect()),
                    ports: Some(vec![tcp(SERVER_PORT)]),
                },
                // No `from`: any source.
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![tcp(METRICS_PORT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    }
}
