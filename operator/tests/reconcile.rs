//! The reconciler against a mocked API server: every request of a pass is checked in order.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{NS, UID, cluster, condition, mock_client, status_body};
use futures::future::BoxFuture;
use http::StatusCode;
use kube::runtime::controller::Action;
use kv_common::ring_config::RingMember;
use kv_crds::{KvCluster, KvClusterSpec, KvClusterStatus, RingStatus, StorageSpec};
use kv_operator::metrics::Metrics;
use kv_operator::reconcile::{Context, error_policy, reconcile};
use kv_operator::ring::{Rebalancing, RingStepper, Round};
use kv_operator::{Error, RenderConfig};
use kv_rebalance::{Phase, Progress, Target};
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

/// A coordinator that answers rounds from a script and records what it was asked.
#[derive(Default)]
struct FakeStepper {
    rounds: Mutex<VecDeque<Round>>,
    calls: Mutex<Vec<(Vec<String>, Target)>>,
}

impl FakeStepper {
    fn then(self: &Arc<Self>, phase: Phase, epoch: u64, next: Option<u64>) -> &Arc<Self> {
        self.rounds.lock().unwrap().push_back(Round {
            state: None,
            progress: Progress {
                phase,
                epoch,
                next_epoch: next,
                message: format!("{} round", phase.as_str()),
                waiting_for: if phase == Phase::Done {
                    vec![]
                } else {
                    vec!["demo-server-4".into()]
                },
                copied_versions: 120,
                copied_servers: (3, 5),
                cleaned_versions: if phase == Phase::Done { 7 } else { 0 },
                observed: None,
            },
        });
        self
    }

    /// Names of the seeds and of the target members of every round so far.
    fn calls(&self) -> Vec<(Vec<String>, Vec<String>)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(seeds, target)| {
                let members = target.members.iter().map(|m| m.name.clone()).collect();
                (seeds.clone(), members)
            })
            .collect()
    }
}

impl RingStepper for FakeStepper {
    fn step<'a>(
        &'a self,
        seeds: &'a [RingMember],
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Round, String>> {
        let seeds = seeds.iter().map(|m| m.name.clone()).collect();
        self.calls.lock().unwrap().push((seeds, target.clone()));
        let round = self.rounds.lock().unwrap().pop_front();
        Box::pin(async move { round.ok_or_else(|| "no scripted round left".to_owned()) })
    }
}

fn stepping_context(client: kube::Client, stepper: &Arc<FakeStepper>) -> Arc<Context> {
    let rebalancing = Rebalancing {
        stepper: stepper.clone(),
        url_map: Some(Arc::new(|url: &str| url.replace(".svc:8080", ".test:1"))),
        poll: Duration::from_secs(2),
    };
    Context::with_rebalancing(
        client,
        Metrics::register(&mut Registry::default()),
        RenderConfig::default(),
        None,
        rebalancing,
    )
}

/// A cluster of `replicas` wanted, whose ring (first ring of 3) has `members` servers.
fn scaled_cluster(replicas: i32, members: i32) -> KvCluster {
    let mut kvc = cluster(
        "demo",
        KvClusterSpec {
            replicas,
            ..KvClusterSpec::default()
        },
    );
    kvc.status = Some(KvClusterStatus {
        ring: Some(RingStatus {
            seeds: pods(3),
            members: pods(members),
            phase: "Done".into(),
            ..RingStatus::default()
        }),
        ..KvClusterStatus::default()
    });
    kvc
}

fn pods(n: i32) -> Vec<String> {
    (0..n).map(|i| format!("demo-server-{i}")).collect()
}

