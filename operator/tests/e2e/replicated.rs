//! The start of the replication and rebalancing end-to-end tests: a KvCluster of 3 servers
//! with R = 3 and W = 2, created against the fake, its servers ready, and an in-process
//! gateway attached that sees all three up and synced.

#![allow(dead_code)] // each test reads the parts it needs

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;
use kube::api::PostParams;
use kv_crds::{GatewaySpec, KvCluster, KvClusterSpec, ReplicationSpec};

use crate::harness::{ControlPlane, Gateway, Http, eventually};

pub struct Replicated {
    pub clusters: Api<KvCluster>,
    pub sts: Api<StatefulSet>,
    pub gateway: Gateway,
    pub http: Http,
}

/// Creates KvCluster `name` in `namespace` and waits until it serves.
pub async fn start(plane: &ControlPlane, namespace: &str, name: &str) -> Replicated {
    let client = plane.client.clone();
    let clusters: Api<KvCluster> = Api::namespaced(client.clone(), namespace);
    let spec = KvClusterSpec {
        replicas: 3,
        replication: ReplicationSpec {
            factor: 3,
            write_quorum: Some(2),
            ..ReplicationSpec::default()
        },
        gateway: GatewaySpec {
            replicas: 1,
            ..GatewaySpec::default()
        },
        ..KvClusterSpec::default()
    };
    clusters
        .create(&PostParams::default(), &KvCluster::new(name, spec))
        .await
        .expect("create the KvCluster");

    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let server = format!("{name}-server");
    eventually("3 ready servers", || async {
        let s = sts.get_opt(&server).await.ok()??.status?;
        (s.ready_replicas == Some(3)).then_some(())
    })
    .await;
    let deployment = format!("{name}-gateway");
    let gateway = Gateway::start(&client, namespace, &deployment).await;
    plane
        .sim
        .attach_deployment(namespace, &deployment, &gateway.url)
        .await;
    let http = Http::new();
    // A new replicated cluster serves once each server has seen its peers (`synced`).
    eventually("a ring of 3 healthy, synced members", || async {
        let (code, body) = http.get(&format!("{}/servers", gateway.url)).await;
        let up = body["members"]
            .as_array()?
            .iter()
            .filter(|m| m["health"] == "up" && m["synced"] == true)
            .count();
        (code == 200 && up == 3).then_some(())
    })
    .await;
    Replicated {
        clusters,
        sts,
        gateway,
        http,
    }
}
