//! A stalled server (SIGSTOP: its sockets stay open, nothing answers), R = 3, W = 2. Unlike
//! a dead one it refuses no connection, so every path that talks to it must give up on its
//! own: the gateway's request timeout and health probe, the primaries' pushes (the quorum
//! is reached without it), the peers' catch-up pulls. When it resumes it must catch up on
//! everything written meanwhile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::procs::ProcCluster;
use crate::replication::{Failures, wait_health};

/// The servers' `--replication-timeout-ms` default: a put that waited for the stalled
/// replica's confirmation would take at least this long.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_holds_up_no_write_and_catches_up_when_it_resumes() {
    let cluster = ProcCluster::start(3).await;
    let gw = &cluster.gateway;
    let keys: Vec<String> = (0..90).map(|i| format!("stall-{i}")).collect();
    let value = |key: &str, v: u64| format!("{key}-v{v}");
    let mut latest: BTreeMap<&str, u64> = BTreeMap::new();
    for key in &keys {
        let r = gw.put(&format!("/put/{key}"), json!(value(key, 1))).send();
        assert_eq!(r.await.unwrap().status(), 200, "put {key}");
        latest.insert(key, 1);
    }

    let stalled = 1;
    let name = cluster.names[stalled].clone();
    let (owned, replicated): (Vec<&str>, Vec<&str>) = keys
        .iter()
        .map(String::as_str)
        .partition(|k| cluster.replicas(k)[0] == stalled);
    assert!(!owned.is_empty() && !replicated.is_empty());
    cluster.pause(stalled);
    let mut failures = Failures::default();

    // A put already on its way to the stalled primary: an error the client can act on within
    // the gateway's request timeout (504: it may still be applied), or 503 if the health
    // probe was quicker. Never a hang, never a 200 from elsewhere.
    let started = Instant::now();
    let r = gw
        .put(&format!("/put/{}", owned[0]), json!("in flight"))
        .send();
    let r = r.await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    if !matches!(status, 503 | 504) || body["code"].as_str().is_none() {
        failures.add("put to the stalled primary", format!("{status} {body}"));
    }
    let took = started.elapsed();
    println!("put in flight to the stalled primary: {status} after {took:?}");
    assert!(took < Duration::from_secs(10), "{status} {body}");

    wait_health(&cluster, &name, "down").await;

    // Every key whose primary answers takes its write; the stalled replica's confirmation is
    // not waited for (W = 2 is the primary and the other replica).
    let mut slowest = Duration::ZERO;
    for key in &keys {
        let next = latest[key.as_str()] + 1;
        let started = Instant::now();
        let r = gw
            .put(&format!("/put/{key}"), json!(value(key, next)))
            .send();
        let r = r.await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        if owned.contains(&key.as_str()) {
            if status != 503 {
                failures.add(
                    "put with its primary stalled",
                    format!("{key}: {status} {body}"),
                );
            }
            continue;
        }
        slowest = slowest.max(started.elapsed());
        if status == 200 && body["version"] == next {
            latest.insert(key, next);
        } else {
            failures.add(
                "put with a replica stalled",
                format!("{key}: {status} {body}"),
            );
        }
    }
    println!("slowest put with a replica stalled: {slowest:?}");
    if slowest >= REPLICATION_TIMEOUT {
        failures.add(
            "put with a replica stalled",
            format!("the slowest took {slowest:?}: it waited for the stalled replica"),
        );
    }

    // Every key reads its latest version: the stalled primary's from the other replicas.
    for key in &keys {
        let r = gw.get(&format!("/get/{key}")).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        let v = latest[key.as_str()];
        if status != 200 || body["version"] != v || body["value"] != value(key, v) {
            failures.add(
                "read with a server stalled",
                format!("{key}: {status} {body}"),
            );
        }
    }

    // Resumed: it answers again, catches up, and holds every version of what it replicates.
    // The put that was in flight may have been applied meanwhile: its key's next version
    // comes after it, whichever it is.
    cluster.resume(stalled);
    wait_health(&cluster, &name, "up").await;
    if let Err(e) = cluster.wait_caught_up(Duration::from_secs(30)).await {
        failures.add("catch-up", e);
    }
    for key in keys
        .iter()
        .filter(|k| cluster.replicas(k).contains(&stalled))
    {
        let held = match cluster.versions(stalled, key).await {
            Ok(held) => held,
            Err(e) => {
                failures.add("the resumed server's versions", e);
                continue;
            }
        };
        let mut expected: Vec<(u64, String)> = (1..=latest[key.as_str()])
            .map(|v| (v, value(key, v)))
            .collect();
        let mut fits = held == expected;
        if !fits && key.as_str() == owned[0] {
            expected.push((latest[key.as_str()] + 1, "in flight".to_owned()));
            fits = held == expected;
        }
        if !fits {
            failures.add(
                "the resumed server holds every version",
                format!("{key}: holds {held:?}, expected {expected:?}"),
            );
        }
    }
    for key in &keys {
        let r = gw.put(&format!("/put/{key}"), json!("after")).send();
        let r = r.await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        let newer = body["version"]
            .as_u64()
            .is_some_and(|v| v > latest[key.as_str()]);
        if status != 200 || !newer {
            failures.add("put after the resume", format!("{key}: {status} {body}"));
        }
    }
    failures.assert_none();
}
