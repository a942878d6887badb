//! Test fixtures: KvClusters as the API server would hand them over, and an
//! `ApiServerVerifier` that plays the API server for one reconcile pass: it checks each
//! request the operator makes, in order, and answers it (controller-rs `fixtures.rs` pattern
//! on `tower_test::mock`).

#![allow(dead_code)] // each test binary uses a part of the fixtures

use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, Resource};
use kv_crds::{KvCluster, KvClusterSpec};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

pub const NS: &str = "testns";
pub const UID: &str = "6b1f2c4e-0000-4000-8000-000000000001";

/// A stored KvCluster: namespace, uid and generation set, as in a watch event.
pub fn cluster(name: &str, spec: KvClusterSpec) -> KvCluster {
    let mut cluster = KvCluster::new(name, spec);
    let meta = cluster.meta_mut();
    meta.namespace = Some(NS.into());
    meta.uid = Some(UID.into());
    meta.generation = Some(2);
    cluster
}

/// A mocked client and the verifier that answers its requests.
pub fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, NS), ApiServerVerifier(handle))
}

/// What a request looked like, for assertions after the pass.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// Takes the next request and answers it with `status` and the body `answer` computes
    /// from what was sent.
    pub async fn next(&mut self, status: StatusCode, answer: impl FnOnce(&Seen) -> Value) -> Seen {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("the operator made no further request within 5 s")
            .expect("the client was dropped");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let seen = Seen {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON body")
            },
        };
        let reply = answer(&seen);
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        seen
    }

    /// GET of the servers' StatefulSet: answers `existing`, or 404 when `None`.
    pub async fn get_statefulset(&mut self, name: &str, existing: Option<Value>) -> Seen {
        let seen = match existing {
            Some(sts) => self.next(StatusCode::OK, |_| sts).await,
            None => {
                self.next(StatusCode::NOT_FOUND, |_| {
                    status_body(404, "NotFound", "not found")
                })
                .await
            }
        };
        assert_eq!(seen.method, http::Method::GET);
        assert_eq!(
            seen.path,
            format!("/apis/apps/v1/namespaces/{NS}/statefulsets/{name}")
        );
        seen
    }

    /// One server-side apply, echoed back (plus `extra` merged in, e.g. a status) like an API
    /// server that accepted it.
    pub async fn apply(&mut self, path: &str, extra: Value) -> Seen {
        let seen = self
            .next(StatusCode::OK, |seen| {
                let mut obj = seen.body.clone();
                merge(&mut obj, extra);
                obj
            })
            .await;
        assert_eq!(seen.method, http::Method::PATCH, "{path}");
        assert_eq!(seen.path, path);
        assert_eq!(
            seen.content_type, "application/apply-patch+yaml",
            "{path}: not server-side apply"
        );
        assert!(
            seen.query.contains("fieldManager=kv-operator"),
            "{path}: {}",
            seen.query
        );
        assert!(seen.query.contains("force=true"), "{path}: {}", seen.query);
        seen
    }

    /// The nine children of `cluster`, in apply order; `sts_extra` / `deploy_extra` are merged
    /// into the StatefulSet and Deployment answers.
    pub async fn apply_children(
        &mut self,
        cluster: &str,
        sts_extra: Value,
        deploy_extra: Value,
    ) -> Vec<Seen> {
        let (core, apps) = (
            format!("/api/v1/namespaces/{NS}"),
            format!("/apis/apps/v1/namespaces/{NS}"),
        );
        let rbac = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}");
        let (gw, srv) = (format!("{cluster}-gateway"), format!("{cluster}-server"));
        let mut seen = Vec::new();
        seen.push(
            self.apply(&format!("{core}/serviceaccounts/{gw}"), json!({}))
                .await,
        );
        seen.push(self.apply(&format!("{rbac}/roles/{gw}"), json!({})).await);
        seen.push(
            self.apply(&format!("{rbac}/rolebindings/{gw}"), json!({}))
                .await,
        );
        seen.push(
            self.apply(&format!("{core}/services/{srv}"), json!({}))
                .await,
        );
        seen.push(
            self.apply(&format!("{apps}/statefulsets/{srv}"), sts_extra)
                .await,
        );
        seen.push(
            self.apply(&format!("{core}/services/{gw}"), json!({}))
                .await,
        );
        seen.push(
            self.apply(&format!("{apps}/deployments/{gw}"), deploy_extra)
                .await,
        );
        seen.push(
            self.apply(
                &format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{srv}"),
                json!({}),
            )
            .await,
        );
        seen.push(
            self.apply(
                &format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{srv}"),
                json!({}),
            )
            .await,
        );
        seen
    }

    /// An Event created through the events.k8s.io API.
    pub async fn event(&mut self) -> Seen {
        let seen = self
            .next(StatusCode::CREATED, |seen| seen.body.clone())
            .await;
        assert_eq!(seen.method, http::Method::POST);
        assert_eq!(
            seen.path,
            format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
        );
        seen
    }

    /// The status patch; answers the cluster with that status.
    pub async fn status_patch(&mut self, cluster: &KvCluster) -> Seen {
        let stored = serde_json::to_value(cluster).unwrap();
        let seen = self
            .next(StatusCode::OK, |seen| {
                let mut obj = stored;
                merge(&mut obj, json!({ "status": seen.body["status"].clone() }));
                obj
            })
            .await;
        assert_eq!(seen.method, http::Method::PATCH);
        let name = cluster.meta().name.clone().unwrap();
        assert_eq!(
            seen.path,
            format!("/apis/kvstore.dev/v1alpha1/namespaces/{NS}/kvclusters/{name}/status")
        );
        assert_eq!(seen.content_type, "application/apply-patch+yaml");
        assert!(seen.query.contains("fieldManager=kv-operator"));
        seen
    }
}

/// A Kubernetes `Status` error body.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

/// JSON merge of `extra` into `target` (objects merged recursively, the rest replaced).
pub fn merge(target: &mut Value, extra: Value) {
    match (target, extra) {
        (Value::Object(t), Value::Object(e)) => {
            for (k, v) in e {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, e) => *t = e,
    }
}

/// The condition of `type_` in a status patch body.
pub fn condition<'a>(status_patch: &'a Seen, type_: &str) -> &'a Value {
    status_patch.body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}
