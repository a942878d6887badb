//! The alerts the chart ships name only metrics the servers and the gateway really export
//! (the operator's are checked in `operator/src/metrics.rs`): a renamed metric would leave
//! its alert silent for good, and promtool's own tests feed it made-up series.

use kv_test_support::alerts;

use crate::harness::TOKEN;
use crate::procs::ProcCluster;

#[tokio::test]
async fn every_server_and_gateway_metric_the_alerts_name_is_exported() {
    // Real server processes with replication, as the operator runs them: the per-peer and
    // per-member families have their samples once the servers have seen each other and a
    // request went through.
    let cluster = ProcCluster::start(3).await;
    let put = cluster
        .gateway
        .put("/put/alerting", serde_json::json!(1))
        .bearer_auth(TOKEN);
    assert_eq!(put.send().await.unwrap().status(), 200);
    let get = cluster.gateway.get("/get/alerting").bearer_auth(TOKEN);
    assert_eq!(get.send().await.unwrap().status(), 200);

    let gateway = cluster.gateway.metrics().await;
    let names = alerts::metric_names("kv_gateway_");
    assert!(names.len() >= 4, "{names:?}");
    for name in &names {
        assert!(
            alerts::has_sample(&gateway, name),
            "the alerts read {name}, which the gateway does not export:\n{gateway}"
        );
    }

    let names = alerts::metric_names("kv_server_");
    assert!(names.len() >= 8, "{names:?}");
    for i in 0..cluster.len() {
        let url = format!("{}/metrics", cluster.url(i));
        let server = cluster.http.get(url).send().await.unwrap();
        let server = server.text().await.unwrap();
        for name in &names {
            assert!(
                alerts::has_sample(&server, name),
                "the alerts read {name}, which server {i} does not export:\n{server}"
            );
        }
    }
}
