//! [`FakeApiServer`]: the store and the REST handlers, served two ways at once: over plain
//! HTTP on `127.0.0.1:0` (for `kube::Config::new(url)`), and in-process as an axum `Router`
//! handed to `kube::Client::new` (no socket, no TLS, watches included).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use serde_json::Value;

use crate::path::Target;
use crate::query::Params;
use crate::store::{ObjectKey, Store};

/// A fake Kubernetes API server. The HTTP listener stops when it is dropped; clients from
/// [`FakeApiServer::client`] keep the store alive on their own.
pub struct FakeApiServer {
    addr: SocketAddr,
    store: Arc<Store>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeApiServer {
    /// Starts the server on an ephemeral loopback port.
    pub async fn start() -> FakeApiServer {
        let store = Arc::new(Store::default());
        let app = router(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API server");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { addr, store, task }
    }

    /// Base URL to give `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API as an axum `Router`.
    pub fn router(&self) -> Router {
        router(self.store.clone())
    }

    /// A kube client talking to the router in-process; its default namespace is `default`.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// Creates or replaces `object` (named by its `metadata.name`, status included) in
    /// `collection`, e.g. `/apis/discovery.k8s.io/v1/namespaces/default/endpointslices`, and
    /// tells watchers. For fixtures: no precondition, no field manager.
    pub fn apply(&self, collection: &str, object: Value) {
        let target = collection_target(collection);
        self.store
            .upsert(&target.resource, target.namespace.as_deref(), object)
            .expect("a valid fixture object");
    }

    /// Deletes the object `name` from `collection`, if present (finalizers and owner
    /// references apply as for a `DELETE`), and tells watchers.
    pub fn delete(&self, collection: &str, name: &str) {
        let target = collection_target(collection);
        let key: ObjectKey = (target.namespace.unwrap_or_default(), name.to_owned());
        let _ = crate::gc::delete(&self.store, &target.resource, &key, false);
    }

    /// The object at `path` (`/apis/apps/v1/namespaces/kv/statefulsets/demo`), if any.
    pub fn get(&self, path: &str) -> Option<Value> {
        let target = Target::parse(path)?;
        let key = (target.namespace.unwrap_or_default(), target.name?);
        self.store.get(&target.resource, &key).ok()
    }

    /// Every object of `collection` (a namespaced or a cluster-wide collection path).
    pub fn list(&self, collection: &str) -> Vec<Value> {
        let target = collection_target(collection);
        let params = Params::default();
        let namespace = target.namespace.as_deref();
        self.store.list(&target.resource, namespace, &params).0
    }

    pub(crate) fn store(&self) -> Arc<Store> {
        self.store.clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router(store: Arc<Store>) -> Router {
    Router::new()
        .fallback(crate::handlers::handle)
        .with_state(store)
}

fn collection_target(collection: &str) -> Target {
    let target = Target::parse(collection).expect("a collection path");
    assert!(target.name.is_none(), "{collection} is not a collection");
    target
}
