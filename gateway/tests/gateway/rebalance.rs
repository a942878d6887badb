//! Rebalancing under load (docs/rebalancing.md), with real server processes: the cluster goes
//! from 3 servers to 5, then to 2, through the coordinator (`kv-rebalance`, what `kvstore ring
//! apply` and the operator run), while clients put and get through the gateway and a server
//! is killed -9 or stalled (SIGSTOP) in the middle of each move. The recorded history and the final state must
//! pass the checker of `kv_test_support::history`: no acknowledged version lost, none forked,
//! replicas converged, reads fresh.
//!
//! Seeded like the replication fault test: `KV_HISTORY_SEED`, and `KV_HISTORY_SECS` (default
//! 12) for the load before, between and after the moves.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kv_common::ring_config::RingMember;
use kv_rebalance::{Coordinator, Target};
use kv_test_support::history::{self, CheckOptions, Recorder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::procs::ProcCluster;
use crate::replication::{CLIENTS, Counts, Failures, KEYS, client, env_u64, final_state};

const DEFAULT_SEED: u64 = 0x7265_6261_6c61_6e63;
const DEFAULT_SECS: u64 = 12;

fn members(cluster: &ProcCluster, indices: &[usize]) -> Vec<RingMember> {
    indices
        .iter()
        .map(|&i| RingMember {
            name: cluster.names[i].clone(),
            url: cluster.url(i),
        })
        .collect()
}

/// Moves the cluster to `target` while killing (or stalling, SIGSTOP) one random server of
/// the old or new ring after `kill_after`, restarting (resuming) it a moment later. Returns
/// how long the move took.
async fn move_to(
    cluster: &Arc<ProcCluster>,
    target: &[usize],
    rng: &mut StdRng,
    failures: &mut Failures,
) -> Duration {
    let involved: BTreeSet<usize> = cluster
        .members()
        .into_iter()
        .chain(target.iter().copied())
        .collect();
    let involved: Vec<usize> = involved.into_iter().collect();
    let victim = involved[rng.random_range(0..involved.len())];
    let kill_after = Duration::from_millis(rng.random_range(50..600));
    let down_for = Duration::from_millis(rng.random_range(300..1_500));
    let stall = rng.random_bool(0.5);
    let nemesis = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            let name = &cluster.names[victim];
            if stall {
                println!("nemesis: SIGSTOP {name} during the move");
                cluster.pause(victim);
                tokio::time::sleep(down_for).await;
                cluster.resume(victim);
            } else {
                println!("nemesis: kill -9 {name} during the move");
                cluster.kill(victim);
                tokio::time::sleep(down_for).await;
                cluster.restart(victim).await;
            }
            println!("nemesis: {name} is back");
        })
    };
    let seeds = members(cluster, &involved);
    let goal = Target {
        members: members(cluster, target),
        vnodes: None,
        replication_factor: None,
    };
    let started = Instant::now();
    let mut last = String::new();
    let outcome = Coordinator::new(Duration::from_secs(3))
        .run(
            &seeds,
            &goal,
            Duration::from_millis(100),
            Duration::from_secs(90),
            |p| {
                let line = format!("{} {} {:?}", p.phase.as_str(), p.message, p.waiting_for);
                if line != last {
                    println!("move: [{:>5.1}s] {line}", started.elapsed().as_secs_f64());
                    last = line;
                }
            },
        )
        .await;
    let took = started.elapsed();
    nemesis.await.unwrap();
    match outcome {
        Ok(done) => println!("move: epoch {} in force after {took:?}", done.epoch),
        Err(e) => failures.add("move", e.to_string()),
    }
    took
}

/// The gateway's `/servers`: the member names and the epoch it routes by.
async fn gateway_ring(cluster: &ProcCluster) -> (Vec<String>, u64) {
    let servers = cluster.gateway.servers_with_token().await;
    let names = servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    (names, servers["epoch"].as_u64().unwrap_or(0))
}

