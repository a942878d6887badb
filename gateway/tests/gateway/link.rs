//! The pipelined link through a server's graceful shutdown: requests it took are answered,
//! the rest are refused as never seen (503, nothing stored), never left indeterminate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::Cluster;

#[tokio::test]
async fn a_server_stopping_under_load_answers_what_it_took_and_nothing_else_is_stored() {
    let mut cluster = Cluster::start(&["kv-0"]).await;
    let running = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for writer in 0..16 {
        let (gateway, running) = (cluster.gateway.url.clone(), running.clone());
        let http = cluster.gateway.http.clone();
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while running.load(Ordering::Relaxed) {
                let key = format!("w{writer}-{n}");
                n += 1;
                let response = http
                    .put(format!("{gateway}/put/{key}"))
                    .json(&json!({ "value": n }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or_default();
                outcomes.push((key, status, body["code"].as_str().unwrap_or("").to_owned()));
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.servers[0].stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.extend(writer.await.unwrap());
    }

    // Each put is stored (200), refused as never seen (503 server_unavailable), or other.
    let (mut stored, mut refused, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for (key, status, code) in &outcomes {
        match (*status, code.as_str()) {
            (200, _) => stored.push(key),
            (503, "server_unavailable") => refused.push(key),
            _ => other.push((key, status, code)),
        }
    }
    assert!(
        other.is_empty(),
        "indeterminate or unexpected answers: {other:?}"
    );
    assert!(
        !stored.is_empty() && !refused.is_empty(),
        "the stop fell inside the load"
    );

    // Back up: every put answered 200 is there, every refused one is not.
    cluster.servers[0].restart().await;
    let gw = &cluster.gateway;
    crate::harness::wait_until("the server is back", || async {
        gw.get("/get/none")
            .send()
            .await
            .is_ok_and(|r| r.status() == 404)
    })
    .await;
    let stored = stored.into_iter().map(|key| (key, 200));
    for (key, expected) in stored.chain(refused.into_iter().map(|key| (key, 404))) {
        let status = gw
            .get(&format!("/get/{key}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, expected, "{key}");
    }
}
