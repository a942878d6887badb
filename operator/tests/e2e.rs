//! End to end, in-process, against a FAKE Kubernetes (kv-test-support: a fake API server and
//! a simulator that runs the StatefulSet's pods as in-process `kv-server`s): a KvCluster is
//! created -> the operator reconciles -> the servers run -> the gateway, configured from the
//! operator's own Deployment, discovers them from the EndpointSlices -> puts and gets through
//! it -> a server pod is killed: its keys answer 503, it keeps its ring place, it comes back
//! with every version -> the status reaches Ready with the right counts -> deleting the
//! KvCluster removes its children (owner references) and stops the servers.
//!
//! This scenario runs one copy of every key (`spec.replication.factor: 1`), where a killed
//! server's keys are unavailable; `e2e_replication.rs` is the replicated one.
//!
//! What a fake cannot show (images, probes run by a kubelet, DNS, RBAC, network policies,
//! rolling a real StatefulSet) is the kind-based test's job (packaging).

#[path = "e2e/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use harness::{
    ControlPlane, Gateway, Http, STEP, eventually, gateway_config_from, server_config_from,
};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use kv_crds::{
    GatewaySpec, KvCluster, KvClusterSpec, KvClusterStatus, Phase, ReplicationSpec, ServerSpec,
    condition_types,
};
use serde_json::{Value, json};

const NS: &str = "kv-e2e";
const CLUSTER: &str = "demo";
const SERVERS: [&str; 3] = ["demo-server-0", "demo-server-1", "demo-server-2"];
const KEYS: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kvcluster_end_to_end_against_a_fake_cluster() {
    tokio::time::timeout(Duration::from_secs(90), scenario())
        .await
        .expect("the whole scenario within 90 s");
}

