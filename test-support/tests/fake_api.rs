//! The fake API server through a real kube client (in-process transport): the behaviours the
//! crate documentation promises.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy, WatchEvent,
    WatchParams,
};
use kube::{Api, ResourceExt};
use kv_test_support::FakeApiServer;
use serde_json::{Value, json};

fn config_map(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "labels": labels },
        "data": { "k": "v" },
    }))
    .unwrap()
}

fn deployment(replicas: i32, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "labels": labels },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": "web" } },
            "template": { "metadata": { "labels": { "app": "web" } },
                          "spec": { "containers": [{ "name": "web", "image": "web:1" }] } },
        },
    })
}

fn version(object: &impl kube::Resource) -> u64 {
    object.resource_version().unwrap().parse().unwrap()
}

#[tokio::test]
async fn create_get_list_with_selectors() {
    let api = FakeApiServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(api.client(), "a");
    let pp = PostParams::default();
    let first = maps
        .create(&pp, &config_map("one", json!({"app": "kv", "tier": "web"})))
        .await
        .unwrap();
    maps.create(&pp, &config_map("two", json!({"app": "other"})))
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(api.client(), "b")
        .create(&pp, &config_map("three", json!({"app": "kv"})))
        .await
        .unwrap();
    assert!(first.uid().is_some() && first.creation_timestamp().is_some());
    assert_eq!(first.namespace().as_deref(), Some("a"));

    let err = maps
        .create(&pp, &config_map("one", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
    let err = maps.get("nope").await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.is_not_found()));

    let names = |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items.iter().map(|m| m.name_any()).collect()
    };
    let lp = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(maps.list(&lp("app=kv")).await.unwrap()), ["one"]);
    assert_eq!(
        names(maps.list(&lp("app in (kv,other)")).await.unwrap()),
        ["one", "two"]
    );
    assert_eq!(names(maps.list(&lp("!tier")).await.unwrap()), ["two"]);
    let everywhere: Api<ConfigMap> = Api::all(api.client());
    assert_eq!(everywhere.list(&lp("app=kv")).await.unwrap().items.len(), 2);
    let by_name = ListParams::default().fields("metadata.name=two");
    assert_eq!(names(maps.list(&by_name).await.unwrap()), ["two"]);
}

#[tokio::test]
async fn apply_patches_generation_and_optimistic_concurrency() {
    let api = FakeApiServer::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "a");
    let ssa = PatchParams::apply("me").force();
    let applied = deployments
        .patch(
            "web",
            &ssa,
            &Patch::Apply(deployment(1, json!({"mine": "1", "gone": "x"}))),
        )
        .await
        .unwrap();
    assert_eq!(applied.metadata.generation, Some(1));

    // Another writer's label survives my applies; a label I stop applying goes away.
    let theirs = json!({ "metadata": { "labels": { "theirs": "y" } } });
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&theirs))
        .await
        .unwrap();
    let same = deployments
        .patch(
            "web",
            &ssa,
            &Patch::Apply(deployment(1, json!({"mine": "1", "gone": "x"}))),
        )
        .await
        .unwrap();
    let again = deployments
        .patch(
            "web",
            &ssa,
            &Patch::Apply(deployment(1, json!({"mine": "1", "gone": "x"}))),
        )
        .await
        .unwrap();
    assert_eq!(
        version(&same),
        version(&again),
        "a no-op apply writes nothing"
    );
    let relabelled = deployments
        .patch(
            "web",
            &ssa,
            &Patch::Apply(deployment(1, json!({"mine": "2"}))),
        )
        .await
        .unwrap();
    let labels = relabelled.labels();
    assert_eq!(labels.get("mine").map(String::as_str), Some("2"));
    assert_eq!(labels.get("theirs").map(String::as_str), Some("y"));
    assert!(!labels.contains_key("gone"));
    assert_eq!(relabelled.metadata.generation, Some(1), "metadata only");

    // Spec changes move the generation, whatever the patch type.
    let scaled = deployments
        .patch(
            "web",
            &ssa,
            &Patch::Apply(deployment(3, json!({"mine": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));
    let json_patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": "/spec/replicas", "value": 3 },
        { "op": "replace", "path": "/spec/replicas", "value": 4 },
    ]))
    .unwrap();
    let patched = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Json::<()>(json_patch),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.as_ref().unwrap().replicas, Some(4));
    assert_eq!(patched.metadata.generation, Some(3));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{ "op": "test", "path": "/spec/replicas", "value": 1 }]))
            .unwrap();
    let err = deployments
        .patch("web", &PatchParams::default(), &Patch::Json::<()>(failing))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 422));

    // A write from a stale read is refused.
    let mut stale = scaled.clone();
    stale.spec.as_mut().unwrap().replicas = Some(9);
    let err = deployments
        .replace("web", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
}

