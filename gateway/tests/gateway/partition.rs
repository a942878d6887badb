//! Partitions among the servers (`netsplit.rs`), R = 3, W = 2, while the gateway reaches
//! every server: the partition a gateway cannot see, so it keeps sending a cut-off primary
//! its keys. Such a primary stores the puts it takes before it knows (it assigns versions
//! alone) but cannot reach a quorum, so it answers `503 quorum_failed`; once its peers stayed
//! silent it refuses puts up front (`503 quorum_unavailable`, nothing stored). Once healed,
//! the others pull what it stored and every replica of a key holds the same versions.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::procs::{ProcCluster, value_text};
use crate::replication::{Failures, run_history, until_next_fault};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_its_peers_acknowledges_nothing_and_loses_nothing() {
    let cluster = ProcCluster::start_with_links(3).await;
    let gw = &cluster.gateway;
    let keys: Vec<String> = (0..60).map(|i| format!("split-{i}")).collect();
    let value = |key: &str, v: u64| format!("{key}-v{v}");
    for key in &keys {
        let r = gw.put(&format!("/put/{key}"), json!(value(key, 1))).send();
        assert_eq!(r.await.unwrap().status(), 200, "put {key}");
    }

    let cut = 1;
    cluster.isolate(cut);
    let mut failures = Failures::default();

    // Every key once more, at once (the cut-off primary's puts wait out the quorum timeout).
    let puts = keys.iter().map(|key| async move {
        let r = gw.put(&format!("/put/{key}"), json!(value(key, 2))).send();
        let r = r.await.unwrap();
        let status = r.status().as_u16();
        (key, status, r.json::<Value>().await.unwrap_or_default())
    });
    for (key, status, body) in join_all(puts).await {
        if cluster.replicas(key)[0] == cut {
            // Stored on the primary alone: not acknowledged, and said so.
            if status != 503 || body["code"] != "quorum_failed" {
                failures.add(
                    "put with its primary cut off",
                    format!("{key}: {status} {body}"),
                );
            }
        } else if status != 200 || body["version"] != 2 {
            failures.add(
                "put with a replica cut off",
                format!("{key}: {status} {body}"),
            );
        }
    }

    // Its peers stayed silent through those puts: now it knows, and refuses puts of its keys
    // at once, storing nothing (checked below: no version 3 anywhere).
    let cut_keys: Vec<&String> = keys
        .iter()
        .filter(|k| cluster.replicas(k)[0] == cut)
        .collect();
    assert!(!cut_keys.is_empty());
    for key in &cut_keys {
        let started = Instant::now();
        let r = gw.put(&format!("/put/{key}"), json!("refused")).send();
        let r = r.await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or_default();
        let took = started.elapsed();
        if status != 503 || body["code"] != "quorum_unavailable" || took > Duration::from_secs(1) {
            failures.add(
                "put refused up front once the peers are known silent",
                format!("{key}: {status} {body} after {took:?}"),
            );
        }
    }

    match cluster.status(cut).await {
        Ok(status) if status.peers.iter().all(|p| !p.reachable) => {}
        other => failures.add("status names the silent peers", format!("{other:?}")),
    }

    // Healed: the versions only the cut-off primary stored reach the others, and every
    // replica of every key holds exactly versions 1 and 2.
    cluster.heal();
    if let Err(e) = cluster.wait_caught_up(Duration::from_secs(30)).await {
        failures.add("catch-up", e);
    }
    for key in &keys {
        let expected: Vec<(u64, String)> = (1..=2).map(|v| (v, value(key, v))).collect();
        for i in cluster.replicas(key) {
            match cluster.versions(i, key).await {
                Ok(held) if held == expected => {}
                Ok(held) => failures.add(
                    "every replica holds every version",
                    format!("{key} on {}: {held:?}", cluster.names[i]),
                ),
                Err(e) => failures.add("every replica holds every version", e),
            }
        }
        let r = gw.get(&format!("/get/{key}")).send().await.unwrap();
        let body: Value = r.json().await.unwrap_or_default();
        if body["version"] != 2 || value_text(&body["value"]) != value(key, 2) {
            failures.add("read after healing", format!("{key}: {body}"));
        }
        // The primary counts its peers again at their first answer (gossip asks every
        // second); until then its puts are refused, still storing nothing.
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = loop {
            let r = gw.put(&format!("/put/{key}"), json!(value(key, 3))).send();
            let body: Value = r.await.unwrap().json().await.unwrap_or_default();
            if body["code"] != "quorum_unavailable" || Instant::now() > deadline {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if body["version"] != 3 {
            failures.add("put after healing", format!("{key}: {body}"));
        }
    }
    failures.assert_none();
}

/// Every 1-3 s cuts a random server off for 0.5-4 s (at times long enough for a cut-off
/// primary to learn its peers are silent and refuse puts up front): from everyone both ways,
/// or only the links into it (its pushes pass, nobody can pull from it), or only the links
/// out of it (its pushes are lost, the others still pull from it). One partition at a time.
async fn partitioner(
    cluster: Arc<ProcCluster>,
    deadline: Instant,
    seed: u64,
    faults: Arc<AtomicUsize>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7370_6c69_7400);
    while until_next_fault(&mut rng, deadline, &faults).await {
        let victim = rng.random_range(0..cluster.len());
        let name = &cluster.names[victim];
        match rng.random_range(0..3) {
            0 => {
                println!("partition: {name} cut off from the other servers");
                cluster.isolate(victim);
            }
            1 => {
                println!("partition: no server reaches {name}");
                cluster.cut_where(|_, to| to == victim);
            }
            _ => {
                println!("partition: {name} reaches no server");
                cluster.cut_where(|from, _| from == victim);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..4_000))).await;
        cluster.heal();
        faults.fetch_add(1, Ordering::SeqCst);
        println!("partition: healed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_partitions_is_consistent() {
    let cluster = ProcCluster::start_with_links(3).await;
    run_history(cluster, partitioner, "partitions among the servers").await;
}
