//! Replication seen from the gateway, against fake members (`fake_member`): reads leave an
//! unavailable or syncing primary for the key's replicas, writes never do, and `/servers`
//! shows what the members' health says.

use std::collections::HashMap;

use axum::http::Method;
use kv_gateway::GatewayConfig;
use kv_gateway::ring::{DEFAULT_VNODES, Ring};
use serde_json::{Value, json};

use crate::fake_member::{Fake, Seen, replicated, stored};
use crate::harness::{Gateway, wait_until};

/// kv-0, kv-1, kv-2 behind a gateway: fakes, except kv-0 when `ghost_primary` (a port
/// nothing listens on) is set.
struct Cluster {
    fakes: HashMap<&'static str, Fake>,
    ring: Ring,
    gateway: Gateway,
}

const NAMES: [&str; 3] = ["kv-0", "kv-1", "kv-2"];

impl Cluster {
    async fn start(ghost_primary: bool, tweak: impl FnOnce(&mut GatewayConfig)) -> Cluster {
        let mut fakes = HashMap::new();
        let mut members = Vec::new();
        for name in NAMES {
            if ghost_primary && name == "kv-0" {
                let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                members.push((name, format!("http://{}", closed.local_addr().unwrap())));
                continue;
            }
            let fake = Fake::start(replicated(0, true)).await;
            members.push((name, format!("http://{}", fake.addr)));
            fakes.insert(name, fake);
        }
        let mut config = GatewayConfig::with_backends(members).unwrap();
        config.health_interval_ms = 100;
        config.connect_timeout_ms = 500;
        tweak(&mut config);
        let gateway = Gateway::start(config).await;
        wait_until("every fake is up", || async {
            let servers = gateway.get_json("/servers").await;
            servers["members"].as_array().is_some_and(|members| {
                members.len() == NAMES.len()
                    && members
                        .iter()
                        .all(|m| m["health"] == "up" || (ghost_primary && m["name"] == "kv-0"))
            })
        })
        .await;
        Cluster {
            fakes,
            ring: Ring::new(NAMES, DEFAULT_VNODES),
            gateway,
        }
    }

    /// A key whose preference list (R = 3) starts with `primary`, and that list.
    fn key_with_primary(&self, primary: &str) -> (String, Vec<&'static str>) {
        (0..)
            .map(|i| format!("key{i}"))
            .find_map(|key| {
                let list: Vec<&'static str> = self
                    .ring
                    .preference_list(&key, 3)
                    .into_iter()
                    .map(|name| *NAMES.iter().find(|n| **n == name).unwrap())
                    .collect();
                (list[0] == primary).then_some((key, list))
            })
            .unwrap()
    }

    fn fake(&self, name: &str) -> &Fake {
        &self.fakes[name]
    }

    async fn metrics(&self) -> String {
        let r = self.gateway.get("/metrics").send().await.unwrap();
        r.text().await.unwrap()
    }
}

#[tokio::test]
async fn a_refused_primary_is_read_from_the_replica_with_the_highest_version() {
    let cluster = Cluster::start(true, |_| {}).await;
    let (key, list) = cluster.key_with_primary("kv-0");
    let (second, third) = (list[1], list[2]);
    cluster
        .fake(second)
        .answer(&format!("/get/{key}"), 200, stored(2, json!("old")));
    cluster
        .fake(third)
        .answer(&format!("/get/{key}"), 200, stored(3, json!("new")));

    // The first read may find kv-0 down by connecting, later ones by its health.
    for _ in 0..2 {
        let r = cluster
            .gateway
            .get(&format!("/get/{key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-server-used"], third);
        assert_eq!(r.headers()["x-kv-primary-unavailable"], "kv-0");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (body["version"].clone(), body["value"].clone()),
            (json!(3), json!("new"))
        );
        assert_eq!(body["server_used"], third);
    }
    assert!(
        cluster
            .metrics()
            .await
            .contains("kv_gateway_fallback_reads_total{outcome=\"served\"} 2")
    );
}