async fn scenario() {
    let plane = ControlPlane::start().await;
    let client = plane.client.clone();
    let clusters: Api<KvCluster> = Api::namespaced(client.clone(), NS);

    // A KvCluster: 3 servers, 1 gateway (the test runs exactly one gateway pod), one copy of
    // each key.
    let spec = KvClusterSpec {
        replicas: 3,
        replication: ReplicationSpec {
            factor: 1,
            write_quorum: None,
            // Off the default, so both variables are rendered (checked below).
            timeout_seconds: 3,
        },
        // Log filters: the harness checks them with the binaries' own parser.
        gateway: GatewaySpec {
            replicas: 1,
            log_level: Some("info,kv_gateway=debug".into()),
            ..GatewaySpec::default()
        },
        // Twice the server's default value limit (checked below).
        server: ServerSpec {
            max_value_bytes: 2 << 20,
            log_level: Some("warn,kv_server::replication=info".into()),
            ..ServerSpec::default()
        },
        ..KvClusterSpec::default()
    };
    let cluster = clusters
        .create(&PostParams::default(), &KvCluster::new(CLUSTER, spec))
        .await
        .expect("create the KvCluster");
    let uid = cluster.uid().expect("the fake assigns a uid");

    // The operator applies every child, each owned by the cluster.
    every_child_is_owned_by(&client, &uid).await;

    // The simulator runs the StatefulSet: three ready servers.
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    eventually("3 ready servers", || async {
        let s = sts.get_opt("demo-server").await.ok()??.status?;
        (s.ready_replicas == Some(3)).then_some(())
    })
    .await;
    // The templates configure the real binaries' parsers: every variable is one they read,
    // and the replication timeout reaches the servers and, with its margin, the gateway.
    let server = server_config_from(&sts.get("demo-server").await.expect("the StatefulSet"));
    assert_eq!(server.replication.replication_timeout_ms, 3_000);
    assert_eq!(server.max_value_bytes, 2 << 20);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deployment = deployments
        .get("demo-gateway")
        .await
        .expect("the Deployment");
    assert_eq!(
        gateway_config_from(&deployment, &[]).request_timeout_ms,
        11_000
    );

    // The gateway, configured from the Deployment the operator rendered, finds the servers
    // through the EndpointSlices of the headless Service.
    let gateway = Gateway::start(&client, NS, "demo-gateway").await;
    plane
        .sim
        .attach_deployment(NS, "demo-gateway", &gateway.url)
        .await;
    let http = Http::new();
    // New databases serve once they have seen their peers (`synced`), even with R = 1: a
    // server cannot tell a new cluster from one whose keys moved to it.
    let ring = eventually("a ring of 3 healthy, synced members", || async {
        let (code, body) = http.get(&format!("{}/servers", gateway.url)).await;
        let up = body["members"]
            .as_array()?
            .iter()
            .filter(|m| m["health"] == "up" && m["synced"] == true)
            .count();
        (code == 200 && body["servers"] == json!(SERVERS) && up == 3).then_some(body)
    })
    .await;
    let epoch = ring["epoch"].clone();

    // Puts and gets through the gateway: two versions per key, on every server.
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..KEYS {
        let key = format!("user:{i}");
        for version in 1..=2 {
            let (code, body) = http
                .put(&key_url(&gateway.url, "put", &key), &value(i, version))
                .await;
            assert_eq!(code, 200, "put {key}: {body}");
            assert_eq!(body["version"], version, "{body}");
            owners.insert(
                key.clone(),
                body["server_used"].as_str().unwrap().to_owned(),
            );
        }
    }
    // `server.maxValueBytes` reached the servers: a value over the default 1 MiB is stored,
    // one over the cluster's 2 MiB is refused by the key's server, with nothing stored.
    let big = |bytes: usize| Value::String("x".repeat(bytes));
    let (code, body) = http
        .put(&key_url(&gateway.url, "put", "big"), &big(3 << 19))
        .await;
    assert_eq!(code, 200, "a 1.5 MiB value: {body}");
    let (code, body) = http
        .put(&key_url(&gateway.url, "put", "big"), &big(5 << 19))
        .await;
    assert_eq!(code, 413, "a 2.5 MiB value: {body}");
    assert_eq!(body["code"], "value_too_large", "{body}");
    let (code, body) = http.get(&key_url(&gateway.url, "get", "big")).await;
    assert_eq!((code, &body["version"]), (200, &json!(1)), "{body}");

    let used: BTreeSet<&str> = owners.values().map(String::as_str).collect();
    assert_eq!(used, SERVERS.into_iter().collect(), "keys on every server");
    for i in 0..KEYS {
        assert_versions(&http, &gateway.url, i).await;
    }

    // Kill a server pod: its keys answer 503 (never another server), the others still work,
    // and it keeps its place on the ring (readiness is health, not membership).
    let victim = "demo-server-1";
    plane.sim.kill_pod(NS, victim).await;
    for (key, owner) in &owners {
        let url = key_url(&gateway.url, "get", key);
        if owner == victim {
            let body = eventually("503 for the killed server's key", || async {
                let (code, body) = http.get(&url).await;
                (code == 503).then_some(body)
            })
            .await;
            assert_eq!(body["code"], "server_unavailable", "{body}");
            assert!(body["detail"].as_str().unwrap().contains(victim), "{body}");
        } else {
            let (code, body) = http.get(&url).await;
            assert_eq!(code, 200, "{key} on {owner}: {body}");
        }
    }
    let victim_key = owners.iter().find(|(_, o)| *o == victim).unwrap().0.clone();
    let (code, _) = http
        .put(&key_url(&gateway.url, "put", &victim_key), &json!("lost?"))
        .await;
    assert_eq!(
        code, 503,
        "a write for a down server is refused, not detoured"
    );
    let (_, ring) = http.get(&format!("{}/servers", gateway.url)).await;
    assert_eq!(
        ring["servers"],
        json!(SERVERS),
        "the killed pod keeps its place"
    );
    assert_eq!(ring["epoch"], epoch);
    wait_status(&clusters, "2/3 ready, not Ready", |s| {
        s.ready_replicas == 2 && s.phase != Phase::Ready && !condition(s, condition_types::READY)
    })
    .await;

    // It comes back on its data directory (and a new address): every version is there.
    let old_address = plane.sim.pod_address(NS, victim).await.unwrap();
    plane.sim.restart_pod(NS, victim).await;
    let new_address = plane.sim.pod_address(NS, victim).await.unwrap();
    assert_ne!(
        old_address, new_address,
        "a restarted pod gets a new address"
    );
    eventually("the restarted server answers", || async {
        let (code, _) = http.get(&key_url(&gateway.url, "get", &victim_key)).await;
        (code == 200).then_some(())
    })
    .await;
    for i in 0..KEYS {
        assert_versions(&http, &gateway.url, i).await;
    }
    let (code, body) = http
        .put(&key_url(&gateway.url, "put", &victim_key), &json!("third"))
        .await;
    assert_eq!((code, body["version"].clone()), (200, json!(3)), "{body}");
    let (_, ring) = http.get(&format!("{}/servers", gateway.url)).await;
    assert_eq!(ring["epoch"], epoch, "the ring never changed");
    let member = ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == victim)
        .unwrap();
    assert_eq!(member["url"], format!("http://{new_address}"), "{ring}");

    // The status: Ready, with the right counts.
    let status = wait_status(&clusters, "Ready", |s| {
        s.phase == Phase::Ready && s.ready_replicas == 3 && s.gateway_ready_replicas == 1
    })
    .await;
    let cluster = clusters.get(CLUSTER).await.unwrap();
    assert_eq!(status.observed_generation, cluster.meta().generation);
    assert_eq!(status.replicas, 3);
    assert_eq!(status.ring_members, SERVERS);
    assert!(condition(&status, condition_types::READY));
    assert!(!condition(&status, condition_types::PROGRESSING));
    assert!(!condition(&status, condition_types::DEGRADED));

    // Converged: with nothing changing, nobody writes (no-op applies are no writes).
    let before = (
        cluster.resource_version(),
        sts.get("demo-server").await.unwrap().resource_version(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cluster_now = clusters.get(CLUSTER).await.unwrap();
    let sts_now = sts.get("demo-server").await.unwrap();
    assert_eq!(
        before,
        (cluster_now.resource_version(), sts_now.resource_version())
    );

    // Deleting the cluster deletes its children (owner references), which stops the servers.
    clusters
        .delete(CLUSTER, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the children to be collected", || async {
        let gone = sts.get_opt("demo-server").await.ok()?.is_none()
            && Api::<Deployment>::namespaced(client.clone(), NS)
                .get_opt("demo-gateway")
                .await
                .ok()?
                .is_none();
        gone.then_some(())
    })
    .await;
    eventually("the servers to stop", || async {
        plane.sim.running_pods(NS).await.is_empty().then_some(())
    })
    .await;

    gateway.task.stop().await.expect("gateway stopped cleanly");
    plane
        .operator
        .stop()
        .await
        .expect("operator stopped cleanly");
    plane.sim.shutdown().await;
    drop(plane.api);
}

