//! The committed CRD and examples are held to the types: a drift fails here with the command
//! that fixes it.

use std::path::{Path, PathBuf};

use kv_crds::{KvCluster, KvClusterSpec, PullPolicy, ServiceType, SyncMode};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_crd_matches_the_types() {
    let path = crate_dir().join(kv_crds::CRD_FILE);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = kv_crds::crd_yaml();
    assert!(
        committed == generated,
        "{} differs from the types: run `cargo run -p kv-crds --bin crdgen` and review the diff",
        path.display()
    );
}

#[test]
fn generated_crd_has_subresources_columns_and_rules() {
    let yaml = kv_crds::crd_yaml();
    for needle in [
        "name: kvclusters.kvstore.dev",
        "specReplicasPath: .spec.replicas",
        "statusReplicasPath: .status.replicas",
        "status: {}",
        "name: Phase",
        "rule: \"!has(self.nodePort) || self.type != 'ClusterIP'\"",
        "rule: \"!has(self.writeQuorum) || self.writeQuorum <= self.factor\"",
        "x-kubernetes-list-type: map",
        "- Retain",
    ] {
        assert!(yaml.contains(needle), "CRD lacks `{needle}`");
    }
}

fn load(path: &Path) -> KvCluster {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_example_parses() {
    let dir = crate_dir().join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let cluster = load(&path);
            assert!(
                cluster.metadata.name.is_some(),
                "{}: no name",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected the examples in {}", dir.display());
}

#[test]
fn empty_spec_takes_documented_defaults() {
    let cluster = load(&crate_dir().join("examples/minimal.yaml"));
    assert_eq!(cluster.spec, KvClusterSpec::default());
    assert_eq!(cluster.spec.replicas, 3);
    assert_eq!(cluster.spec.vnodes, 150);
    assert_eq!(cluster.spec.replication.factor, 3);
    assert_eq!(cluster.spec.replication.write_quorum, None);
    assert_eq!(cluster.spec.storage.size.0, "1Gi");
    assert_eq!(cluster.spec.server.sync, SyncMode::Full);
    assert_eq!(cluster.spec.server.max_value_bytes, 1 << 20);
    assert_eq!(cluster.spec.replication.timeout_seconds, 2);
    assert_eq!(cluster.spec.gateway.replicas, 2);
    assert!(cluster.spec.pod_disruption_budget.enabled);
}

#[test]
fn replication_is_capped_by_the_number_of_servers() {
    let r = kv_crds::ReplicationSpec {
        factor: 3,
        write_quorum: Some(3),
        ..kv_crds::ReplicationSpec::default()
    };
    assert_eq!(r.effective(5), (3, Some(3)));
    assert_eq!(r.effective(2), (2, Some(2)));
    assert_eq!(r.effective(1), (1, Some(1)));
    let partial: kv_crds::ReplicationSpec = serde_saphyr::from_str("writeQuorum: 1").unwrap();
    assert_eq!(partial.factor, 3);
}

#[test]
fn full_example_sets_every_section() {
    let spec = load(&crate_dir().join("examples/full.yaml")).spec;
    assert_eq!(spec.replicas, 5);
    assert_eq!(spec.replication.factor, 3);
    assert_eq!(spec.replication.write_quorum, Some(2));
    assert_eq!(spec.replication.effective(spec.replicas), (3, Some(2)));
    assert_eq!(spec.image.pull_policy, PullPolicy::Always);
    assert_eq!(spec.gateway.service.type_, ServiceType::NodePort);
    assert_eq!(spec.gateway.service.node_port, Some(30800));
    assert_eq!(spec.storage.storage_class_name.as_deref(), Some("fast-ssd"));
    assert!(spec.server.scheduling.affinity.is_some());
    assert_eq!(spec.server.max_value_bytes, 32 << 20);
    assert_eq!(spec.replication.timeout_seconds, 5);
    assert_eq!(
        spec.server.log_level.as_deref(),
        Some("info,kv_server::replication=debug")
    );
    assert_eq!(spec.gateway.log_level.as_deref(), Some("warn"));
    assert_eq!(spec.auth.unwrap().key, "token");
}

/// The generated schema of `spec.<section>.<field>`.
fn spec_field(section: &str, field: &str) -> serde_json::Value {
    let crd = serde_json::to_value(<KvCluster as kube::CustomResourceExt>::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        [section]["properties"][field]
        .clone()
}

/// An integer field's (minimum, maximum, default) in the schema.
fn integer_bounds(field: &serde_json::Value) -> (Option<f64>, Option<f64>, Option<i64>) {
    assert_eq!(field["type"], "integer", "{field}");
    (
        field["minimum"].as_f64(),
        field["maximum"].as_f64(),
        field["default"].as_i64(),
    )
}

#[test]
fn the_api_server_refuses_a_value_limit_the_servers_would_refuse() {
    // The API server enforces the schema's bounds; kv-server refuses 0 and anything over
    // 64 MiB at start, so a value that passed the schema could only crash-loop the pods.
    let field = spec_field("server", "maxValueBytes");
    assert_eq!(
        integer_bounds(&field),
        (
            Some(1.0),
            Some(f64::from(kv_crds::MAX_VALUE_BYTES)),
            Some(1 << 20)
        ),
        "{field}"
    );
    assert_eq!(kv_crds::MAX_VALUE_BYTES, 64 << 20);
}

#[test]
fn the_replication_timeout_is_whole_seconds_within_bounds() {
    let field = spec_field("replication", "timeoutSeconds");
    assert_eq!(
        integer_bounds(&field),
        (Some(1.0), Some(300.0), Some(2)),
        "{field}"
    );
}

#[test]
fn the_api_server_refuses_a_log_level_that_is_not_levels() {
    // A bare word is a target to the binaries' filter, so a misspelt level would turn every
    // log off (the binaries refuse it at start; the API server refuses it first).
    for section in ["server", "gateway"] {
        let field = spec_field(section, "logLevel");
        assert_eq!(field["pattern"], kv_crds::LOG_FILTER_PATTERN, "{field}");
        assert_eq!(field["maxLength"], 1024, "{field}");
        assert_eq!(field["nullable"], true, "{field}");
    }
}
