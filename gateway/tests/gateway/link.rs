//! The pipelined link through a server's graceful shutdown: requests it took are answered,
//! the rest are refused as never seen (503, nothing stored), never left indeterminate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use kv_gateway::GatewayConfig;

use crate::harness::{Cluster, Gateway, wait_until};

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

/// A GET answer larger than the link takes comes over HTTP, whole; small ones stay on the
/// link, so a large value never holds up the answers behind it there.
#[tokio::test]
async fn a_large_get_answer_comes_over_http_whole() {
    let cluster = Cluster::start(&["kv-0"]).await;
    let gw = &cluster.gateway;
    let big = "x".repeat(100 << 10);
    for (key, value) in [("big", json!(big)), ("small", json!("s"))] {
        let put = gw.put(&format!("/put/{key}"), value).send().await.unwrap();
        assert_eq!(put.status(), 200);
    }
    let over_http = || link_events(gw, "answer_over_http");
    let read = |key: &'static str| async move {
        let answer = gw.get(&format!("/get/{key}")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        answer.json::<Value>().await.unwrap()
    };

    assert_eq!(read("small").await["value"], "s");
    assert_eq!(over_http().await, 0);
    // Sent in pieces around the value (kv_common::body), still with its length up front.
    let answer = gw.get("/get/big").send().await.unwrap();
    let length = answer.headers()[reqwest::header::CONTENT_LENGTH].clone();
    let text = answer.text().await.unwrap();
    assert_eq!(length.to_str().unwrap(), text.len().to_string());
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["value"], big.as_str());
    assert_eq!(got["version"], 1);
    assert_eq!(got["server_used"], "kv-0");
    assert_eq!(over_http().await, 1);
    // An exact version is another GET: asked on the link first, then over HTTP too.
    assert_eq!(
        gw.get("/get/big?version=1").send().await.unwrap().status(),
        200
    );
    assert_eq!(over_http().await, 2);

    // The gateway remembers: the same GETs again go over HTTP at once, and the server
    // builds no answer only to throw it away.
    let known = || link_events(gw, "known_large_over_http");
    assert_eq!(known().await, 0);
    assert_eq!(read("big").await["value"], big.as_str());
    assert_eq!(
        gw.get("/get/big?version=1").send().await.unwrap().status(),
        200
    );
    assert_eq!((over_http().await, known().await), (2, 2));
    assert_eq!(read("small").await["value"], "s");
    assert_eq!(known().await, 2, "small answers stay on the link");

    // Once the latest value is small again, one read finds out and the next is on the link.
    let put = gw.put("/put/big", json!("now small")).send().await.unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(read("big").await["value"], "now small");
    assert_eq!(known().await, 3);
    let got = read("big").await;
    assert_eq!(
        (got["value"].as_str(), &got["version"]),
        (Some("now small"), &json!(2))
    );
    assert_eq!((over_http().await, known().await), (2, 3));
}

/// `--links-per-server 4` on real servers: every request answered as over one link, and the
/// gateway opened four links to each server it used.
#[tokio::test]
async fn several_links_per_server_carry_requests_alike() {
    let cluster = Cluster::start_with(&["kv-0", "kv-1"], |config| {
        config.links_per_server = 4;
    })
    .await;
    let gw = &cluster.gateway;
    // 32 clients at once, each writing three versions of its key, then reading one back.
    let client = |n: usize| async move {
        let key = format!("k{n}");
        for version in 1..=3 {
            let put = gw.put(&format!("/put/{key}"), json!(version)).send();
            let put: Value = put.await.unwrap().json().await.unwrap();
            assert_eq!(put["version"], version, "{put}");
        }
        let got = gw.get_json(&format!("/get/{key}?version=2")).await;
        assert_eq!(got["value"], 2);
    };
    futures::future::join_all((0..32).map(client)).await;
    assert_eq!(link_events(gw, "opened").await, 8);
}

/// The gateway's `kv_gateway_link_events_total` for `event` (0 before the first).
async fn link_events(gw: &Gateway, event: &str) -> u64 {
    let prefix = format!(r#"kv_gateway_link_events_total{{event="{event}"}} "#);
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()).map(|n| n.parse().unwrap()))
        .unwrap_or(0)
}

async fn health_of(gw: &Gateway, member: &str) -> String {
    let servers = gw.servers_with_token().await;
    let members = servers["members"].as_array().cloned().unwrap_or_default();
    let member = members.iter().find(|m| m["name"] == member);
    member.map_or(String::new(), |m| {
        m["health"].as_str().unwrap_or("").to_owned()
    })
}

/// After a real partition heals, a connection with data in flight stays silent until TCP's
/// next retransmission, up to two minutes later, while new connections pass at once. The
/// gateway's health probes ride the link, so they would keep the member down all that time;
/// instead, a member that answers over HTTP but not on its link gets a new link.
#[tokio::test]
async fn a_link_left_silent_by_a_healed_partition_is_replaced() {
    let mut proxy = None;
    let cluster = Cluster::start_with(&["kv-0"], |c| {
        let server_port = c.backends[0].url.host_port().rsplit(':').next().unwrap();
        let link = crate::netsplit::Link::start(server_port.parse().unwrap());
        let url = format!("http://127.0.0.1:{}", link.port);
        c.backends = GatewayConfig::with_backends([("kv-0", url)])
            .unwrap()
            .backends;
        proxy = Some(link);
    })
    .await;
    let (proxy, gw) = (proxy.unwrap(), &cluster.gateway);
    let r = gw.put("/put/k", json!(1)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    proxy.cut();
    wait_until("the member is down", || async {
        health_of(gw, "kv-0").await == "down"
    })
    .await;
    proxy.heal_new_only();
    wait_until("a get through the gateway answers", || async {
        let r = gw.get("/get/k").send().await.unwrap();
        r.status() == 200
    })
    .await;
    assert!(link_events(gw, "stuck").await >= 1);
}
