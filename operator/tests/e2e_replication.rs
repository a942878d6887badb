//! End to end with replication, in-process against a FAKE Kubernetes (see `e2e.rs`): a
//! KvCluster of 3 servers with `replication.factor: 3` -> every put reaches all 3 servers,
//! which find each other through the `KV_PEERS` the operator rendered (pod DNS names, which
//! the simulator resolves) -> a server pod is killed: its keys are still read (from a replica,
//! `x-kv-primary-unavailable` naming it) but not written -> it comes back and serves again.

#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/replicated.rs"]
mod replicated;

use std::time::Duration;

use harness::{ControlPlane, eventually};
use serde_json::{Value, json};

const NS: &str = "kv-e2e-repl";
const CLUSTER: &str = "repl";
const SERVERS: [&str; 3] = ["repl-server-0", "repl-server-1", "repl-server-2"];
const KEYS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicated_kvcluster_survives_a_killed_server() {
    tokio::time::timeout(Duration::from_secs(90), scenario())
        .await
        .expect("the whole scenario within 90 s");
}

async fn scenario() {
    let plane = ControlPlane::start().await;
    let replicated::Replicated { gateway, http, .. } = replicated::start(&plane, NS, CLUSTER).await;

    // Every put is acknowledged by a quorum, and reaches every server soon after.
    let mut primaries = Vec::new();
    for i in 0..KEYS {
        let key = format!("user:{i}");
        let (code, body) = http
            .put(&key_url(&gateway.url, "put", &key), &json!(i))
            .await;
        assert_eq!((code, body["version"].clone()), (200, json!(1)), "{body}");
        primaries.push((key, body["server_used"].as_str().unwrap().to_owned()));
    }
    for server in SERVERS {
        let addr = plane.sim.pod_address(NS, server).await.unwrap();
        for (i, (key, _)) in primaries.iter().enumerate() {
            let url = key_url(&format!("http://{addr}"), "get", key);
            eventually(&format!("{key} on {server}"), || async {
                let (code, body) = http.get(&url).await;
                (code == 200 && body["value"] == json!(i)).then_some(())
            })
            .await;
        }
    }

    // Kill one server: its keys are read from a replica, and not written.
    let victim = SERVERS[1];
    plane.sim.kill_pod(NS, victim).await;
    let raw = reqwest::Client::new();
    for (i, (key, primary)) in primaries.iter().enumerate() {
        let url = key_url(&gateway.url, "get", key);
        let response = raw.get(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{key}");
        if primary == victim {
            let header = response
                .headers()
                .get("x-kv-primary-unavailable")
                .map(|h| h.to_str().unwrap().to_owned());
            assert_eq!(header.as_deref(), Some(victim), "{key}");
        }
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["value"], json!(i), "{key}");
    }
    let (victim_key, _) = primaries.iter().find(|(_, p)| p == victim).unwrap();
    let (code, _) = http
        .put(&key_url(&gateway.url, "put", victim_key), &json!("new"))
        .await;
    assert_eq!(code, 503, "writes wait for their primary");

    // It comes back (new address, same DNS name) and takes writes again.
    plane.sim.restart_pod(NS, victim).await;
    let body = eventually("a write to the restarted server", || async {
        let (code, body) = http
            .put(&key_url(&gateway.url, "put", victim_key), &json!("new"))
            .await;
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(body["version"], 2, "{body}");

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
