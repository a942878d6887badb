//! The reconciler against a mocked API server: every request of a pass is checked in order.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NS, UID, cluster, condition, mock_client, status_body};
use http::StatusCode;
use kube::runtime::controller::Action;
use kv_crds::{KvClusterSpec, StorageSpec};
use kv_operator::metrics::Metrics;
use kv_operator::reconcile::{Context, error_policy, reconcile};
use kv_operator::{Error, RenderConfig};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

fn context(client: kube::Client) -> Arc<Context> {
    Context::new(
        client,
        Metrics::register(&mut Registry::default()),
        RenderConfig::default(),
        None,
    )
}

/// A StatefulSet the cluster already runs: `replicas` ready servers on `size` of `class`.
fn running_sts(name: &str, replicas: i32, size: &str, class: Option<&str>) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": { "name": name, "namespace": NS, "generation": 1 },
        "spec": {
            "replicas": replicas, "serviceName": name,
            "selector": { "matchLabels": {} }, "template": {},
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": { "storageClassName": class, "resources": { "requests": { "storage": size } } },
            }],
        },
    })
}

fn ready_sts(replicas: i32) -> Value {
    json!({ "metadata": { "generation": 1 }, "status": {
        "observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
        "updatedReplicas": replicas, "currentRevision": "r1", "updateRevision": "r1",
    }})
}

fn ready_deployment(replicas: i32) -> Value {
    json!({ "metadata": { "generation": 1 }, "status": {
        "observedGeneration": 1, "replicas": replicas, "availableReplicas": replicas,
        "updatedReplicas": replicas,
    }})
}

#[tokio::test]
async fn new_cluster_applies_every_child_with_owner_reference_then_status() {
    let (client, mut api) = mock_client();
    let kvc = cluster("demo", KvClusterSpec::default());
    let expected = kvc.clone();
    let server = tokio::spawn(async move {
        api.get_statefulset("demo-server", None).await;
        let applied = api.apply_children("demo", json!({}), json!({})).await;
        let status = api.status_patch(&expected).await;
        (applied, status)
    });
    let action = reconcile(Arc::new(kvc), context(client))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let (applied, status) = server.await.unwrap();

    for child in &applied {
        let owners = child.body["metadata"]["ownerReferences"]
            .as_array()
            .expect("owner references");
        assert_eq!(owners.len(), 1, "{}", child.path);
        let owner = &owners[0];
        assert_eq!(owner["kind"], "KvCluster", "{}", child.path);
        assert_eq!(owner["apiVersion"], "kvstore.dev/v1alpha1");
        assert_eq!(owner["name"], "demo");
        assert_eq!(owner["uid"], UID);
        assert_eq!(owner["controller"], true);
        assert_eq!(
            child.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "kv-operator"
        );
    }
    assert_eq!(applied[4].body["spec"]["replicas"], 3);

    let status = &status.body["status"];
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["phase"], "Pending");
    assert_eq!(
        status["ringMembers"],
        json!(["demo-server-0", "demo-server-1", "demo-server-2"])
    );
    assert_eq!(status["gatewayEndpoint"], "demo-gateway.testns.svc:8000");
}

