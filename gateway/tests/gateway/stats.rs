//! `?server=` on the stats routes selects a member by ring name, and nothing else.

use serde_json::Value;

use crate::harness::Cluster;

#[tokio::test]
async fn the_server_parameter_only_names_ring_members() {
    let cluster = Cluster::start(&["kv-0", "kv-1"]).await;
    let gw = &cluster.gateway;

    for route in ["/cache/stats", "/db/stats"] {
        for name in ["kv-0", "kv-1"] {
            let r = gw
                .get(&format!("{route}?server={name}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{route} {name}");
            assert_eq!(r.headers()["x-server-used"], name);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["node_name"], name);
            assert_eq!(body["server_used"], name);
        }

        let missing = gw.get(route).send().await.unwrap();
        assert_eq!(missing.status(), 400);
        let body: Value = missing.json().await.unwrap();
        assert_eq!(body["code"], "missing_parameter");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains(r#"["kv-0", "kv-1"]"#),
            "{body}"
        );

        // Names that look like hosts or URLs, including the members' real addresses: refused.
        let real = cluster.servers[0].addr.to_string();
        let real_url = cluster.servers[0].url();
        for name in [
            "evil.example.com:80",
            "http://evil.example.com/",
            real.as_str(),
            real_url.as_str(),
            "kv-0@evil.example.com",
            "kv-0/../x",
            "",
            "KV-0",
        ] {
            let r = gw
                .get(route)
                .query(&[("server", name)])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{route} {name:?}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "unknown_server", "{name:?}");
            assert!(body["detail"].as_str().unwrap().contains("kv-1"));
        }
    }
}

#[tokio::test]
async fn seed_style_names_are_members_too() {
    // The seed named servers by host:port; such a name is a valid `server` value because it
    // is a member's name, not because it is an address.
    let dir = tempfile::tempdir().unwrap();
    let server = crate::harness::Server::start("s", dir.path()).await;
    let name = server.addr.to_string();
    let config = kv_gateway::GatewayConfig::with_backends([(name.clone(), server.url())]).unwrap();
    let gw = crate::harness::Gateway::start(config).await;
    let r = gw
        .get("/db/stats")
        .query(&[("server", &name)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-server-used"], name.as_str());
}
