//! The status the operator reports: computed purely from the plan, the applied workloads and
//! the ring round's outcome, then written with server-side apply on the status subresource.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use kv_crds::{KvCluster, KvClusterStatus, Phase, condition_types};

use crate::error::{Error, Result};
use crate::names::{FIELD_MANAGER, GATEWAY_PORT, Names};
use crate::plan::Plan;
use crate::ring::RingOutcome;

/// Builds the status for `cluster`. `now` stamps conditions whose status changed; unchanged
/// conditions keep their previous transition time.
pub fn build(
    cluster: &KvCluster,
    plan: &Plan,
    sts: &StatefulSet,
    deployment: &Deployment,
    ring: &RingOutcome,
    now: Timestamp,
) -> KvClusterStatus {
    let names = Names::new(&cluster.name_any());
    let namespace = cluster.namespace().unwrap_or_default();
    let s = sts.status.clone().unwrap_or_default();
    let ready = s.ready_replicas.unwrap_or(0);
    let sts_observed = s.observed_generation >= sts.metadata.generation;
    let rolled_out = sts_observed
        && s.updated_replicas.unwrap_or(0) == plan.replicas
        && s.current_revision.is_some()
        && s.current_revision == s.update_revision;
    let gw = deployment.status.clone().unwrap_or_default();
    let gw_ready = gw.available_replicas.unwrap_or(0);
    let gw_wanted = deployment
        .spec
        .as_ref()
        .and_then(|d| d.replicas)
        .unwrap_or(1);
    let gw_rolled_out = gw.observed_generation >= deployment.metadata.generation
        && gw.updated_replicas.unwrap_or(0) == gw_wanted;

    let all_ready = ready == plan.replicas && gw_ready >= 1;
    let rebalancing = ring.moving();
    let progressing = rebalancing || !(rolled_out && gw_rolled_out && all_ready);
    let degraded = !plan.refusals.is_empty();

    let (ready_reason, ready_message) = if all_ready {
        (
            "AllReady",
            format!(
                "{ready}/{} servers and {gw_ready} gateway(s) ready",
                plan.replicas
            ),
        )
    } else if ready < plan.replicas {
        (
            "ServersNotReady",
            format!("{ready}/{} servers ready", plan.replicas),
        )
    } else {
        (
            "GatewayNotReady",
            "no gateway pod is available yet".to_owned(),
        )
    };
    let (progress_reason, progress_message) = if rebalancing {
        (
            "Rebalancing",
            "keys are moving between servers (see the Rebalancing condition)".to_owned(),
        )
    } else if progressing {
        (
            "RollingOut",
            "servers or gateways are starting or being updated".to_owned(),
        )
    } else {
        ("RolledOut", "every pod runs the current spec".to_owned())
    };
    let (degraded_reason, degraded_message) = match plan.refusals.first() {
        Some(first) => (
            first.reason,
            plan.refusals
                .iter()
                .map(|r| r.message.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        None => ("AsSpecified", "the whole spec is applied".to_owned()),
    };

    let previous = cluster
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = cluster.meta().generation;
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        }
    };

    let phase = if degraded {
        Phase::Degraded
    } else if all_ready && !progressing {
        Phase::Ready
    } else if s.replicas > 0 {
        Phase::Progressing
    } else {
        Phase::Pending
    };
    KvClusterStatus {
        observed_generation: generation,
        phase,
        replicas: s.replicas,
        ready_replicas: ready,
        selector: Some(names.server_selector_string()),
        gateway_ready_replicas: gw_ready,
        conditions: vec![
            condition(
                condition_types::READY,
                all_ready,
                ready_reason,
                ready_message,
            ),
            condition(
                condition_types::PROGRESSING,
                progressing,
                progress_reason,
                progress_message,
            ),
            condition(
                condition_types::DEGRADED,
                degraded,
                degraded_reason,
                degraded_message,
            ),
            condition(
                condition_types::REBALANCING,
                rebalancing,
                &ring.rebalancing.1,
                ring.rebalancing.2.clone(),
            ),
        ],
        ring_members: ring.status.members.clone(),
        ring: Some(ring.status.clone()),
        gateway_endpoint: Some(format!(
            "{}.{namespace}.svc:{GATEWAY_PORT}",
            names.gateway()
        )),
    }
}

/// Writes `status` through the status subresource.
pub async fn patch(client: &Client, cluster: &KvCluster, status: KvClusterStatus) -> Result<()> {
    let namespace = cluster
        .namespace()
        .ok_or(Error::InvalidObject("namespace"))?;
    let api: Api<KvCluster> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": KvCluster::api_version(&()),
        "kind": KvCluster::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&cluster.name_any(), &params, &Patch::Apply(&patch))
        .await
        .map_err(Error::Kube)?;
    Ok(())
}
