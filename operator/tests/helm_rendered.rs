//! The Helm chart (`helm/kvstore-operator`) held to the Rust types.
//!
//! - The chart's `crds/kvcluster.yaml` is the generated CRD, byte for byte (always runs).
//! - Every object `scripts/helm_check.py` rendered (one JSON file each, under
//!   `$KV_HELM_RENDERED_DIR/<scenario>/`) deserializes into its k8s-openapi type (or
//!   `KvCluster`), and serializing it back keeps every field that was rendered: a misspelt or
//!   misplaced field is dropped by the type, and fails here.
//! - The operator Deployment sets only environment variables `kv-operator` reads.
//!
//! `scripts/check-packaging.sh` renders the chart and runs this with the variable set; without
//! it the rendered-object tests print a notice and pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kv_crds::KvCluster;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate is in the workspace")
        .to_path_buf()
}

#[test]
fn chart_crd_is_a_copy_of_the_generated_crd() {
    let root = repo_root();
    let generated = std::fs::read_to_string(root.join("crds/kvcluster.yaml")).unwrap();
    let chart_copy = root.join("helm/kvstore-operator/crds/kvcluster.yaml");
    let copy = std::fs::read_to_string(&chart_copy).unwrap_or_default();
    assert!(
        copy == generated,
        "{} differs from crds/kvcluster.yaml: run `cp crds/kvcluster.yaml {}`",
        chart_copy.display(),
        chart_copy.display()
    );
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&copy).expect("the CRD parses");
    assert_eq!(crd.metadata.name.as_deref(), Some("kvclusters.kvstore.dev"));
}

#[test]
fn the_chart_refuses_an_operator_log_level_the_operator_would_refuse() {
    // The operator refuses a misspelt level at start; `helm install` refuses it first, with
    // the same pattern as the KvCluster's log levels.
    let path = repo_root().join("helm/kvstore-operator/values.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        schema["properties"]["logLevel"]["pattern"],
        kv_common::telemetry::LOG_FILTER_PATTERN
    );
}

/// The rendered objects, per scenario, or `None` (with a notice) when not rendered.
fn rendered() -> Option<Vec<(PathBuf, Value)>> {
    let Some(dir) = std::env::var_os("KV_HELM_RENDERED_DIR") else {
        eprintln!(
            "notice: KV_HELM_RENDERED_DIR is not set, so the rendered chart is not checked; \
             scripts/check-packaging.sh renders it and runs this test with it set"
        );
        return None;
    };
    let mut objects = Vec::new();
    let mut scenarios: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", Path::new(&dir).display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    scenarios.sort();
    for scenario in scenarios {
        let mut files: Vec<_> = std::fs::read_dir(&scenario)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let value: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            objects.push((file, value));
        }
    }
    assert!(
        !objects.is_empty(),
        "no rendered object under {}",
        Path::new(&dir).display()
    );
    Some(objects)
}

/// `Err(path)` of the first field of `rendered` that `typed` lacks or holds differently.
fn contained(rendered: &Value, typed: &Value, path: &str) -> Result<(), String> {
    match (rendered, typed) {
        (Value::Object(r), Value::Object(t)) => {
            for (key, value) in r {
                if value.is_null() {
                    continue;
                }
                let inner = format!("{path}.{key}");
                match t.get(key) {
                    Some(typed_value) => contained(value, typed_value, &inner)?,
                    None => return Err(format!("{inner} (not a field of the type)")),
                }
            }
            Ok(())
        }
        (Value::Array(r), Value::Array(t)) if r.len() == t.len() => r
            .iter()
            .zip(t)
            .enumerate()
            .try_for_each(|(i, (r, t))| contained(r, t, &format!("{path}[{i}]"))),
        (r, t) if r == t => Ok(()),
        (r, t) => Err(format!("{path}: rendered {r}, typed {t}")),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(file: &Path, value: &Value) -> Value {
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: does not deserialize into {}: {e}",
            file.display(),
            std::any::type_name::<T>()
        )
    });
    let back = serde_json::to_value(&typed).unwrap();
    if let Err(field) = contained(value, &back, "") {
        panic!(
            "{}: {} drops or changes {field}",
            file.display(),
            std::any::type_name::<T>()
        );
    }
    back
}

#[test]
fn every_rendered_object_is_its_k8s_openapi_type() {
    let Some(objects) = rendered() else { return };
    let mut kinds = BTreeSet::new();
    for (file, value) in &objects {
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        let kind = value["kind"].as_str().unwrap_or_default();
        match (api_version, kind) {
            ("apps/v1", "Deployment") => {
                round_trip::<Deployment>(file, value);
            }
            ("v1", "Service") => {
                round_trip::<Service>(file, value);
            }
            ("v1", "ConfigMap") => {
                round_trip::<ConfigMap>(file, value);
            }
            ("v1", "ServiceAccount") => {
                round_trip::<ServiceAccount>(file, value);
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                round_trip::<ClusterRole>(file, value);
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                round_trip::<ClusterRoleBinding>(file, value);
            }
            ("rbac.authorization.k8s.io/v1", "Role") => {
                round_trip::<Role>(file, value);
            }
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                round_trip::<RoleBinding>(file, value);
            }
            ("policy/v1", "PodDisruptionBudget") => {
                round_trip::<PodDisruptionBudget>(file, value);
            }
            ("kvstore.dev/v1alpha1", "KvCluster") => {
                // Serializing adds the spec's defaults; every rendered field must survive.
                round_trip::<KvCluster>(file, value);
            }
            // prometheus-operator's types are not in k8s-openapi; helm_check.py checks them
            // against the metrics Service, the operator's golden workloads and the rule file.
            ("monitoring.coreos.com/v1", "ServiceMonitor" | "PodMonitor" | "PrometheusRule") => {
                eprintln!("notice: {}: no Rust type, not deserialized", file.display());
            }
            _ => panic!(
                "{}: {api_version} {kind} has no check here: add its k8s-openapi type",
                file.display()
            ),
        }
        kinds.insert(kind.to_owned());
    }
    eprintln!(
        "{} rendered objects checked; kinds: {kinds:?}",
        objects.len()
    );
    for needed in ["Deployment", "ServiceAccount", "ClusterRole", "Role"] {
        assert!(kinds.contains(needed), "no rendered {needed}");
    }
}

/// Environment variables `kv-operator` reads: its library's flags, plus the two the binary
/// adds (`operator/src/main.rs`: `--log-level`, `--log-format`).
fn operator_env_vars() -> BTreeSet<String> {
    let command =
        <kv_operator::OperatorConfig as clap::Args>::augment_args(clap::Command::new("x"));
    let mut names: BTreeSet<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect();
    names.extend(["KV_LOG_LEVEL".to_owned(), "KV_LOG_FORMAT".to_owned()]);
    names
}

#[test]
fn the_operator_deployment_sets_only_variables_the_operator_reads() {
    let Some(objects) = rendered() else { return };
    let known = operator_env_vars();
    let mut deployments = 0;
    for (file, value) in &objects {
        if value["kind"] != "Deployment" {
            continue;
        }
        deployments += 1;
        let deployment: Deployment = serde_json::from_value(value.clone()).unwrap();
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        for env in container.env.iter().flatten() {
            assert!(
                known.contains(&env.name),
                "{}: {} is not read by kv-operator (it reads {known:?})",
                file.display(),
                env.name
            );
        }
        assert!(
            container.args.is_none() && container.command.is_none(),
            "{}: configure kv-operator through its environment only",
            file.display()
        );
    }
    assert!(deployments > 0, "no rendered Deployment");
}