#[tokio::test]
async fn ready_workloads_give_phase_ready_and_conditions() {
    let (client, mut api) = mock_client();
    let kvc = cluster("demo", KvClusterSpec::default());
    let expected = kvc.clone();
    let server = tokio::spawn(async move {
        api.get_statefulset("demo-server", None).await;
        api.apply_children("demo", ready_sts(3), ready_deployment(2))
            .await;
        api.status_patch(&expected).await
    });
    reconcile(Arc::new(kvc), context(client))
        .await
        .expect("reconcile");
    let patch = server.await.unwrap();
    assert_eq!(patch.body["status"]["phase"], "Ready");
    assert_eq!(patch.body["status"]["readyReplicas"], 3);
    assert_eq!(patch.body["status"]["gatewayReadyReplicas"], 2);
    for (type_, status, reason) in [
        ("Ready", "True", "AllReady"),
        ("Progressing", "False", "RolledOut"),
        ("Degraded", "False", "AsSpecified"),
    ] {
        let c = condition(&patch, type_);
        assert_eq!(c["status"], status, "{type_}");
        assert_eq!(c["reason"], reason, "{type_}");
        assert_eq!(c["observedGeneration"], 2, "{type_}");
        assert!(c["lastTransitionTime"].is_string(), "{type_}");
        assert!(
            c["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{type_}"
        );
    }
}

#[tokio::test]
async fn scale_change_is_refused_with_condition_and_event() {
    let (client, mut api) = mock_client();
    let kvc = cluster(
        "demo",
        KvClusterSpec {
            replicas: 5,
            ..KvClusterSpec::default()
        },
    );
    let expected = kvc.clone();
    let server = tokio::spawn(async move {
        api.get_statefulset(
            "demo-server",
            Some(running_sts("demo-server", 3, "1Gi", None)),
        )
        .await;
        let applied = api
            .apply_children("demo", ready_sts(3), ready_deployment(2))
            .await;
        let event = api.event().await;
        let status = api.status_patch(&expected).await;
        (applied, event, status)
    });
    reconcile(Arc::new(kvc), context(client))
        .await
        .expect("reconcile");
    let (applied, event, status) = server.await.unwrap();

    assert_eq!(
        applied[4].body["spec"]["replicas"], 3,
        "the StatefulSet keeps its size"
    );
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "ScaleNotSupported");
    assert_eq!(event.body["regarding"]["kind"], "KvCluster");
    assert!(event.body["note"].as_str().unwrap().contains("rebalancing"));

    assert_eq!(status.body["status"]["phase"], "Degraded");
    assert_eq!(
        status.body["status"]["ringMembers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ScaleNotSupported");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("set spec.replicas back to 3")
    );
}

#[tokio::test]
async fn storage_class_change_is_reported_not_applied() {
    let (client, mut api) = mock_client();
    let storage = StorageSpec {
        storage_class_name: Some("fast".into()),
        ..StorageSpec::default()
    };
    let kvc = cluster(
        "demo",
        KvClusterSpec {
            storage,
            ..KvClusterSpec::default()
        },
    );
    let expected = kvc.clone();
    let server = tokio::spawn(async move {
        api.get_statefulset(
            "demo-server",
            Some(running_sts("demo-server", 3, "1Gi", Some("standard"))),
        )
        .await;
        let applied = api
            .apply_children("demo", ready_sts(3), ready_deployment(2))
            .await;
        let event = api.event().await;
        let status = api.status_patch(&expected).await;
        (applied, event, status)
    });
    reconcile(Arc::new(kvc), context(client))
        .await
        .expect("reconcile");
    let (applied, event, status) = server.await.unwrap();

    let template = &applied[4].body["spec"]["volumeClaimTemplates"][0]["spec"];
    assert_eq!(
        template["storageClassName"], "standard",
        "the immutable template is kept"
    );
    assert_eq!(event.body["reason"], "StorageClassImmutable");
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "StorageClassImmutable");
    assert!(degraded["message"].as_str().unwrap().contains("fast"));
}