#[tokio::test]
async fn a_syncing_primary_sends_reads_latest_or_exact_to_the_replicas() {
    let cluster = Cluster::start(false, |_| {}).await;
    let (key, list) = cluster.key_with_primary("kv-1");
    let (primary, second, third) = (cluster.fake(list[0]), list[1], list[2]);
    let syncing = json!({"detail": "catching up", "code": "syncing"});
    for uri in [
        format!("/get/{key}"),
        format!("/get/{key}?version=1"),
        format!("/get/{key}?version=2"),
        format!("/versions/{key}"),
    ] {
        primary.answer(&uri, 503, syncing.clone());
    }
    let answers = [
        (second, format!("/get/{key}"), 200, stored(2, json!("b"))),
        (third, format!("/get/{key}"), 200, stored(2, json!("b"))),
        (
            second,
            format!("/get/{key}?version=1"),
            404,
            json!({"detail": "x", "code": "version_not_found"}),
        ),
        (
            third,
            format!("/get/{key}?version=1"),
            200,
            stored(1, json!("a")),
        ),
        (
            second,
            format!("/get/{key}?version=2"),
            200,
            stored(2, json!("b")),
        ),
        (
            third,
            format!("/get/{key}?version=2"),
            200,
            stored(2, json!("b")),
        ),
    ];
    for (name, uri, status, body) in answers {
        cluster.fake(name).answer(&uri, status, body);
    }
    let gw = &cluster.gateway;

    // Latest, tied: the earlier replica in the preference list.
    let r = gw.get(&format!("/get/{key}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-server-used"], second);
    assert_eq!(r.headers()["x-kv-primary-unavailable"], list[0]);

    // An exact version: the first replica that has it.
    for (query, version, from) in [("version=1", 1, third), ("version=2", 2, second)] {
        let r = gw.get(&format!("/get/{key}?{query}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{query}");
        assert_eq!(r.headers()["x-server-used"], from, "{query}");
        assert_eq!(r.headers()["x-kv-primary-unavailable"], list[0]);
        assert_eq!(r.json::<Value>().await.unwrap()["version"], version);
    }

    // Listing versions is the primary's alone: its 503 passes through.
    let r = gw.get(&format!("/versions/{key}")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "syncing");
    for name in [second, third] {
        assert!(
            cluster
                .fake(name)
                .seen()
                .iter()
                .all(|s| !s.uri.starts_with("/versions/"))
        );
    }
}

#[tokio::test]
async fn a_key_no_replica_has_is_503_naming_the_primary_never_404() {
    let cluster = Cluster::start(true, |_| {}).await;
    let (key, list) = cluster.key_with_primary("kv-0");
    let r = cluster
        .gateway
        .get(&format!("/get/{key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-server-used"], "kv-0");
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.headers().get("x-kv-primary-unavailable").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "server_unavailable");
    assert!(body["detail"].as_str().unwrap().contains("kv-0"));
    // Both replicas were asked.
    for name in &list[1..] {
        let seen = cluster.fake(name).seen();
        assert!(
            seen.iter().any(|s| s.uri == format!("/get/{key}")),
            "{name}"
        );
    }
    assert!(
        cluster
            .metrics()
            .await
            .contains("kv_gateway_fallback_reads_total{outcome=\"unavailable\"} 1")
    );
}

#[tokio::test]
async fn puts_carry_the_write_quorum_and_never_leave_the_primary() {
    let cluster = Cluster::start(true, |_| {}).await;
    let gw = &cluster.gateway;

    let (up_key, up_list) = cluster.key_with_primary("kv-1");
    let acked = format!("kv-1,{}", up_list[1]);
    cluster.fake("kv-1").answer_with(
        &format!("/put/{up_key}"),
        (
            200,
            json!({"key": up_key, "version": 1}),
            vec![("x-kv-acked-by", acked.clone())],
        ),
    );
    let r = gw
        .put(&format!("/put/{up_key}"), json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-kv-acked-by"], acked.as_str());
    assert_eq!(r.headers()["x-server-used"], "kv-1");
    let puts: Vec<Seen> = cluster
        .fake("kv-1")
        .seen()
        .into_iter()
        .filter(|s| s.method == Method::PUT)
        .collect();
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].write_quorum.as_deref(), Some("2"));

    // kv-0 is down: its keys' writes answer 503 and reach nobody else.
    let (down_key, _) = cluster.key_with_primary("kv-0");
    for _ in 0..2 {
        let r = gw
            .put(&format!("/put/{down_key}"), json!(1))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["x-server-used"], "kv-0");
    }
    for name in ["kv-1", "kv-2"] {
        let seen = cluster.fake(name).seen();
        assert!(
            seen.iter().all(|s| !s.uri.contains(&down_key)),
            "{name}: {seen:?}"
        );
    }
}

