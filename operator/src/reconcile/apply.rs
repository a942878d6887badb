//! Writes: server-side apply of every child under one field manager (forced, so the operator
//! wins over hand edits of the fields it owns), expansion of existing claims, and removal of
//! a PodDisruptionBudget that was turned off.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::names::{FIELD_MANAGER, Names};
use crate::render::Children;

/// The workloads as the API server returned them, for the status.
pub struct Applied {
    pub stateful_set: StatefulSet,
    pub deployment: Deployment,
}

/// Applies every child in order; stops at the first failure (the next pass retries).
pub async fn apply_all(client: &Client, namespace: &str, children: &Children) -> Result<Applied> {
    apply(client, namespace, &children.gateway_service_account).await?;
    apply(client, namespace, &children.gateway_role).await?;
    apply(client, namespace, &children.gateway_role_binding).await?;
    apply(client, namespace, &children.server_service).await?;
    let stateful_set = apply(client, namespace, &children.server_stateful_set).await?;
    apply(client, namespace, &children.gateway_service).await?;
    let deployment = apply(client, namespace, &children.gateway_deployment).await?;
    match &children.server_pdb {
        Some(pdb) => {
            apply(client, namespace, pdb).await?;
        }
        None => {
            let name = children.server_stateful_set.name_any();
            delete_if_present::<PodDisruptionBudget>(client, namespace, &name).await?;
        }
    }
    apply(client, namespace, &children.server_network_policy).await?;
    Ok(Applied {
        stateful_set,
        deployment,
    })
}

async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    K: k8s_openapi::Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = obj.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(obj))
        .await
        .map_err(|source| Error::Apply {
            kind: <K as k8s_openapi::Resource>::KIND,
            name,
            source,
        })
}

async fn delete_if_present<K>(client: &Client, namespace: &str, name: &str) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    K: DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(err) => Err(Error::Kube(err)),
    }
}

/// Grows each server's claim to `size`. `Ok(Err(detail))` when the API server refuses (the
/// storage class does not allow expansion): a condition, not a retry loop. A claim not created
/// yet is skipped: the StatefulSet creates it.
pub async fn expand_claims(
    client: &Client,
    namespace: &str,
    names: &Names,
    replicas: i32,
    size: &Quantity,
) -> Result<Result<(), String>> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "spec": { "resources": { "requests": { "storage": size } } } });
    for ordinal in 0..replicas {
        let name = names.data_claim(ordinal);
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(kube::Error::Api(status)) if matches!(status.code, 403 | 422) => {
                return Ok(Err(format!("{name}: {}", status.message)));
            }
            Err(err) => return Err(Error::Kube(err)),
        }
    }
    Ok(Ok(()))
}