#[tokio::test]
async fn storage_growth_expands_claims_or_reports_why_not() {
    let (client, mut api) = mock_client();
    let storage = StorageSpec {
        size: k8s_openapi::apimachinery::pkg::api::resource::Quantity("5Gi".into()),
        ..StorageSpec::default()
    };
    let kvc = cluster(
        "demo",
        KvClusterSpec {
            replicas: 2,
            storage,
            ..KvClusterSpec::default()
        },
    );
    let expected = kvc.clone();
    let server = tokio::spawn(async move {
        api.get_statefulset(
            "demo-server",
            Some(running_sts("demo-server", 2, "1Gi", None)),
        )
        .await;
        let first = api.next(StatusCode::OK, |seen| seen.body.clone()).await;
        let second = api
            .next(StatusCode::FORBIDDEN, |_| {
                status_body(403, "Forbidden", "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize")
            })
            .await;
        api.apply_children("demo", ready_sts(2), ready_deployment(2))
            .await;
        let event = api.event().await;
        let status = api.status_patch(&expected).await;
        (first, second, event, status)
    });
    reconcile(Arc::new(kvc), context(client))
        .await
        .expect("reconcile");
    let (first, second, event, status) = server.await.unwrap();
    assert_eq!(first.method, http::Method::PATCH);
    assert_eq!(
        first.path,
        format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/data-demo-server-0")
    );
    assert_eq!(
        first.body["spec"]["resources"]["requests"]["storage"],
        "5Gi"
    );
    assert_eq!(
        second.path,
        format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/data-demo-server-1")
    );
    assert_eq!(event.body["reason"], "StorageExpansionFailed");
    assert!(
        condition(&status, "Degraded")["message"]
            .as_str()
            .unwrap()
            .contains("allowVolumeExpansion")
    );
}

#[tokio::test]
async fn api_error_goes_to_error_policy_with_backoff_and_counted_by_reason() {
    let (client, mut api) = mock_client();
    let ctx = context(client);
    let kvc = Arc::new(cluster("demo", KvClusterSpec::default()));
    let server = tokio::spawn(async move {
        api.next(StatusCode::INTERNAL_SERVER_ERROR, |_| {
            status_body(500, "InternalError", "etcd is sad")
        })
        .await;
        // Second pass: the StatefulSet apply is rejected.
        api.get_statefulset("demo-server", None).await;
        for _ in 0..4 {
            api.next(StatusCode::OK, |seen| seen.body.clone()).await;
        }
        api.next(StatusCode::UNPROCESSABLE_ENTITY, |_| {
            status_body(422, "Invalid", "spec: Forbidden")
        })
        .await;
    });

    let err = reconcile(kvc.clone(), ctx.clone())
        .await
        .expect_err("the GET fails");
    assert!(matches!(err, Error::Kube(_)), "{err}");
    assert_eq!(
        error_policy(kvc.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(ctx.metrics.failures("kube_api"), 1);

    let err = reconcile(kvc.clone(), ctx.clone())
        .await
        .expect_err("the apply fails");
    assert!(
        matches!(
            err,
            Error::Apply {
                kind: "StatefulSet",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        error_policy(kvc.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(ctx.metrics.failures("apply"), 1);
    assert_eq!(ctx.metrics.failures("kube_api"), 1);
    server.await.unwrap();
}

#[tokio::test]
async fn missing_crd_is_reported_with_install_instructions() {
    missing_crd_check(None, "/apis/kvstore.dev/v1alpha1/kvclusters").await;
    // A namespaced operator checks in its namespace only: no cluster-wide permission needed.
    missing_crd_check(
        Some("team-a"),
        "/apis/kvstore.dev/v1alpha1/namespaces/team-a/kvclusters",
    )
    .await;
}

async fn missing_crd_check(namespace: Option<&str>, path: &'static str) {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        let seen = api
            .next(StatusCode::NOT_FOUND, |_| {
                status_body(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })
            .await;
        assert_eq!(seen.path, path);
    });
    let err = kv_operator::check_crd(&client, namespace)
        .await
        .expect_err("no CRD");
    server.await.unwrap();
    assert_eq!(err.metric_label(), "crd_missing");
    let message = err.to_string();
    assert!(
        message.contains("kubectl apply --server-side -f crds/kvcluster.yaml"),
        "{message}"
    );
}

#[test]
fn backoff_doubles_and_caps() {
    use kv_operator::reconcile::backoff;
    assert_eq!(backoff(1), Duration::from_secs(5));
    assert_eq!(backoff(3), Duration::from_secs(20));
    assert_eq!(backoff(30), Duration::from_secs(300));
}
