//! The CRD's CEL rules (`x-kubernetes-validations`), evaluated by a CEL interpreter on the
//! objects the API server would evaluate them on: a rule that does not parse, or that lets
//! through what it should refuse, fails here instead of on a real cluster.
//!
//! `cel-interpreter` is not the API server's CEL: it lacks the Kubernetes extension
//! libraries and the cost estimate. The rules use only standard CEL (`has`, `all`, `in`), and
//! the lists they walk have `maxItems`, which is what the cost estimate needs.

use cel_interpreter::{Context, Program, Value as Cel};
use kube::CustomResourceExt;
use kv_crds::{GATEWAY_MANAGED_ENV, KvCluster, SERVER_MANAGED_ENV};
use serde_json::{Value, json};

/// The schema of the spec field at `path` (`["server", "env"]`); `"items"` steps into a
/// list's elements.
fn schema_at(path: &[&str]) -> Value {
    let crd = serde_json::to_value(KvCluster::crd()).unwrap();
    let mut schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    for step in path {
        schema = if *step == "items" {
            &schema["items"]
        } else {
            &schema["properties"][*step]
        };
        assert!(!schema.is_null(), "no schema at {path:?}");
    }
    schema.clone()
}

/// The rules of the field at `path`, compiled.
fn rules_at(path: &[&str]) -> Vec<(String, Program)> {
    let schema = schema_at(path);
    let rules = schema["x-kubernetes-validations"]
        .as_array()
        .unwrap_or_else(|| panic!("no rules at {path:?}"));
    rules
        .iter()
        .map(|r| {
            let rule = r["rule"].as_str().unwrap().to_owned();
            assert!(
                r["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{rule}: no message"
            );
            let program = Program::compile(&rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
            (rule, program)
        })
        .collect()
}

/// Whether every rule at `path` admits `object` as `self`.
fn admits(path: &[&str], object: Value) -> bool {
    rules_at(path).iter().all(|(rule, program)| {
        let mut context = Context::default();
        context.add_variable("self", object.clone()).unwrap();
        match program.execute(&context) {
            Ok(Cel::Bool(verdict)) => verdict,
            other => panic!("{rule} on {object}: {other:?}"),
        }
    })
}

#[test]
fn env_lists_refuse_every_variable_the_operator_sets() {
    for (component, managed) in [
        ("server", SERVER_MANAGED_ENV),
        ("gateway", GATEWAY_MANAGED_ENV),
    ] {
        let path = [component, "env"];
        let ours = json!([{"name": "RUST_BACKTRACE", "value": "1"}, {"name": "KV_X", "value": ""}]);
        assert!(admits(&path, ours), "{component}");
        assert!(admits(&path, json!([])), "{component}");
        for name in managed {
            let list =
                json!([{"name": "RUST_BACKTRACE", "value": "1"}, {"name": name, "value": "x"}]);
            assert!(!admits(&path, list), "{component} admits {name}");
        }
        let schema = schema_at(&path);
        assert_eq!(schema["x-kubernetes-list-type"], "map");
        assert_eq!(schema["x-kubernetes-list-map-keys"], json!(["name"]));
        assert!(
            schema["maxItems"].as_u64().is_some(),
            "the rule's cost needs a bound"
        );
    }
    // The servers' variables that stay the user's.
    for name in [
        "KV_READERS",
        "KV_WRITE_QUEUE",
        "KV_CATCH_UP_INTERVAL_MS",
        "KV_CACHE_TTL_MINUTES",
    ] {
        assert!(admits(
            &["server", "env"],
            json!([{"name": name, "value": "1"}])
        ));
    }
    for name in [
        "KV_WORKER_THREADS",
        "KV_LINKS_PER_SERVER",
        "KV_HEALTH_INTERVAL_MS",
    ] {
        assert!(admits(
            &["gateway", "env"],
            json!([{"name": name, "value": "1"}])
        ));
    }
}

#[test]
fn an_env_variable_has_a_value_or_a_source_not_both() {
    let path = ["server", "env", "items"];
    let source = json!({"secretKeyRef": {"name": "s", "key": "k"}});
    assert!(admits(&path, json!({"name": "A", "value": "1"})));
    assert!(admits(&path, json!({"name": "A", "valueFrom": source})));
    assert!(admits(&path, json!({"name": "A"})));
    assert!(!admits(
        &path,
        json!({"name": "A", "value": "1", "valueFrom": source})
    ));
}

#[test]
fn the_write_quorum_stays_within_the_factor() {
    let path = ["replication"];
    assert!(admits(&path, json!({"factor": 3})));
    assert!(admits(&path, json!({"factor": 3, "writeQuorum": 3})));
    assert!(!admits(&path, json!({"factor": 1, "writeQuorum": 2})));
}

#[test]
fn a_node_port_needs_a_service_that_has_one() {
    let path = ["gateway", "service"];
    assert!(admits(&path, json!({"type": "ClusterIP"})));
    assert!(admits(
        &path,
        json!({"type": "NodePort", "nodePort": 30080})
    ));
    assert!(!admits(
        &path,
        json!({"type": "ClusterIP", "nodePort": 30080})
    ));
}
