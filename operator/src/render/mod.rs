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