/// Waits until the gateway routes by `epoch` (it learns within a health interval).
async fn wait_gateway_epoch(cluster: &ProcCluster, epoch: u64, failures: &mut Failures) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (names, seen) = gateway_ring(cluster).await;
        if seen >= epoch {
            let want: Vec<String> = cluster
                .members()
                .iter()
                .map(|&i| cluster.names[i].clone())
                .collect();
            if names != want {
                failures.add(
                    "gateway",
                    format!("epoch {seen}: members {names:?}, want {want:?}"),
                );
            }
            return;
        }
        if Instant::now() > deadline {
            failures.add("gateway", format!("still at epoch {seen}, want {epoch}"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After a clean-up each member holds only the keys it replicates under the new ring.
async fn check_cleaned(cluster: &ProcCluster, keys: &[String], failures: &mut Failures) {
    for i in cluster.members() {
        for key in keys {
            let holds = cluster.replicas(key).contains(&i);
            match cluster.versions(i, key).await {
                Ok(v) if !holds && !v.is_empty() => failures.add(
                    "clean-up",
                    format!(
                        "{} still holds {key}, which it no longer replicates",
                        cluster.names[i]
                    ),
                ),
                Ok(_) => {}
                Err(e) => failures.add("clean-up", e),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_across_scale_3_to_5_to_2_is_consistent() {
    let seed = env_u64("KV_HISTORY_SEED", DEFAULT_SEED);
    let secs = env_u64("KV_HISTORY_SECS", DEFAULT_SECS);
    println!("rebalance history: KV_HISTORY_SEED={seed} KV_HISTORY_SECS={secs}");
    let mut rng = StdRng::seed_from_u64(seed);
    // s0..s2 form the ring; s3 and s4 run as joiners, owning nothing yet.
    let cluster = Arc::new(ProcCluster::start_with_spares(3, 2).await);
    let keys: Vec<String> = (0..KEYS).map(|k| format!("h{k}")).collect();
    let recorder = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (url, recorder) = (cluster.gateway.url.clone(), recorder.clone());
            tokio::spawn(client(id, url, recorder, stop.clone(), seed))
        })
        .collect();
    let mut failures = Failures::default();
    let quiet = Duration::from_secs(secs) / 3;

    tokio::time::sleep(quiet).await;
    let grow = move_to(&cluster, &[0, 1, 2, 3, 4], &mut rng, &mut failures).await;
    cluster.set_ring(&cluster.names.clone());
    wait_gateway_epoch(&cluster, 1, &mut failures).await;
    check_cleaned(&cluster, &keys, &mut failures).await;

    tokio::time::sleep(quiet).await;
    let shrink = move_to(&cluster, &[0, 4], &mut rng, &mut failures).await;
    let left = [cluster.names[0].clone(), cluster.names[4].clone()];
    cluster.set_ring(&left);
    // The removed servers are stopped only now, as the operator does.
    for i in 1..4 {
        if cluster.is_running(i) {
            cluster.kill(i);
        }
    }
    wait_gateway_epoch(&cluster, 2, &mut failures).await;

    tokio::time::sleep(quiet).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    for i in cluster.members() {
        if !cluster.is_running(i) {
            cluster.restart(i).await;
        }
    }
    if let Err(e) = cluster.wait_caught_up(Duration::from_secs(30)).await {
        failures.add("catch-up", e);
    }
    check_cleaned(&cluster, &keys, &mut failures).await;
    let events = recorder.events();
    let state = final_state(&cluster, &keys, &events, &mut failures).await;
    let report = history::check(&events, &state, CheckOptions::default());
    let counts = Counts::of(&events);
    println!(
        "rebalance history: {} events, {} puts acknowledged, {} indeterminate, {} refused \
         unstored, {} reads found, {} unavailable; 3 -> 5 took {grow:?}, 5 -> 2 took {shrink:?}",
        events.len(),
        counts.acked,
        counts.unknown,
        counts.refused,
        counts.found,
        counts.unavailable
    );
    println!("{report}");
    let min_acked = 20 * secs as usize;
    if counts.acked < min_acked {
        failures.add(
            "load",
            format!("only {} acknowledged puts (want {min_acked})", counts.acked),
        );
    }
    for v in &report.violations {
        failures.add("checker", v.to_string());
    }
    if !failures.0.is_empty() {
        println!("rebalance history: failed with KV_HISTORY_SEED={seed} KV_HISTORY_SECS={secs}");
    }
    failures.assert_none();
}
