//! The alerts and the dashboard the chart ships name only metrics the servers and the gateway
//! really export (the operator's are checked in `operator/src/metrics.rs`): a renamed metric
//! would leave its alert silent and its panel empty for good, and promtool's own tests feed
//! the alerts made-up series.

use std::collections::BTreeSet;
use std::time::Duration;

use kv_test_support::monitoring;

use crate::harness::TOKEN;
use crate::procs::ProcCluster;

/// The names of `wanted` that `exposition` has no sample of.
fn missing(exposition: &str, wanted: &BTreeSet<String>) -> Vec<String> {
    wanted
        .iter()
        .filter(|name| !monitoring::has_sample(exposition, name))
        .cloned()
        .collect()
}

#[tokio::test]
async fn every_server_and_gateway_metric_the_alerts_and_the_dashboard_name_is_exported() {
    // Real server processes with replication, as the operator runs them. Labelled families
    // have samples once what they count happened: the servers have seen each other, a put
    // was pushed and pulled, a read went to a replica.
    let cluster = ProcCluster::start(3).await;
    let key = "monitored";
    let put = cluster
        .gateway
        .put(&format!("/put/{key}"), serde_json::json!(1));
    assert_eq!(put.bearer_auth(TOKEN).send().await.unwrap().status(), 200);

    let names = monitoring::metric_names("kv_server_");
    assert!(names.len() >= 10, "{names:?}");
    // Pulls run every 200 ms here: the put's version shows up in a peer's pull soon. Only
    // the key's primary pushes, so the names are looked for over the servers together.
    let mut left = Vec::new();
    for _ in 0..100 {
        let mut servers = String::new();
        for i in 0..cluster.len() {
            let text = cluster.http.get(format!("{}/metrics", cluster.url(i)));
            servers += &text.send().await.unwrap().text().await.unwrap();
        }
        left = missing(&servers, &names);
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, Vec::<String>::new(), "no server exports these");

    // The key's primary stops: its read is answered by a replica.
    let primary = cluster.replicas(key)[0];
    cluster.kill(primary);
    let get = cluster
        .gateway
        .get(&format!("/get/{key}"))
        .bearer_auth(TOKEN);
    assert_eq!(get.send().await.unwrap().status(), 200);

    let gateway = cluster.gateway.metrics().await;
    let names = monitoring::metric_names("kv_gateway_");
    assert!(names.len() >= 8, "{names:?}");
    assert_eq!(
        missing(&gateway, &names),
        Vec::<String>::new(),
        "the gateway does not export these:\n{gateway}"
    );
}
