//! put / get / versions through the gateway land on the key's owner.

use kv_gateway::config::Transport;
use serde_json::{Value, json};

use crate::harness::Cluster;

#[tokio::test]
async fn put_get_versions_reach_the_owner_with_awkward_keys() {
    put_get_versions_over(Transport::Link).await;
}

/// `--backend-transport http`: the same answers, one HTTP exchange per request.
#[tokio::test]
async fn put_get_versions_reach_the_owner_over_plain_http_too() {
    put_get_versions_over(Transport::Http).await;
}

async fn put_get_versions_over(transport: Transport) {
    let cluster = Cluster::start_with(&["kv-0", "kv-1", "kv-2"], |config| {
        config.backend_transport = transport;
    })
    .await;
    let gw = &cluster.gateway;
    // One path segment each: `/`, space, unicode, `%`, `?`, `#`, dots.
    // (`..` alone cannot be tested: HTTP clients resolve it before sending.)
    for key in [
        "plain",
        "a/b",
        "with space",
        "été",
        "100%",
        "what?#x",
        "a..b",
        "user:1",
    ] {
        let path = format!("/put/{}", percent(key));
        let owner = cluster.ring.owner(key).unwrap();

        // Sent as text: serde_json's Value cannot hold this integer exactly.
        let first = gw
            .http
            .put(format!("{}{path}", gw.url))
            .header("content-type", "application/json")
            .body(r#"{"value": 12345678901234567890123}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 200, "{key}");
        assert_eq!(first.headers()["x-server-used"], owner);
        let text = first.text().await.unwrap();
        let first: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(first["key"], key);
        assert_eq!(first["version"], 1);
        assert_eq!(first["server_used"], owner);

        // POST works too (the seed's method).
        let second = gw
            .http
            .post(format!("{}{path}", gw.url))
            .json(&json!({ "value": {"n": 2} }))
            .send()
            .await
            .unwrap();
        assert_eq!(second.status(), 200);

        let latest = gw.get_json(&format!("/get/{}", percent(key))).await;
        assert_eq!(latest["value"], json!({"n": 2}));
        assert_eq!(latest["version"], 2);
        assert_eq!(latest["server_used"], owner);

        // Big integers survive the gateway's decoration byte for byte.
        let v1 = gw
            .get(&format!("/get/{}?version=1", percent(key)))
            .send()
            .await
            .unwrap();
        assert!(
            v1.text().await.unwrap().contains("12345678901234567890123"),
            "{key}"
        );

        let versions: Value = gw
            .get(&format!("/versions/{}?after=0&limit=10", percent(key)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(versions["latest_version"], 2);
        assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
        assert_eq!(versions["server_used"], owner);
    }

    // Each key is stored on its owner only.
    let mut total = 0;
    for server in &cluster.servers {
        let stats: Value = gw
            .get_json(&format!("/db/stats?server={}", server.name))
            .await;
        total += stats["total_keys"].as_u64().unwrap();
    }
    assert_eq!(total, 8);
}

#[tokio::test]
async fn server_errors_pass_through_with_their_status_and_code() {
    let cluster = Cluster::start(&["kv-0", "kv-1"]).await;
    let gw = &cluster.gateway;
    let missing = gw.get("/get/nosuchkey").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let owner = cluster.ring.owner("nosuchkey").unwrap();
    assert_eq!(missing.headers()["x-server-used"], owner);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "key_not_found");
    assert_eq!(body["server_used"], owner);

    gw.put("/put/cas", json!(1)).send().await.unwrap();
    let conflict = gw
        .put("/put/cas?if_version=7", json!(2))
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 412);
    let ok = gw
        .put("/put/cas?if_version=1", json!(2))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let bad = gw.get("/get/cas?version=abc").send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn servers_lists_members_health_shares_and_epoch() {
    let cluster = Cluster::start(&["kv-0", "kv-1"]).await;
    let body: Value = cluster.gateway.get_json("/servers").await;
    assert_eq!(body["servers"], json!(["kv-0", "kv-1"]));
    assert_eq!(body["count"], 2);
    assert_eq!(body["epoch"], 1);
    let members = body["members"].as_array().unwrap();
    assert_eq!(members[0]["url"], cluster.servers[0].url());
    assert_eq!(members[0]["health"], "up");
    let shares: f64 = members
        .iter()
        .map(|m| m["ring_share"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-6);
}

/// Percent-encodes a key as one path segment.
pub fn percent(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
