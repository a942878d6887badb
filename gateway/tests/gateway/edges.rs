//! Unknown paths, wrong methods, body limits, auth, docs and metrics.

use serde_json::{Value, json};

use crate::harness::{Cluster, TOKEN};

#[tokio::test]
async fn unknown_paths_and_methods_are_json_errors_at_the_gateway() {
    let cluster = Cluster::start_with(&["kv-0"], |c| c.max_body_bytes = 1024).await;
    let gw = &cluster.gateway;
    // `/internal/*` is server-to-server traffic: the gateway never forwards it.
    for path in [
        "/nonexistent",
        "/get",
        "/cache/stats/",
        "/get/a/b",
        "/internal/status",
        "/internal/changes?after=0&for=kv-0",
    ] {
        let r = gw.get(path).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(r.headers().get("x-server-used").is_none());
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    }
    let r = gw
        .http
        .post(format!("{}/internal/replicate", gw.url))
        .body(r#"{"from":"x","records":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = gw
        .http
        .delete(format!("{}/get/k", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "method_not_allowed"
    );

    let r = gw.get("/get/").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "empty_key");

    let r = gw
        .put("/put/big", json!("x".repeat(2000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "value_too_large");

    // Invalid JSON is the server's to judge, with its own code.
    let r = gw
        .http
        .put(format!("{}/put/k", gw.url))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-server-used"], "kv-0");

    // A compressed body: the gateway forwards only the content type, so it refuses the
    // body itself, for what it is, before any server sees it.
    let r = gw
        .put("/put/zipped", json!(1))
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(r.headers()["accept-encoding"], "identity");
    assert!(r.headers().get("x-server-used").is_none());
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "unsupported_encoding"
    );
    assert_eq!(gw.get("/get/zipped").send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn docs_openapi_and_metrics() {
    let cluster = Cluster::start(&["kv-0"]).await;
    let gw = &cluster.gateway;
    gw.put("/put/k", json!(1)).send().await.unwrap();

    let doc: Value = gw.get_json("/openapi.json").await;
    assert!(doc["paths"]["/servers"].is_object());
    let ui = gw.get("/docs/").send().await.unwrap();
    assert_eq!(ui.status(), 200);
    assert!(ui.text().await.unwrap().contains("swagger"));

    let metrics = gw
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "kv_gateway_ring_epoch 1",
        "kv_gateway_ring_members 1",
        "kv_gateway_member_requests_total{member=\"kv-0\",outcome=\"ok\"}",
        "kv_gateway_member_up{member=\"kv-0\"} 1",
        "route=\"/put/{key}\"",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn a_configured_token_guards_everything_but_probes_and_metrics() {
    let cluster = Cluster::start_with(&["kv-0"], |c| c.api_token = Some(TOKEN.into())).await;
    let gw = &cluster.gateway;
    for path in [
        "/get/k",
        "/servers",
        "/db/stats?server=kv-0",
        "/openapi.json",
        "/nope",
    ] {
        let r = gw.get(path).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
        let wrong = gw.get(path).bearer_auth("s3cre").send().await.unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }
    let r = gw
        .put("/put/k", json!(1))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw.get("/get/k").bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(gw.get(path).send().await.unwrap().status(), 200, "{path}");
    }
}

#[tokio::test]
async fn a_request_head_over_64_kib_is_refused_before_it_is_read_whole() {
    let cluster = Cluster::start(&["kv-0"]).await;
    let gw = &cluster.gateway;
    let head = |bytes: usize| {
        gw.get("/get/big-head")
            .header("x-padding", "p".repeat(bytes))
            .send()
    };
    // Within the bound: the request is served.
    let r = head(kv_common::serve::MAX_REQUEST_HEAD_BYTES / 2)
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "key_not_found");
    // Just over it: hyper answers 431 itself.
    let r = head(kv_common::serve::MAX_REQUEST_HEAD_BYTES + 1)
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    // Far over it (hyper's own default took 500 KB): refused as well, or the connection reset
    // when the gateway closes it with the rest of the head unread.
    if let Ok(r) = head(500_000).await {
        assert_eq!(r.status(), 431);
    }
}
