//! The EndpointSlice watcher against a fake API server (kv-test-support): a real kube client,
//! the real kube-runtime watcher, list then watch over HTTP.

use std::sync::Arc;
use std::time::Duration;

use kv_test_support::FakeApiServer;
use serde_json::{Value, json};

use super::*;
use crate::metrics::GatewayMetrics;

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/kv/endpointslices";

fn slice(name: &str, service: &str, endpoints: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "kv",
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": "IPv4",
        "ports": [ { "name": "metrics", "port": 9090 }, { "name": "http", "port": 8080 } ],
        "endpoints": endpoints.iter().map(|(host, ip)| json!({
            "addresses": [ip],
            "hostname": host,
            "conditions": { "ready": false },
        })).collect::<Vec<_>>(),
    })
}

async fn wait_for(
    topology: &TopologyHandle,
    what: &str,
    check: impl Fn(&super::super::Topology) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check(&topology.load()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            topology.load()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn urls(topology: &super::super::Topology) -> Vec<String> {
    topology
        .backends
        .values()
        .map(|b| format!("{}={}", b.name, b.url))
        .collect()
}

#[tokio::test]
async fn members_follow_the_slices_by_hostname() {
    let api = FakeApiServer::start().await;
    // Present before the watch starts (initial list) ...
    api.apply(
        SLICES,
        slice(
            "kv-abc",
            "kv",
            &[("kv-0", "10.0.0.1"), ("kv-1", "10.0.0.2")],
        ),
    );
    // ... and another Service's slice, which must be ignored.
    api.apply(
        SLICES,
        slice("other-x", "other", &[("intruder", "10.9.9.9")]),
    );

    let config = kube::Config::new(api.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let topology = Arc::new(TopologyHandle::new(
        150,
        GatewayMetrics::register(&mut registry),
    ));
    let discovery = Discovery {
        namespace: "kv".into(),
        service: "kv".into(),
        port_name: "http".into(),
        removal_grace: Duration::from_millis(1500),
    };
    let task = tokio::spawn(watch(client, discovery, topology.clone()));

    wait_for(&topology, "the initial list", |t| t.backends.len() == 2).await;
    let first = topology.load();
    assert_eq!(
        urls(&first),
        ["kv-0=http://10.0.0.1:8080", "kv-1=http://10.0.0.2:8080"]
    );
    // Not ready in the slice does not mean not a member: health decides.
    assert!(!first.backends["kv-0"].health.is_down());

    // A new server joins (watch event): the ring changes.
    api.apply(
        SLICES,
        slice(
            "kv-abc",
            "kv",
            &[
                ("kv-0", "10.0.0.1"),
                ("kv-1", "10.0.0.2"),
                ("kv-2", "10.0.0.3"),
            ],
        ),
    );
    wait_for(&topology, "kv-2", |t| t.backends.contains_key("kv-2")).await;
    let grown = topology.load();
    assert_eq!(grown.epoch, first.epoch + 1);

    // kv-0 restarts with a new IP: same ring, same epoch, new address.
    api.apply(
        SLICES,
        slice(
            "kv-abc",
            "kv",
            &[
                ("kv-0", "10.0.0.7"),
                ("kv-1", "10.0.0.2"),
                ("kv-2", "10.0.0.3"),
            ],
        ),
    );
    wait_for(&topology, "kv-0's new address", |t| {
        t.backends["kv-0"].url.to_string() == "http://10.0.0.7:8080"
    })
    .await;
    let moved = topology.load();
    assert_eq!(moved.epoch, grown.epoch);
    assert!(Arc::ptr_eq(&moved.ring, &grown.ring));

    // kv-1 vanishes (pod being replaced): it keeps its place, marked down, for the grace...
    api.apply(
        SLICES,
        slice(
            "kv-abc",
            "kv",
            &[("kv-0", "10.0.0.7"), ("kv-2", "10.0.0.3")],
        ),
    );
    wait_for(&topology, "kv-1 marked down", |t| {
        t.backends["kv-1"].health.is_down()
    })
    .await;
    assert_eq!(topology.load().epoch, grown.epoch);
    // ... and leaves the ring once the grace is over.
    wait_for(&topology, "kv-1 removed", |t| {
        !t.backends.contains_key("kv-1")
    })
    .await;
    assert_eq!(topology.load().epoch, grown.epoch + 1);

    // A member that comes back within the grace never left: no epoch change.
    api.apply(SLICES, slice("kv-abc", "kv", &[("kv-0", "10.0.0.7")]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.apply(
        SLICES,
        slice(
            "kv-abc",
            "kv",
            &[("kv-0", "10.0.0.7"), ("kv-2", "10.0.0.8")],
        ),
    );
    wait_for(&topology, "kv-2's new address", |t| {
        t.backends["kv-2"].url.to_string() == "http://10.0.0.8:8080"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(topology.load().backends.contains_key("kv-2"));
    assert_eq!(topology.load().epoch, grown.epoch + 1);

    // Deleting the slice empties the ring after the grace.
    api.delete(SLICES, "kv-abc");
    wait_for(&topology, "an empty ring", |t| t.backends.is_empty()).await;
    assert!(
        !urls(&topology.load())
            .iter()
            .any(|u| u.contains("intruder"))
    );
    task.abort();
}

#[test]
fn endpoints_without_a_name_are_skipped_and_ipv6_is_bracketed() {
    let mut value = slice("s", "kv", &[("kv-0", "fd00::1")]);
    value["addressType"] = json!("IPv6");
    value["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "addresses": ["fd00::2"] }));
    value["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "addresses": ["fd00::3"], "targetRef": { "kind": "Pod", "name": "kv-3" } }));
    let slice: EndpointSlice = serde_json::from_value(value).unwrap();
    let members = slice_members(&slice, "http");
    let names: Vec<_> = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.url))
        .collect();
    assert_eq!(
        names,
        ["kv-0=http://[fd00::1]:8080", "kv-3=http://[fd00::3]:8080"]
    );
}
