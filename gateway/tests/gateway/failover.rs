//! The owner of a key stops: its keys answer 503 naming it, others keep working, nothing is
//! sent elsewhere; it restarts on its data: every version is back.

use serde_json::{Value, json};

use crate::harness::{Cluster, wait_until};

#[tokio::test]
async fn a_stopped_owner_gives_503_and_comes_back_with_every_version() {
    let mut cluster = Cluster::start(&["kv-0", "kv-1"]).await;
    let down_key = cluster.key_on("kv-0");
    let up_key = cluster.key_on("kv-1");
    for v in 1..=3 {
        for key in [&down_key, &up_key] {
            let r = cluster
                .gateway
                .put(&format!("/put/{key}"), json!(v))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }

    cluster.servers[0].stop().await;
    let gw = &cluster.gateway;

    // Reads and writes of kv-0's keys: 503, Retry-After, the server named. The first request
    // may find out by connecting; later ones by the passive/active marking.
    for _ in 0..3 {
        let r = gw.get(&format!("/get/{down_key}")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(r.headers()["x-server-used"], "kv-0");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "server_unavailable");
        assert!(body["detail"].as_str().unwrap().contains("kv-0"));

        let w = gw
            .put(&format!("/put/{down_key}"), json!("lost?"))
            .send()
            .await
            .unwrap();
        assert_eq!(w.status(), 503);
    }

    // kv-1's keys keep working, and the ring did not change.
    let r: Value = gw.get_json(&format!("/get/{up_key}")).await;
    assert_eq!(r["version"], 3);
    assert_eq!(gw.get("/ready").send().await.unwrap().status(), 200);
    let servers: Value = gw.get_json("/servers").await;
    assert_eq!(servers["count"], 2);
    assert_eq!(servers["epoch"], 1);
    assert_eq!(servers["members"][0]["health"], "down");
    let stats = gw.get("/cache/stats?server=kv-0").send().await.unwrap();
    assert_eq!(stats.status(), 503);

    // The write refused while kv-0 was down went nowhere: kv-1 never saw the key.
    let kv1: Value = gw.get_json("/db/stats?server=kv-1").await;
    assert_eq!(kv1["total_keys"], 1);

    cluster.servers[0].restart().await;
    let gw = &cluster.gateway;
    wait_until("kv-0's keys answer again", || async {
        gw.get(&format!("/get/{down_key}"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    let versions: Value = gw.get_json(&format!("/versions/{down_key}")).await;
    let values: Vec<&Value> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["value"])
        .collect();
    assert_eq!(values, [&json!(1), &json!(2), &json!(3)]);
    assert_eq!(versions["server_used"], "kv-0");
    let next = gw
        .put(&format!("/put/{down_key}"), json!(4))
        .send()
        .await
        .unwrap();
    assert_eq!(next.json::<Value>().await.unwrap()["version"], 4);
}

#[tokio::test]
async fn a_gateway_with_no_reachable_server_is_not_ready() {
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut config = kv_gateway::GatewayConfig::with_backends([("ghost", url)]).unwrap();
    config.health_interval_ms = 100;
    let gateway = crate::harness::Gateway::start(config).await;
    wait_until("the ghost is marked down", || async {
        let s: Value = gateway.get_json("/servers").await;
        s["members"][0]["health"] == "down"
    })
    .await;
    assert_eq!(gateway.get("/ready").send().await.unwrap().status(), 503);
    let r = gateway.put("/put/k", json!(1)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
}
