//! End to end with scaling, in-process against a FAKE Kubernetes (see `e2e.rs`): a KvCluster
//! of 3 servers with `replication.factor: 3`, keys written through the gateway with several
//! versions each -> `spec.replicas: 5`: the operator starts two servers (joiners: their
//! `KV_PEERS` names the first three only), moves keys with the coordinator, and reports the
//! ring of 5 as `Rebalancing: False/Balanced` -> every version of every key is read ->
//! `spec.replicas: 2`: keys leave the three highest servers first, the StatefulSet shrinks to
//! 2 only once the ring of 2 is in force -> every version is still read ->
//! `spec.replication.factor: 1` (and `writeQuorum: 1`) on the same two servers: each keeps only its own keys (the
//! servers hold KEYS keys between them, not twice that), and every version is still read.

#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/replicated.rs"]
mod replicated;

use std::future::Future;
use std::time::Duration;

use harness::{ControlPlane, Http, eventually};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kv_crds::{KvCluster, condition_types};
use serde_json::{Value, json};
use tokio::time::Instant;

const NS: &str = "kv-e2e-rebalance";
const CLUSTER: &str = "rb";
const KEYS: usize = 16;
const VERSIONS: usize = 3;
/// A move is several coordinator rounds, 2 s apart at most.
const MOVE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kvcluster_scales_up_and_down_with_every_version() {
    tokio::time::timeout(Duration::from_secs(240), scenario())
        .await
        .expect("the whole scenario within 240 s");
}

