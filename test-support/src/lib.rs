//! Test harness shared by kvstore crates.
//!
//! [`FakeApiServer`] is a tiny Kubernetes API server on `127.0.0.1:0` that serves the two verbs
//! kube-runtime's `watcher` needs, `list` and `watch`, for any namespaced collection
//! (`/api/v1/namespaces/{ns}/pods`, `/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices`,
//! ...). Tests point a real `kube::Client` at [`FakeApiServer::url`] and drive it with
//! [`FakeApiServer::apply`] and [`FakeApiServer::delete`]. It speaks plain HTTP, so the client
//! needs no TLS, and it stores objects as JSON, so it depends on no Kubernetes types.
//!
//! Not modelled: pagination (`limit` is ignored, every list is one page), field selectors,
//! set-based label selectors, bookmarks and `410 Gone` (the event history is kept whole).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// One change, as a watch stream line carries it.
#[derive(Clone, Debug)]
struct Change {
    resource_version: u64,
    collection: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    resource_version: u64,
    /// collection path -> object name -> object.
    collections: BTreeMap<String, BTreeMap<String, Value>>,
    /// Every change so far, so a watch from an old resourceVersion misses nothing.
    history: Vec<Change>,
}

struct Shared {
    // A std Mutex: it is never held across an await, and holding it while publishing makes a
    // watch's replay of `history` and its live subscription meet without gap or overlap.
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
}

/// A fake Kubernetes API server serving list and watch. Stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeApiServer {
    /// Starts the server on an ephemeral loopback port.
    pub async fn start() -> FakeApiServer {
        let (changes, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            changes,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API server");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { addr, shared, task }
    }

    /// Base URL to give `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces `object` (named by its `metadata.name`) in `collection`, e.g.
    /// `/apis/discovery.k8s.io/v1/namespaces/default/endpointslices`, and tells watchers.
    pub fn apply(&self, collection: &str, mut object: Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("object has metadata.name")
            .to_owned();
        let mut inner = self.shared.inner.lock().expect("fake API state");
        inner.resource_version += 1;
        let rv = inner.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let objects = inner.collections.entry(collection.to_owned()).or_default();
        let kind = if objects.insert(name, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        publish(&self.shared, &mut inner, collection, kind, object);
    }

    /// Deletes the object `name` from `collection`, if present, and tells watchers.
    pub fn delete(&self, collection: &str, name: &str) {
        let mut inner = self.shared.inner.lock().expect("fake API state");
        let Some(mut object) = inner
            .collections
            .get_mut(collection)
            .and_then(|objects| objects.remove(name))
        else {
            return;
        };
        inner.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
        publish(&self.shared, &mut inner, collection, "DELETED", object);
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn publish(
    shared: &Shared,
    inner: &mut Inner,
    collection: &str,
    kind: &'static str,
    object: Value,
) {
    let change = Change {
        resource_version: inner.resource_version,
        collection: collection.to_owned(),
        kind,
        object,
    };
    inner.history.push(change.clone());
    // No receiver is fine: nobody is watching yet.
    let _ = shared.changes.send(change);
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    let params = Params::parse(query.as_deref().unwrap_or(""));
    let collection = uri.path().to_owned();
    if params.watch {
        watch(&shared, collection, params)
    } else {
        list(&shared, &collection, &params)
    }
}

fn list(shared: &Shared, collection: &str, params: &Params) -> Response {
    let inner = shared.inner.lock().expect("fake API state");
    let items: Vec<&Value> = inner
        .collections
        .get(collection)
        .into_iter()
        .flat_map(|objects| objects.values())
        .filter(|object| params.selects(object))
        .collect();
    let body = json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": { "resourceVersion": inner.resource_version.to_string() },
        "items": items,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn watch(shared: &Shared, collection: String, params: Params) -> Response {
    let (replay, receiver) = {
        let inner = shared.inner.lock().expect("fake API state");
        let receiver = shared.changes.subscribe();
        let replay: Vec<Change> = inner
            .history
            .iter()
            .filter(|c| c.resource_version > params.resource_version)
            .cloned()
            .collect();
        (replay, receiver)
    };
    let wanted =
        move |change: &Change| change.collection == collection && params.selects(&change.object);
    let replay = futures::stream::iter(replay);
    let live = futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(change) => return Some((change, receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures::StreamExt;
    let lines = replay.chain(live).filter_map(move |change| {
        let line = wanted(&change).then(|| {
            let mut line = json!({ "type": change.kind, "object": change.object }).to_string();
            line.push('\n');
            Ok::<_, Infallible>(line)
        });
        futures::future::ready(line)
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(lines))
        .expect("valid response")
}

/// The query parameters this fake understands.
#[derive(Clone, Default)]
struct Params {
    watch: bool,
    resource_version: u64,
    /// Equality-based label selector terms (`app=x,tier=y`).
    labels: Vec<(String, String)>,
}

impl Params {
    fn parse(query: &str) -> Params {
        let mut params = Params::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match name {
                "watch" => params.watch = value == "true" || value == "1",
                "resourceVersion" => params.resource_version = value.parse().unwrap_or(0),
                "labelSelector" => {
                    params.labels = value
                        .split(',')
                        .filter_map(|term| term.split_once('='))
                        .map(|(k, v)| (k.trim_end_matches('=').to_owned(), v.to_owned()))
                        .collect();
                }
                _ => {}
            }
        }
        params
    }

    fn selects(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.labels
            .iter()
            .all(|(k, v)| labels[k.as_str()].as_str() == Some(v.as_str()))
    }
}

/// Decodes `%XX` escapes and `+`; enough for the label selectors kube-rs sends.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_watcher_query() {
        let p = Params::parse(
            "labelSelector=kubernetes.io%2Fservice-name%3Dkv&watch=true&resourceVersion=7",
        );
        assert!(p.watch);
        assert_eq!(p.resource_version, 7);
        assert_eq!(
            p.labels,
            vec![("kubernetes.io/service-name".to_owned(), "kv".to_owned())]
        );
        let object = json!({"metadata": {"labels": {"kubernetes.io/service-name": "kv"}}});
        assert!(p.selects(&object));
        assert!(!p.selects(&json!({"metadata": {}})));
    }
}