#[tokio::test]
async fn a_configured_write_quorum_is_sent_to_the_primary() {
    let cluster = Cluster::start(false, |c| c.write_quorum = Some(3)).await;
    let (key, _) = cluster.key_with_primary("kv-2");
    cluster.fake("kv-2").answer(
        &format!("/put/{key}"),
        200,
        json!({"key": key, "version": 1}),
    );
    let r = cluster
        .gateway
        .put(&format!("/put/{key}"), json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = cluster.fake("kv-2").seen();
    assert_eq!(seen[0].write_quorum.as_deref(), Some("3"));
}

#[tokio::test]
async fn without_replication_reads_never_leave_the_primary() {
    let cluster = Cluster::start(true, |c| c.replication_factor = 1).await;
    let (down_key, _) = cluster.key_with_primary("kv-0");
    let (syncing_key, _) = cluster.key_with_primary("kv-1");
    for fake in cluster.fakes.values() {
        for key in [&down_key, &syncing_key] {
            fake.answer(&format!("/get/{key}"), 200, stored(1, json!("x")));
        }
    }
    cluster.fake("kv-1").answer(
        &format!("/get/{syncing_key}"),
        503,
        json!({"detail": "catching up", "code": "syncing"}),
    );
    let gw = &cluster.gateway;

    let r = gw.get(&format!("/get/{down_key}")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "server_unavailable"
    );
    let r = gw.get(&format!("/get/{syncing_key}")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-server-used"], "kv-1");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "syncing");

    assert!(cluster.fake("kv-2").seen().is_empty());
    let kv1: Vec<String> = cluster
        .fake("kv-1")
        .seen()
        .into_iter()
        .map(|s| s.uri)
        .collect();
    assert_eq!(kv1, [format!("/get/{syncing_key}")]);

    let servers = gw.get_json("/servers").await;
    assert_eq!(
        (
            servers["replication_factor"].clone(),
            servers["write_quorum"].clone()
        ),
        (json!(1), json!(1))
    );
}

#[tokio::test]
async fn servers_shows_each_members_replication_from_its_health() {
    let cluster = Cluster::start(false, |_| {}).await;
    cluster.fake("kv-0").set_health(replicated(5, false));
    cluster.fake("kv-2").set_health(json!({"status": "ok"}));
    let gw = &cluster.gateway;
    wait_until("the next checks have run", || async {
        let servers = gw.get_json("/servers").await;
        servers["members"][0]["replication_lag"] == 5 && servers["members"][2]["synced"].is_null()
    })
    .await;
    let servers = gw.get_json("/servers").await;
    assert_eq!(servers["replication_factor"], 3);
    assert_eq!(servers["write_quorum"], 2);
    let members = servers["members"].as_array().unwrap();
    let figures: Vec<(&Value, &Value, &Value)> = members
        .iter()
        .map(|m| (&m["name"], &m["replication_lag"], &m["synced"]))
        .collect();
    assert_eq!(
        figures,
        [
            (&json!("kv-0"), &json!(5), &json!(false)),
            (&json!("kv-1"), &json!(0), &json!(true)),
            (&json!("kv-2"), &Value::Null, &Value::Null),
        ]
    );
    let metrics = cluster.metrics().await;
    assert!(
        metrics.contains("kv_gateway_member_replication_lag{member=\"kv-0\"} 5"),
        "{metrics}"
    );
    assert!(!metrics.contains("kv_gateway_member_replication_lag{member=\"kv-2\"}"));
}

#[tokio::test]
async fn the_replication_factor_is_capped_at_the_member_count() {
    let fake = Fake::start(json!({"status": "ok"})).await;
    let config = GatewayConfig::with_backends([("only", format!("http://{}", fake.addr))]).unwrap();
    let gateway = Gateway::start(config).await;
    let servers = gateway.get_json("/servers").await;
    assert_eq!(servers["replication_factor"], 1);
    assert_eq!(servers["write_quorum"], 1);
    assert!(servers["members"][0]["replication_lag"].is_null());
}

#[tokio::test]
async fn a_member_whose_address_answers_as_another_server_gets_no_requests() {
    let cluster = Cluster::start(false, |_| {}).await;
    let (key, list) = cluster.key_with_primary("kv-0");
    cluster
        .fake(list[1])
        .answer(&format!("/get/{key}"), 200, stored(1, json!("a")));
    // kv-0's address now answers as kv-2 (a pod's IP taken over by another pod, say).
    let mut health = replicated(0, true);
    health["name"] = json!("kv-2");
    cluster.fake("kv-0").set_health(health);
    let gw = &cluster.gateway;
    wait_until("kv-0 is down", || async {
        let servers = gw.get_json("/servers").await;
        servers["members"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["name"] == "kv-0" && m["health"] == "down")
        })
    })
    .await;
    let before = cluster.fake("kv-0").seen().len();

    // Reads go to the replicas, writes are refused at the gateway, as for a down primary.
    let r = gw.get(&format!("/get/{key}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-server-used"], list[1]);
    assert_eq!(r.headers()["x-kv-primary-unavailable"], "kv-0");
    let r = gw.put(&format!("/put/{key}"), json!("b")).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "server_unavailable"
    );
    assert_eq!(
        cluster.fake("kv-0").seen().len(),
        before,
        "nothing reached kv-0"
    );

    // The right server answers there again: it is up, and gets its keys.
    let mut health = replicated(0, true);
    health["name"] = json!("kv-0");
    cluster.fake("kv-0").set_health(health);
    cluster
        .fake("kv-0")
        .answer(&format!("/get/{key}"), 200, stored(1, json!("a")));
    wait_until("kv-0 is up", || async {
        let servers = gw.get_json("/servers").await;
        servers["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "kv-0" && m["health"] == "up"))
    })
    .await;
    let r = gw.get(&format!("/get/{key}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-server-used"], "kv-0");
}