#[tokio::test]
async fn status_is_a_subresource() {
    let api = FakeApiServer::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "a");
    deployments
        .patch(
            "web",
            &PatchParams::apply("me"),
            &Patch::Apply(deployment(1, json!({}))),
        )
        .await
        .unwrap();
    let status = json!({ "status": { "readyReplicas": 1, "observedGeneration": 1 } });
    let written = deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(written.status.as_ref().unwrap().ready_replicas, Some(1));
    assert_eq!(written.metadata.generation, Some(1));

    // Through the main resource, status is ignored (and so is a spec through /status).
    let both = json!({ "spec": { "replicas": 2 }, "status": { "readyReplicas": 7 } });
    let main = deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&both))
        .await
        .unwrap();
    assert_eq!(main.status.as_ref().unwrap().ready_replicas, Some(1));
    assert_eq!(main.spec.as_ref().unwrap().replicas, Some(2));
    let sub = deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&both))
        .await
        .unwrap();
    assert_eq!(sub.status.as_ref().unwrap().ready_replicas, Some(7));
    assert_eq!(sub.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(sub.metadata.generation, Some(2));

    // Server-side apply of the status, as the operator writes it.
    let applied = json!({ "apiVersion": "apps/v1", "kind": "Deployment",
                          "status": { "availableReplicas": 2 } });
    let sub = deployments
        .patch_status(
            "web",
            &PatchParams::apply("me").force(),
            &Patch::Apply(applied),
        )
        .await
        .unwrap();
    let s = sub.status.unwrap();
    assert_eq!((s.available_replicas, s.ready_replicas), (Some(2), Some(7)));
}

#[tokio::test]
async fn finalizers_and_owner_reference_cascade() {
    let api = FakeApiServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(api.client(), "a");
    let pp = PostParams::default();
    let owner = maps
        .create(&pp, &config_map("owner", json!({})))
        .await
        .unwrap();
    let owned_by = |name: &str, finalizers: Value| -> ConfigMap {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": name, "finalizers": finalizers, "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                "uid": owner.uid().unwrap(), "controller": true,
            }]},
        }))
        .unwrap()
    };
    maps.create(&pp, &owned_by("plain", json!([])))
        .await
        .unwrap();
    maps.create(&pp, &owned_by("guarded", json!(["example.com/cleanup"])))
        .await
        .unwrap();

    maps.delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    assert!(maps.get_opt("owner").await.unwrap().is_none());
    assert!(maps.get_opt("plain").await.unwrap().is_none(), "cascaded");
    let guarded = maps.get("guarded").await.unwrap();
    assert!(
        guarded.metadata.deletion_timestamp.is_some(),
        "held by its finalizer"
    );

    let clear = json!({ "metadata": { "finalizers": null } });
    maps.patch("guarded", &PatchParams::default(), &Patch::Merge(&clear))
        .await
        .unwrap();
    assert!(maps.get_opt("guarded").await.unwrap().is_none());

    // Orphaning keeps the dependents, without the owner reference.
    let owner = maps
        .create(&pp, &config_map("owner", json!({})))
        .await
        .unwrap();
    let mut child = owned_by("child", json!([]));
    child.metadata.owner_references.as_mut().unwrap()[0].uid = owner.uid().unwrap();
    maps.create(&pp, &child).await.unwrap();
    let orphan = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..DeleteParams::default()
    };
    maps.delete("owner", &orphan).await.unwrap();
    let child = maps.get("child").await.unwrap();
    assert!(child.owner_references().is_empty());
}

#[tokio::test]
async fn watch_replays_from_a_version_and_follows_the_selector() {
    let api = FakeApiServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(api.client(), "a");
    let pp = PostParams::default();
    maps.create(&pp, &config_map("before", json!({"app": "kv"})))
        .await
        .unwrap();
    let listed = maps
        .list(&ListParams::default().labels("app=kv"))
        .await
        .unwrap();
    let from = listed.metadata.resource_version.unwrap();

    let watch = WatchParams::default().labels("app=kv").timeout(10);
    let mut events = maps.watch(&watch, &from).await.unwrap().boxed();
    maps.create(&pp, &config_map("one", json!({"app": "kv"})))
        .await
        .unwrap();
    maps.create(&pp, &config_map("other", json!({"app": "no"})))
        .await
        .unwrap();
    let relabel = json!({ "metadata": { "labels": { "app": "no" } } });
    maps.patch("one", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    let back = json!({ "metadata": { "labels": { "app": "kv" } } });
    maps.patch("other", &PatchParams::default(), &Patch::Merge(&back))
        .await
        .unwrap();
    maps.delete("before", &DeleteParams::default())
        .await
        .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("the stream goes on");
        seen.push(match event {
            WatchEvent::Added(m) => format!("ADDED {}", m.name_any()),
            WatchEvent::Modified(m) => format!("MODIFIED {}", m.name_any()),
            WatchEvent::Deleted(m) => format!("DELETED {}", m.name_any()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        seen,
        ["ADDED one", "DELETED one", "ADDED other", "DELETED before"]
    );
}
