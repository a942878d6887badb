//! `/admin/snapshot?server=NAME`: behind the API token, only ring members, streamed through
//! with the member's description of the snapshot.

use serde_json::Value;

use crate::harness::{Cluster, TOKEN};

#[tokio::test]
async fn snapshots_need_the_token_and_name_a_ring_member() {
    let cluster = Cluster::start_with(&["kv-0", "kv-1"], |config| {
        config.api_token = Some(TOKEN.into());
    })
    .await;
    let gw = &cluster.gateway;
    let key = cluster.key_on("kv-1");
    for i in 0..3 {
        let r = gw
            .put(&format!("/put/{key}"), i.into())
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    for token in [None, Some("wrong")] {
        let mut request = gw.get("/admin/snapshot?server=kv-1");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401, "{token:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
    }

    let r = gw
        .get("/admin/snapshot?server=kv-1")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-server-used"], "kv-1");
    assert_eq!(r.headers()["x-snapshot-node"], "kv-1");
    assert_eq!(r.headers()["content-type"], "application/vnd.sqlite3");
    let sha = r.headers()["x-snapshot-sha256"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(r.headers()["x-snapshot-versions"], "3");
    let bytes = r.bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kv-1.db");
    std::fs::write(&file, &bytes).unwrap();
    let info = kv_server::store::snapshot::inspect(&file).unwrap();
    assert_eq!((info.keys, info.versions), (1, 3));
    assert_eq!(info.sha256, sha);

    let missing = gw
        .get("/admin/snapshot")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["code"],
        "missing_parameter"
    );
    let real = cluster.servers[0].addr.to_string();
    for name in ["evil.example.com:80", real.as_str(), "KV-0", ""] {
        let r = gw
            .get("/admin/snapshot")
            .query(&[("server", name)])
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "unknown_server");
    }
}

#[tokio::test]
async fn a_down_member_is_refused_with_503() {
    let mut cluster = Cluster::start(&["kv-0", "kv-1"]).await;
    cluster.servers[0].stop().await;
    let gw = &cluster.gateway;
    crate::harness::wait_until("kv-0 is seen down", || async {
        gw.get("/admin/snapshot?server=kv-0")
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    let r = gw.get("/admin/snapshot?server=kv-1").send().await.unwrap();
    assert_eq!(r.status(), 200);
}