fn key_url(base: &str, route: &str, key: &str) -> String {
    format!("{base}/{route}/{}", key.replace(':', "%3A"))
}

fn value(i: usize, version: u64) -> Value {
    json!({ "user": i, "version": version, "tags": ["a", "b"] })
}

/// Both versions of key `i`, by number and as the latest.
async fn assert_versions(http: &Http, gateway: &str, i: usize) {
    let key = format!("user:{i}");
    for version in 1..=2u64 {
        let url = format!("{}?version={version}", key_url(gateway, "get", &key));
        let (code, body) = http.get(&url).await;
        assert_eq!(code, 200, "{key} v{version}: {body}");
        assert_eq!(body["value"], value(i, version), "{key} v{version}");
    }
    let (code, body) = http.get(&key_url(gateway, "get", &key)).await;
    assert_eq!(
        (code, body["version"].clone()),
        (200, json!(2)),
        "{key}: {body}"
    );
}

fn condition(status: &KvClusterStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

async fn wait_status(
    clusters: &Api<KvCluster>,
    what: &str,
    check: impl Fn(&KvClusterStatus) -> bool,
) -> KvClusterStatus {
    let mut last = None;
    let found = tokio::time::timeout(STEP, async {
        loop {
            if let Ok(cluster) = clusters.get(CLUSTER).await
                && let Some(status) = cluster.status
            {
                if check(&status) {
                    return status;
                }
                last = Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("status never became {what}; last: {last:#?}"))
}

/// Every child the operator applies exists and names the cluster as its controller.
async fn every_child_is_owned_by(client: &Client, uid: &str) {
    async fn owned<K>(client: &Client, name: &str, uid: &str)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
        K: Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    {
        let api: Api<K> = Api::namespaced(client.clone(), NS);
        let object = eventually(&format!("{} {name}", K::kind(&())), || async {
            api.get_opt(name).await.ok()?
        })
        .await;
        let owners = object.owner_references();
        assert!(
            owners
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true)),
            "{} {name} is not owned by the KvCluster: {owners:?}",
            K::kind(&())
        );
    }
    owned::<ServiceAccount>(client, "demo-gateway", uid).await;
    owned::<Role>(client, "demo-gateway", uid).await;
    owned::<RoleBinding>(client, "demo-gateway", uid).await;
    owned::<Service>(client, "demo-server", uid).await;
    owned::<StatefulSet>(client, "demo-server", uid).await;
    owned::<Service>(client, "demo-gateway", uid).await;
    owned::<Deployment>(client, "demo-gateway", uid).await;
    owned::<PodDisruptionBudget>(client, "demo-server", uid).await;
    owned::<NetworkPolicy>(client, "demo-server", uid).await;
}