#[tokio::test]
async fn requests_name_their_member_and_a_wrong_server_answer_counts_as_unreachable() {
    let cluster = Cluster::start(false, |_| {}).await;
    let (key, list) = cluster.key_with_primary("kv-1");
    let gw = &cluster.gateway;
    cluster
        .fake("kv-1")
        .answer(&format!("/get/{key}"), 200, stored(1, json!("a")));
    let r = gw.get(&format!("/get/{key}")).send().await.unwrap();
    assert_eq!(r.headers()["x-server-used"], "kv-1");
    let seen = cluster.fake("kv-1").seen();
    assert_eq!(seen.last().unwrap().addressee.as_deref(), Some("kv-1"));

    // kv-1's address now reaches another replicated server, which refuses kv-1's requests.
    let refusal = json!({"detail": "This is server kv-9, not kv-1", "code": "wrong_server"});
    for uri in [format!("/get/{key}"), format!("/put/{key}")] {
        cluster.fake("kv-1").answer(&uri, 421, refusal.clone());
    }
    cluster
        .fake(list[1])
        .answer(&format!("/get/{key}"), 200, stored(1, json!("a")));
    let r = gw.get(&format!("/get/{key}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-server-used"], list[1]);
    assert_eq!(r.headers()["x-kv-primary-unavailable"], "kv-1");
    // Never a 421 to the client, never a detour for a write.
    let r = gw
        .put(&format!("/put/{key}"), json!("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "server_unavailable"
    );
    for name in [list[1], list[2]] {
        let puts = cluster.fake(name).seen();
        assert!(puts.iter().all(|s| s.method != Method::PUT), "{name}");
    }
    assert!(cluster.metrics().await.contains("outcome=\"wrong_server\""));
}
