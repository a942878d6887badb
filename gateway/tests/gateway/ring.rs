//! Ring configurations seen from the gateway, against fake members (`fake_member`): it learns
//! a newer ring from a member's `/health` (then `GET /internal/ring`) or from a
//! `409 stale_ring` answer, routes by it (members a static list never named included), names
//! its epoch on every key call, and passes the servers' rebalancing refusals through (a read
//! refused as `ring_behind` after a few short waits).

use kv_common::ring_config::{RingConfig, RingMember, RingState, RingView};
use kv_gateway::GatewayConfig;
use kv_gateway::ring::Ring;
use serde_json::{Value, json};

use crate::fake_member::{Fake, Seen, stored};
use crate::harness::{Gateway, wait_until};

fn ring(epoch: u64, members: &[(&str, &Fake)], r: usize) -> RingConfig {
    let members = members
        .iter()
        .map(|(name, fake)| RingMember {
            name: (*name).into(),
            url: format!("http://{}", fake.addr),
        })
        .collect();
    RingConfig::new(epoch, members, 150, r).unwrap()
}

/// `fake` says, in `/health` and `GET /internal/ring`, that it is on `config`.
fn serve_ring(fake: &Fake, name: &str, config: &RingConfig) {
    fake.set_health(json!({"status": "ok", "ring": {"epoch": config.epoch}}));
    let view = RingView {
        name: name.into(),
        state: RingState::stable(config.clone()),
        copied: false,
        synced: true,
        head: 0,
        copied_versions: 0,
        cleanup_pending: false,
        frozen_head: None,
    };
    fake.answer("/internal/ring", 200, serde_json::to_value(view).unwrap());
}

/// A gateway whose static list names only `kv-a` at `fake`.
async fn gateway_for(fake: &Fake) -> Gateway {
    let mut config =
        GatewayConfig::with_backends([("kv-a", format!("http://{}", fake.addr))]).unwrap();
    config.health_interval_ms = 100;
    config.connect_timeout_ms = 500;
    Gateway::start(config).await
}

async fn wait_for_epoch(gateway: &Gateway, epoch: u64) -> Value {
    wait_until(
        &format!("the gateway routes by ring epoch {epoch}"),
        || async {
            let servers = gateway.get_json("/servers").await;
            servers["ring_source"] == "config" && servers["epoch"] == epoch
        },
    )
    .await;
    gateway.get_json("/servers").await
}

/// Key requests a fake received (the gateway's own `/internal/ring` reads left out).
fn key_calls(fake: &Fake) -> Vec<Seen> {
    fake.seen()
        .into_iter()
        .filter(|s| !s.uri.starts_with("/internal/"))
        .collect()
}

#[tokio::test]
async fn a_higher_epoch_in_health_makes_the_gateway_fetch_and_route_by_that_ring() {
    let a = Fake::start(json!({"status": "ok"})).await;
    let b = Fake::start(json!({"status": "ok"})).await;
    let gateway = gateway_for(&a).await;
    wait_until("kv-a is up", || async {
        gateway.get_json("/servers").await["members"][0]["health"] == "up"
    })
    .await;
    let before = gateway.get_json("/servers").await;
    assert_eq!(
        (before["ring_source"].clone(), before["epoch"].clone()),
        (json!("members"), json!(1))
    );
    // Without a ring configuration, key calls name epoch 0 (a server past it says so).
    gateway.get("/get/k").send().await.unwrap();
    assert_eq!(
        key_calls(&a).last().unwrap().ring_epoch.as_deref(),
        Some("0")
    );

    // kv-b is in the servers' ring only: the gateway reaches it at the ring's URL.
    let config = ring(3, &[("kv-a", &a), ("kv-b", &b)], 2);
    serve_ring(&a, "kv-a", &config);
    let servers = wait_for_epoch(&gateway, 3).await;
    assert_eq!(servers["servers"], json!(["kv-a", "kv-b"]));
    assert_eq!(servers["members"][1]["url"], format!("http://{}", b.addr));
    assert_eq!(servers["replication_factor"], 2, "R from the ring");
    assert_eq!(servers["write_quorum"], 2);
    wait_until("kv-b is probed and up", || async {
        gateway.get_json("/servers").await["members"][1]["health"] == "up"
    })
    .await;

    let placement = Ring::new(["kv-a", "kv-b"], 150);
    let key = (0..)
        .map(|i| format!("key{i}"))
        .find(|k| placement.owner(k) == Some("kv-b"))
        .unwrap();
    b.answer(&format!("/put/{key}"), 200, json!({"version": 1}));
    let r = gateway
        .put(&format!("/put/{key}"), json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-server-used"], "kv-b");
    let put = key_calls(&b).pop().unwrap();
    assert_eq!(put.uri, format!("/put/{key}"));
    assert_eq!(put.ring_epoch.as_deref(), Some("3"));
    assert_eq!(put.write_quorum.as_deref(), Some("2"));
    assert!(key_calls(&a).iter().all(|s| s.uri != format!("/put/{key}")));
    assert!(
        gateway
            .metrics()
            .await
            .contains("kv_gateway_ring_config_adoptions_total{how=\"health\"} 1")
    );

    // An older ring reported later changes nothing.
    serve_ring(&a, "kv-a", &ring(2, &[("kv-a", &a)], 1));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(gateway.get_json("/servers").await["epoch"], 3);
}

#[tokio::test]
async fn a_stale_ring_answer_is_learned_and_the_request_routed_again() {
    let a = Fake::start(json!({"status": "ok"})).await;
    let b = Fake::start(json!({"status": "ok"})).await;
    let gateway = gateway_for(&a).await;
    serve_ring(&a, "kv-a", &ring(1, &[("kv-a", &a)], 1));
    wait_for_epoch(&gateway, 1).await;

    // kv-a moved on to epoch 2, where kv-b alone owns every key; it stores nothing for a
    // request routed by epoch 1.
    let newer = ring(2, &[("kv-b", &b)], 1);
    let stale = json!({"detail": "stale ring", "code": "stale_ring", "ring": newer});
    a.answer("/put/k", 409, stale.clone());
    a.answer("/get/k", 409, stale);
    b.answer("/put/k", 200, json!({"version": 7}));
    b.answer("/get/k", 200, stored(7, json!("v")));

    let r = gateway.put("/put/k", json!("v")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-server-used"], "kv-b");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["version"], 7);
    let refused = key_calls(&a);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].ring_epoch.as_deref(), Some("1"));
    let retried = key_calls(&b);
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].ring_epoch.as_deref(), Some("2"));

    // Later requests go straight to kv-b, naming epoch 2.
    let servers = wait_for_epoch(&gateway, 2).await;
    assert_eq!(servers["servers"], json!(["kv-b"]));
    let r = gateway.get("/get/k").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-server-used"], "kv-b");
    assert_eq!(key_calls(&a).len(), 1);
    let read = key_calls(&b).pop().unwrap();
    assert_eq!(
        (read.uri.as_str(), read.ring_epoch.as_deref()),
        ("/get/k", Some("2"))
    );
    let metrics = gateway.metrics().await;
    for needle in [
        "kv_gateway_ring_config_adoptions_total{how=\"stale_ring\"} 1",
        "kv_gateway_stale_ring_retries_total{route=\"put\"} 1",
        "kv_gateway_ring_epoch 2",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
}

