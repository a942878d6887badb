//! The objects the simulator publishes, as JSON: Pods, PersistentVolumeClaims, EndpointSlices
//! and the StatefulSet / Deployment status.

use serde_json::{Value, json};

use super::pod::{PodRun, Settings};

pub const MANAGED_BY: &str = "simulator.kv-test-support";

/// A controller owner reference to `owner`.
pub fn owner_ref(owner: &Value) -> Value {
    json!([{
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// The controller revision of a pod template: a hash of it, as `<statefulset>-<hex>`.
pub fn revision(sts: &Value) -> String {
    let template = sts["spec"]["template"].to_string();
    // FNV-1a: stable across runs, unlike std's RandomState.
    let hash = template.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!(
        "{}-{:08x}",
        sts["metadata"]["name"].as_str().unwrap_or(""),
        hash as u32
    )
}

/// A variable of the template's first container, if set to a literal value.
fn env(sts: &Value, name: &str) -> Option<String> {
    sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_owned)
}

/// The server settings of the template that the simulator honours (see [`Settings`]).
pub fn settings(sts: &Value) -> Settings {
    let number = |name: &str| env(sts, name)?.parse().ok();
    Settings {
        cache_size: number("KV_CACHE_SIZE"),
        cache_max_bytes: env(sts, "KV_CACHE_MAX_BYTES"),
        max_value_bytes: number("KV_MAX_VALUE_BYTES"),
        vnodes: number("KV_VNODES"),
        replication_factor: number("KV_REPLICATION_FACTOR"),
        write_quorum: number("KV_WRITE_QUORUM"),
        replication_timeout_ms: env(sts, "KV_REPLICATION_TIMEOUT_MS").and_then(|v| v.parse().ok()),
        peers: env(sts, "KV_PEERS")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

pub fn pod(sts: &Value, run: &PodRun) -> Value {
    let template = &sts["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels["statefulset.kubernetes.io/pod-name"] = json!(run.name);
    labels["apps.kubernetes.io/pod-index"] = json!(run.ordinal.to_string());
    labels["controller-revision-hash"] = json!(run.revision);
    let ready = if run.ready { "True" } else { "False" };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": run.name,
            "namespace": run.namespace,
            "labels": labels,
            "ownerReferences": owner_ref(sts),
        },
        "spec": template["spec"],
        "status": {
            "phase": "Running",
            "podIP": run.addr.map(|a| a.ip().to_string()),
            "conditions": [{ "type": "Ready", "status": ready }],
            "containerStatuses": [{
                "name": template["spec"]["containers"][0]["name"],
                "ready": run.ready,
                "started": run.is_running(),
                "restartCount": run.restarts,
            }],
        },
    })
}

/// The claim `data-<pod>` from the first volume claim template; owned by the StatefulSet when
/// its retention policy deletes claims with it.
pub fn claim(sts: &Value, run: &PodRun) -> Option<Value> {
    let template = &sts["spec"]["volumeClaimTemplates"][0];
    let volume = template["metadata"]["name"].as_str()?;
    let mut claim = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": format!("{volume}-{}", run.name),
            "namespace": run.namespace,
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
        "status": {
            "phase": "Bound",
            "capacity": template["spec"]["resources"]["requests"],
        },
    });
    let policy = &sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"];
    if policy == "Delete" {
        claim["metadata"]["ownerReferences"] = owner_ref(sts);
    }
    Some(claim)
}

/// One slice per pod (`<service>-<pod>`): all pods share 127.0.0.1 and differ by port, and a
/// slice has one port list. Real slices group many IPs behind one port; the gateway merges
/// slices either way. A not-ready pod stays listed (not ready) only when the Service
/// publishes not-ready addresses.
pub fn endpoint_slice(service: &Value, run: &PodRun) -> Option<Value> {
    let addr = run.addr?;
    let name = service["metadata"]["name"].as_str()?;
    let ports: Vec<Value> = service["spec"]["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| json!({ "name": p["name"], "port": addr.port(), "protocol": p["protocol"] }))
                .collect()
        })
        .unwrap_or_default();
    let publish_not_ready = service["spec"]["publishNotReadyAddresses"] == true;
    let endpoints = if run.ready || publish_not_ready {
        vec![json!({
            "addresses": [addr.ip().to_string()],
            "hostname": run.name,
            "conditions": { "ready": run.ready, "serving": run.ready, "terminating": false },
            "targetRef": { "kind": "Pod", "name": run.name, "namespace": run.namespace },
        })]
    } else {
        Vec::new()
    };
    Some(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-{}", run.name),
            "namespace": run.namespace,
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
            "ownerReferences": owner_ref(service),
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }))
}

/// The StatefulSet's status from its pods (`pods`: those with an ordinal below `replicas`).
pub fn stateful_set_status(sts: &Value, pods: &[&PodRun], update_revision: &str) -> Value {
    let ready = pods.iter().filter(|p| p.ready).count();
    let updated = pods
        .iter()
        .filter(|p| p.revision == update_revision)
        .count();
    let current_revision = if updated == pods.len() {
        update_revision.to_owned()
    } else {
        sts["status"]["currentRevision"]
            .as_str()
            .unwrap_or(update_revision)
            .to_owned()
    };
    json!({
        "observedGeneration": sts["metadata"]["generation"],
        "replicas": pods.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "currentReplicas": pods.iter().filter(|p| p.revision == current_revision).count(),
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": update_revision,
        "collisionCount": 0,
    })
}

/// A Deployment's status from the pods the test attached to it and their readiness.
pub fn deployment_status(deployment: &Value, attached: usize, ready: usize) -> Value {
    json!({
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": attached,
        "updatedReplicas": attached,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": attached - ready,
    })
}