async fn scenario() {
    let plane = ControlPlane::start().await;
    let replicated::Replicated {
        clusters,
        sts,
        gateway,
        http,
    } = replicated::start(&plane, NS, CLUSTER).await;

    // The operator pins the servers' first ring as epoch 1, and the gateway routes by it (so
    // the new pods of the scale-up take no key before a move names them).
    eventually("the first ring pinned as epoch 1", || async {
        let cluster = clusters.get(CLUSTER).await.ok()?;
        (cluster.status?.ring?.epoch == 1).then_some(())
    })
    .await;
    eventually("the gateway routing by the pinned ring", || async {
        let (_, body) = http.get(&format!("{}/servers", gateway.url)).await;
        (body["ring_source"] == "config" && body["epoch"] == 1).then_some(())
    })
    .await;

    // Every key gets VERSIONS versions.
    let mut written: Vec<(String, Vec<Value>)> = Vec::new();
    for i in 0..KEYS {
        let key = format!("user:{i}");
        let mut values = Vec::new();
        for v in 0..VERSIONS {
            let value = json!({ "key": i, "v": v });
            let (code, body) = http.put(&key_url(&gateway.url, "put", &key), &value).await;
            assert_eq!(code, 200, "{key}: {body}");
            assert_eq!(body["version"], json!(v + 1), "{key}: {body}");
            values.push(value);
        }
        written.push((key, values));
    }

    // Scale up: the StatefulSet grows, keys move, the ring of 5 is recorded.
    scale(&clusters, 5).await;
    eventually("the StatefulSet grows to 5", || async {
        let replicas = sts.get_opt("rb-server").await.ok()??.spec?.replicas?;
        (replicas == 5).then_some(())
    })
    .await;
    balanced(&clusters, 5).await;
    every_version_is_read(&http, &gateway.url, &written).await;

    // Scale down: keys leave servers 2, 3, 4 first; the StatefulSet shrinks only after.
    scale(&clusters, 2).await;
    within(
        &clusters,
        MOVE,
        "the ring of 2 in force and the StatefulSet shrunk",
        || async {
            // The StatefulSet first: the operator records the ring before it shrinks it, so a
            // shrink seen here shows in the status read after.
            let replicas = sts.get_opt("rb-server").await.ok()??.spec?.replicas?;
            let cluster = clusters.get(CLUSTER).await.ok()?;
            let ring = cluster.status.as_ref()?.ring.clone()?;
            if replicas < 5 {
                assert_eq!(
                    ring.members.len(),
                    2,
                    "the StatefulSet shrank before the ring of 2 was in force: {ring:?}"
                );
            }
            (replicas == 2 && rebalancing(&cluster) == Some(("False", "Balanced".into())))
                .then_some(())
        },
    )
    .await;
    balanced(&clusters, 2).await;
    eventually("2 running servers", || async {
        (plane.sim.running_pods(NS).await.len() == 2).then_some(())
    })
    .await;
    every_version_is_read(&http, &gateway.url, &written).await;
    assert_eq!(
        keys_held(&http, &gateway.url).await,
        2 * KEYS,
        "R = 2 on 2 servers"
    );

    // A new replication factor, same servers: a move without a new pod.
    clusters
        .patch(
            CLUSTER,
            &PatchParams::default(),
            // W must stay at most R: the CRD's validation refuses more (the fake API server
            // does not check it, and the servers would not start).
            &Patch::Merge(json!({ "spec": { "replication": { "factor": 1, "writeQuorum": 1 } } })),
        )
        .await
        .expect("patch spec.replication.factor");
    within(&clusters, MOVE, "replication factor 1 in force", || async {
        let cluster = clusters.get(CLUSTER).await.ok()?;
        let ring = cluster.status.as_ref()?.ring.clone()?;
        let done = ring.replication_factor == Some(1)
            && ring.phase == "Done"
            && ring.members.len() == 2
            && rebalancing(&cluster) == Some(("False", "Balanced".into()));
        done.then_some(())
    })
    .await;
    every_version_is_read(&http, &gateway.url, &written).await;
    eventually("each key on one server only", || async {
        (keys_held(&http, &gateway.url).await == KEYS).then_some(())
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

async fn scale(clusters: &Api<KvCluster>, replicas: i32) {
    clusters
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
        )
        .await
        .expect("patch spec.replicas");
}

/// The `Rebalancing` condition as (status, reason).
fn rebalancing(cluster: &KvCluster) -> Option<(&str, String)> {
    let status = cluster.status.as_ref()?;
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition_types::REBALANCING)?;
    Some((c.status.as_str(), c.reason.clone()))
}

/// Waits for `Rebalancing: False/Balanced` with a ring of `servers` members in force.
async fn balanced(clusters: &Api<KvCluster>, servers: usize) {
    within(
        clusters,
        MOVE,
        &format!("a balanced ring of {servers}"),
        || async {
            let cluster = clusters.get(CLUSTER).await.ok()?;
            let ring = cluster.status.as_ref()?.ring.clone()?;
            let done = rebalancing(&cluster) == Some(("False", "Balanced".into()))
                && ring.members.len() == servers
                && ring.phase == "Done"
                && cluster.status.as_ref()?.ring_members.len() == servers;
            done.then_some(())
        },
    )
    .await;
}

/// Every version of every key, through the gateway (retried: gateways learn a new ring
/// within a health interval).
async fn every_version_is_read(http: &Http, gateway: &str, written: &[(String, Vec<Value>)]) {
    for (key, values) in written {
        let url = key_url(gateway, "versions", key);
        let body = eventually(&format!("every version of {key}"), || async {
            let (code, body) = http.get(&url).await;
            (code == 200).then_some(body)
        })
        .await;
        let versions = body["versions"].as_array().expect("versions");
        let seen: Vec<&Value> = versions.iter().map(|v| &v["value"]).collect();
        assert_eq!(seen, values.iter().collect::<Vec<_>>(), "{key}: {body}");
        for (v, value) in values.iter().enumerate() {
            let url = format!("{}?version={}", key_url(gateway, "get", key), v + 1);
            let (code, body) = http.get(&url).await;
            assert_eq!((code, &body["value"]), (200, value), "{key} v{}", v + 1);
        }
    }
}

/// `eventually` with its own deadline (a move takes longer than one step); on a timeout the
/// failure shows the cluster's status (the `Rebalancing` condition says what the move waits
/// for).
async fn within<T, F, Fut>(
    clusters: &Api<KvCluster>,
    limit: Duration,
    what: &str,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        if Instant::now() >= deadline {
            let status = clusters.get(CLUSTER).await.ok().and_then(|c| c.status);
            panic!("timed out after {limit:?} waiting for {what}; status: {status:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keys held by the servers of the ring, summed (`/db/stats` of each, through the gateway).
async fn keys_held(http: &Http, gateway: &str) -> usize {
    let mut total = 0;
    for server in ["rb-server-0", "rb-server-1"] {
        let (code, body) = http
            .get(&format!("{gateway}/db/stats?server={server}"))
            .await;
        assert_eq!(code, 200, "{server}: {body}");
        total += body["total_keys"].as_u64().expect("total_keys") as usize;
    }
    total
}

fn key_url(base: &str, route: &str, key: &str) -> String {
    format!("{base}/{route}/{}", key.replace(':', "%3A"))
}