/// One pass: the StatefulSet runs `running` servers of which `ready` are ready. Returns the
/// applied StatefulSet, the status patch, the action, and the cluster with that status.
async fn pass(
    kvc: KvCluster,
    ctx: Arc<Context>,
    mut api: common::ApiServerVerifier,
    running: i32,
    ready: i32,
) -> (Value, common::Seen, Action, KvCluster) {
    let expected = kvc.clone();
    let server = tokio::spawn(async move {
        api.get_statefulset(
            "demo-server",
            Some(running_sts("demo-server", running, "1Gi", None)),
        )
        .await;
        let sts_status = json!({ "metadata": { "generation": 1 }, "status": {
            "observedGeneration": 1, "replicas": running, "readyReplicas": ready,
            "updatedReplicas": running, "currentRevision": "r1", "updateRevision": "r1",
        }});
        let applied = api
            .apply_children("demo", sts_status, ready_deployment(1))
            .await;
        let status = api.status_patch(&expected).await;
        (applied[4].body.clone(), status)
    });
    let action = reconcile(Arc::new(kvc.clone()), ctx)
        .await
        .expect("reconcile");
    let (sts, status) = server.await.unwrap();
    let mut next = kvc;
    next.status = Some(serde_json::from_value(status.body["status"].clone()).unwrap());
    (sts, status, action, next)
}