/// Members `kv-a` and `kv-b` (R = 2) on ring epoch 4, a gateway routing by it, and a key
/// whose primary is `kv-a`.
async fn routing_by_epoch_4() -> (Fake, Fake, Gateway, String) {
    let a = Fake::start(json!({"status": "ok"})).await;
    let b = Fake::start(json!({"status": "ok"})).await;
    let gateway = gateway_for(&a).await;
    serve_ring(&a, "kv-a", &ring(4, &[("kv-a", &a), ("kv-b", &b)], 2));
    wait_for_epoch(&gateway, 4).await;
    let placement = Ring::new(["kv-a", "kv-b"], 150);
    let key = (0..)
        .map(|i| format!("key{i}"))
        .find(|k| placement.owner(k) == Some("kv-a"))
        .unwrap();
    (a, b, gateway, key)
}

#[tokio::test]
async fn rebalancing_and_ring_behind_pass_through_with_retry_after() {
    let (a, b, gateway, key) = routing_by_epoch_4().await;
    let retry_after = vec![("retry-after", "1".to_owned())];
    a.answer_with(
        &format!("/put/{key}"),
        (
            503,
            json!({"detail": "primary moving", "code": "rebalancing"}),
            retry_after.clone(),
        ),
    );
    a.answer_with(
        &format!("/get/{key}"),
        (
            503,
            json!({"detail": "ring behind", "code": "ring_behind"}),
            retry_after,
        ),
    );

    let r = gateway
        .put(&format!("/put/{key}"), json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "rebalancing");
    assert_eq!(body["server_used"], "kv-a");

    // A read its primary keeps refusing as behind is asked again a few times over about
    // half a second, then passes the refusal on.
    let r = gateway.get(&format!("/get/{key}")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "ring_behind");

    // Of its primary only: the write once, the read five times; neither is read elsewhere.
    let calls = key_calls(&a);
    let puts = calls.iter().filter(|c| c.uri.starts_with("/put/")).count();
    assert_eq!((puts, calls.len() - puts), (1, 5));
    assert!(key_calls(&b).is_empty());
    let metrics = gateway.metrics().await;
    let needle = "kv_gateway_ring_behind_retries_total{route=\"get\"} 4";
    assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
}

/// The switch of a move reaches the servers a few milliseconds apart: a request whose
/// primary has not learned the gateway's ring yet waits for it rather than fail; a put too,
/// since the refusal stored nothing.
#[tokio::test]
async fn a_request_waits_for_its_primary_to_learn_the_ring() {
    let (a, b, gateway, key) = routing_by_epoch_4().await;
    let behind = json!({"detail": "ring behind", "code": "ring_behind"});
    let (get, put) = (format!("/get/{key}"), format!("/put/{key}"));
    a.answer(&get, 503, behind.clone());
    a.answer(&put, 503, behind);
    let learns = async {
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        a.answer(&get, 200, stored(3, json!("v")));
        a.answer(&put, 200, json!({"version": 4}));
    };
    let (read, written, ()) = tokio::join!(
        gateway.get(&get).send(),
        gateway.put(&put, json!("w")).send(),
        learns
    );
    for (r, version) in [(read.unwrap(), 3), (written.unwrap(), 4)] {
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-server-used"], "kv-a");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["version"], version);
    }
    let calls = key_calls(&a);
    for route in ["/get/", "/put/"] {
        let tries = calls.iter().filter(|c| c.uri.starts_with(route)).count();
        assert!(tries >= 2, "{route}: {calls:?}");
    }
    assert!(calls.iter().all(|c| c.ring_epoch.as_deref() == Some("4")));
    assert!(key_calls(&b).is_empty());
}