#[tokio::test]
async fn scale_up_grows_the_statefulset_first_then_moves_keys_once_servers_are_ready() {
    let stepper = Arc::new(FakeStepper::default());
    stepper
        .then(Phase::Copying, 0, Some(1))
        .then(Phase::Done, 1, None);

    // The new servers start; no key moves before they are all ready.
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (sts, status, action, kvc) = pass(scaled_cluster(5, 3), ctx, api, 5, 3).await;
    assert_eq!(sts["spec"]["replicas"], 5, "the StatefulSet grows first");
    assert!(
        stepper.calls().is_empty(),
        "no round before the servers are ready"
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    let rebalancing = condition(&status, "Rebalancing");
    assert_eq!(rebalancing["status"], "True");
    assert_eq!(rebalancing["reason"], "WaitingForServers");
    assert!(
        rebalancing["message"]
            .as_str()
            .unwrap()
            .contains("3/5 ready")
    );
    // The pods keep their template: KV_PEERS names the first ring only.
    let env = &sts["spec"]["template"]["spec"]["containers"][0]["env"];
    let peers = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KV_PEERS");
    assert_eq!(
        peers.unwrap()["value"].as_str().unwrap().split(',').count(),
        3
    );

    // All ready: one round towards pods 0..5, through the URL map.
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (_, status, action, kvc) = pass(kvc, ctx, api, 5, 5).await;
    assert_eq!(stepper.calls(), vec![(pods(5), pods(5))]);
    let target = stepper.calls.lock().unwrap()[0].1.clone();
    assert_eq!(
        target.members[4].url,
        "http://demo-server-4.demo-server.testns.test:1"
    );
    assert_eq!(target.replication_factor, Some(3));
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    let rebalancing = condition(&status, "Rebalancing");
    assert_eq!(rebalancing["status"], "True");
    assert_eq!(rebalancing["reason"], "Copying");
    let message = rebalancing["message"].as_str().unwrap();
    assert!(
        message.contains("3 -> 5 servers, epoch 0 -> 1"),
        "{message}"
    );
    assert!(
        message.contains("3/5 servers copied, 120 versions copied"),
        "{message}"
    );
    assert!(message.contains("waiting for demo-server-4"), "{message}");
    assert_eq!(condition(&status, "Progressing")["reason"], "Rebalancing");
    let ring = &status.body["status"]["ring"];
    assert_eq!(ring["phase"], "Copying");
    assert_eq!(ring["nextEpoch"], 1);
    assert_eq!(ring["copiedVersions"], 120);
    assert_eq!(ring["copiedServers"], "3/5");
    assert_eq!(ring["waitingFor"], json!(["demo-server-4"]));
    assert_eq!(ring["targetMembers"], json!(pods(5)));
    assert_eq!(ring["members"], json!(pods(3)), "not in force yet");

    // Done: the ring of 5 is recorded.
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (sts, status, _, _) = pass(kvc, ctx, api, 5, 5).await;
    assert_eq!(sts["spec"]["replicas"], 5);
    let rebalancing = condition(&status, "Rebalancing");
    assert_eq!(rebalancing["status"], "False");
    assert_eq!(rebalancing["reason"], "Balanced");
    let ring = &status.body["status"]["ring"];
    assert_eq!(ring["members"], json!(pods(5)));
    assert_eq!(ring["epoch"], 1);
    assert_eq!(ring["phase"], "Done");
    assert_eq!(ring["seeds"], json!(pods(3)));
    assert!(ring.get("targetMembers").is_none(), "{ring}");
    assert_eq!(status.body["status"]["ringMembers"], json!(pods(5)));
    assert_eq!(
        (&ring["replicationFactor"], &ring["vnodes"]),
        (&json!(3), &json!(150))
    );
}

#[tokio::test]
async fn a_new_replication_factor_moves_keys_on_the_same_servers() {
    let stepper = Arc::new(FakeStepper::default());
    stepper
        .then(Phase::Copying, 1, Some(2))
        .then(Phase::Done, 2, None);
    let mut kvc = scaled_cluster(3, 3);
    kvc.spec.replication.factor = 2;
    {
        let ring = kvc.status.as_mut().unwrap().ring.as_mut().unwrap();
        ring.epoch = 1;
        ring.replication_factor = Some(3);
        ring.vnodes = Some(150);
    }
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (sts, status, action, kvc) = pass(kvc, ctx, api, 3, 3).await;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(stepper.calls(), vec![(pods(3), pods(3))]);
    let target = stepper.calls.lock().unwrap()[0].1.clone();
    assert_eq!(
        (target.replication_factor, target.vnodes),
        (Some(2), Some(150))
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    let rebalancing = condition(&status, "Rebalancing");
    assert_eq!(rebalancing["reason"], "Copying");
    let message = rebalancing["message"].as_str().unwrap();
    assert!(
        message.contains("3 -> 3 servers, replication factor 3 -> 2, epoch 1 -> 2"),
        "{message}"
    );
    let ring = &status.body["status"]["ring"];
    assert_eq!(ring["replicationFactor"], 3, "not in force yet");

    // Done: the new factor is recorded, and the next pass runs no round.
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (_, status, _, kvc) = pass(kvc, ctx, api, 3, 3).await;
    assert_eq!(condition(&status, "Rebalancing")["reason"], "Balanced");
    let ring = &status.body["status"]["ring"];
    assert_eq!(
        (&ring["replicationFactor"], &ring["epoch"]),
        (&json!(2), &json!(2))
    );
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (_, status, action, _) = pass(kvc, ctx, api, 3, 3).await;
    assert_eq!(
        stepper.calls().len(),
        2,
        "no round once the factor is in force"
    );
    assert_eq!(condition(&status, "Rebalancing")["status"], "False");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn scale_down_moves_keys_first_and_shrinks_only_when_done() {
    let stepper = Arc::new(FakeStepper::default());
    stepper
        .then(Phase::Draining, 1, Some(2))
        .then(Phase::Done, 2, None);

    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (sts, status, _, kvc) = pass(scaled_cluster(2, 5), ctx, api, 5, 5).await;
    assert_eq!(
        sts["spec"]["replicas"], 5,
        "every server runs during the move"
    );
    assert_eq!(stepper.calls(), vec![(pods(5), pods(2))]);
    assert_eq!(condition(&status, "Rebalancing")["reason"], "Draining");

    // The move is done: recorded, but this pass applied the StatefulSet before the round.
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (sts, status, action, kvc) = pass(kvc, ctx, api, 5, 5).await;
    assert_eq!(sts["spec"]["replicas"], 5);
    assert_eq!(stepper.calls().len(), 2);
    assert_eq!(condition(&status, "Rebalancing")["reason"], "Balanced");
    assert_eq!(status.body["status"]["ring"]["members"], json!(pods(2)));
    assert_eq!(status.body["status"]["ring"]["cleanedVersions"], 7);
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(2)),
        "shrink soon"
    );

    // Next pass: the StatefulSet shrinks, no round.
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (sts, status, action, _) = pass(kvc, ctx, api, 5, 5).await;
    assert_eq!(sts["spec"]["replicas"], 2);
    assert_eq!(stepper.calls().len(), 2);
    assert_eq!(condition(&status, "Rebalancing")["status"], "False");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn a_new_cluster_records_its_first_ring_as_balanced() {
    let stepper = Arc::new(FakeStepper::default());
    let (client, mut api) = mock_client();
    let kvc = cluster("demo", KvClusterSpec::default());
    let expected = kvc.clone();
    let server = tokio::spawn(async move {
        api.get_statefulset("demo-server", None).await;
        api.apply_children("demo", json!({}), json!({})).await;
        api.status_patch(&expected).await
    });
    reconcile(Arc::new(kvc), stepping_context(client, &stepper))
        .await
        .expect("reconcile");
    let status = server.await.unwrap();
    assert!(stepper.calls().is_empty());
    let ring = &status.body["status"]["ring"];
    assert_eq!(ring["seeds"], json!(pods(3)));
    assert_eq!(ring["members"], json!(pods(3)));
    assert_eq!(ring["epoch"], 0);
    let rebalancing = condition(&status, "Rebalancing");
    assert_eq!(rebalancing["status"], "False");
    assert_eq!(rebalancing["reason"], "Balanced");
}

#[tokio::test]
async fn once_its_servers_are_ready_the_first_ring_is_pinned_as_epoch_1() {
    // Epoch 0 is each server's ring from its flags; one round pins it, a second sees it done.
    let stepper = Arc::new(FakeStepper::default());
    stepper
        .then(Phase::Switching, 0, None)
        .then(Phase::Done, 1, None);
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (sts, status, _, _) = pass(scaled_cluster(3, 3), ctx, api, 3, 3).await;
    assert_eq!(sts["spec"]["replicas"], 3);
    // Both rounds aim at the ring in force, named by the servers themselves.
    assert_eq!(
        stepper.calls(),
        vec![(pods(3), pods(3)), (pods(3), pods(3))]
    );
    assert_eq!(status.body["status"]["ring"]["epoch"], 1);
    assert_eq!(status.body["status"]["ring"]["replicationFactor"], 3);
    assert_eq!(condition(&status, "Rebalancing")["reason"], "Balanced");

    // Not yet ready: no round, the epoch stays 0 until a later pass.
    let stepper = Arc::new(FakeStepper::default());
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (_, status, _, _) = pass(scaled_cluster(3, 3), ctx, api, 3, 2).await;
    assert!(stepper.calls().is_empty());
    assert_eq!(status.body["status"]["ring"]["epoch"], 0);
}

#[tokio::test]
async fn a_cluster_created_with_one_server_grows_like_any_other() {
    let stepper = Arc::new(FakeStepper::default());
    stepper.then(Phase::Copying, 0, Some(1));
    let mut kvc = scaled_cluster(3, 1);
    kvc.status.as_mut().unwrap().ring.as_mut().unwrap().seeds = pods(1);

    // Its one server names itself in KV_PEERS (a one-member ring can hand keys over), and
    // the StatefulSet grows first, as for any scale-up.
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (sts, _, _, kvc) = pass(kvc, ctx, api, 3, 1).await;
    assert_eq!(sts["spec"]["replicas"], 3);
    let env = &sts["spec"]["template"]["spec"]["containers"][0]["env"];
    let peers = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KV_PEERS")
        .expect("KV_PEERS even for one server");
    assert_eq!(
        peers["value"],
        "demo-server-0=http://demo-server-0.demo-server.testns.svc:8080"
    );
    assert!(stepper.calls().is_empty());

    // Once the new servers are ready, keys move towards the three of them.
    let (client, api) = mock_client();
    let ctx = stepping_context(client, &stepper);
    let (_, status, _, _) = pass(kvc, ctx, api, 3, 3).await;
    assert_eq!(stepper.calls(), vec![(pods(3), pods(3))]);
    assert_eq!(condition(&status, "Rebalancing")["reason"], "Copying");
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
