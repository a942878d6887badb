//! The object store behind the fake: every object as JSON, one global `resourceVersion`
//! counter, and the history of changes that watches replay. What a write may change is in
//! `write.rs`; deletion, finalizers and owner references in `gc.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::error::ApiError;
use crate::path::ResourceType;
use crate::query::Params;

/// (namespace, name); the namespace is `""` for cluster-scoped objects.
pub type ObjectKey = (String, String);

/// One change, as a watch stream line carries it.
#[derive(Clone, Debug)]
pub struct Change {
    pub resource_version: u64,
    pub resource: ResourceType,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub object: Value,
    /// The object before a `MODIFIED`, so a watch with a selector sees an object that stops
    /// (starts) matching as `DELETED` (`ADDED`).
    pub previous: Option<Value>,
}

#[derive(Default)]
pub struct Inner {
    pub resource_version: u64,
    pub objects: BTreeMap<ResourceType, BTreeMap<ObjectKey, Value>>,
    /// Last configuration each field manager applied: (type, object, manager, status?).
    pub applied: HashMap<(ResourceType, ObjectKey, String, bool), Value>,
    /// Every change so far (never compacted, so no watch ever gets `410 Gone`).
    pub history: Vec<Change>,
    uids: u64,
}

pub struct Store {
    // A std Mutex: never held across an await, and holding it while publishing makes a
    // watch's replay of `history` and its live subscription meet without gap or overlap.
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
    /// The latest resourceVersion, for in-process observers (the simulator).
    revision: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            inner: Mutex::default(),
            changes: broadcast::channel(4096).0,
            revision: watch::channel(0).0,
        }
    }
}

impl Store {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes up on every change.
    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Records a change and tells watchers. Call with the lock held.
    pub fn publish(&self, inner: &mut Inner, change: Change) {
        inner.history.push(change.clone());
        // No receiver is fine: nobody is watching yet.
        let _ = self.changes.send(change);
        self.revision.send_replace(inner.resource_version);
    }

    /// Objects of `resource` in `namespace` (all namespaces when `None`) that `params` selects,
    /// and the current resourceVersion.
    pub fn list(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        params: &Params,
    ) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .get(resource)
            .into_iter()
            .flat_map(|objects| objects.iter())
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, object)| object)
            .filter(|object| params.selects(object))
            .cloned()
            .collect();
        (items, inner.resource_version)
    }

    pub fn get(&self, resource: &ResourceType, key: &ObjectKey) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(resource)
            .and_then(|objects| objects.get(key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&describe(resource, key)))
    }

    /// The replay a new watch starts with, and its live feed, taken atomically.
    pub fn watch_from(
        &self,
        resource: &ResourceType,
        params: &Params,
    ) -> (Vec<Change>, broadcast::Receiver<Change>) {
        let inner = self.lock();
        let receiver = self.changes.subscribe();
        let replay = if params.resource_version == 0 {
            // "Any" version: start with the current objects, as synthetic ADDED events.
            inner
                .objects
                .get(resource)
                .into_iter()
                .flat_map(|objects| objects.values())
                .map(|object| Change {
                    resource_version: inner.resource_version,
                    resource: resource.clone(),
                    kind: "ADDED",
                    object: object.clone(),
                    previous: None,
                })
                .collect()
        } else {
            inner
                .history
                .iter()
                .filter(|c| c.resource_version > params.resource_version)
                .filter(|c| &c.resource == resource)
                .cloned()
                .collect()
        };
        (replay, receiver)
    }

    /// Creates `object`. `namespace` comes from the path and wins over an empty one in the
    /// body; a different one in the body is refused.
    pub fn create(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Value, ApiError> {
        self.insert(&mut self.lock(), resource, namespace, object)
    }

    /// [`Store::create`] with the lock held.
    pub fn insert(
        &self,
        inner: &mut Inner,
        resource: &ResourceType,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let meta = object
            .get_mut("metadata")
            .filter(|m| m.is_object())
            .ok_or_else(|| ApiError::bad_request("the object has no metadata"))?;
        if meta["name"].as_str().is_none_or(str::is_empty) {
            let prefix = meta["generateName"]
                .as_str()
                .ok_or_else(|| ApiError::invalid("metadata.name or generateName is required"))?
                .to_owned();
            inner.uids += 1;
            meta["name"] = json!(format!("{prefix}{:05x}", inner.uids));
        }
        let key = key_of(namespace, &object)?;
        if object["apiVersion"].as_str().is_none() || object["kind"].as_str().is_none() {
            return Err(ApiError::bad_request("apiVersion and kind are required"));
        }
        let exists = inner
            .objects
            .get(resource)
            .is_some_and(|objects| objects.contains_key(&key));
        if exists {
            return Err(ApiError::already_exists(&describe(resource, &key)));
        }
        inner.uids += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", inner.uids);
        let meta = object["metadata"].as_object_mut().expect("checked above");
        for field in ["resourceVersion", "deletionTimestamp", "managedFields"] {
            meta.remove(field);
        }
        if !key.0.is_empty() {
            meta.insert("namespace".into(), json!(key.0));
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        Ok(self.store(inner, resource, &key, object, "ADDED", None))
    }

    /// Writes `object` at `key` with a new resourceVersion and publishes `kind`.
    pub fn store(
        &self,
        inner: &mut Inner,
        resource: &ResourceType,
        key: &ObjectKey,
        mut object: Value,
        kind: &'static str,
        previous: Option<Value>,
    ) -> Value {
        inner.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
        inner
            .objects
            .entry(resource.clone())
            .or_default()
            .insert(key.clone(), object.clone());
        let change = Change {
            resource_version: inner.resource_version,
            resource: resource.clone(),
            kind,
            object: object.clone(),
            previous,
        };
        self.publish(inner, change);
        object
    }
}

/// The object's key from the path's namespace and the body's name; refuses a body that names
/// another namespace.
pub fn key_of(namespace: Option<&str>, object: &Value) -> Result<ObjectKey, ApiError> {
    let name = object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid("metadata.name is required"))?;
    let body_ns = object["metadata"]["namespace"].as_str().unwrap_or("");
    let ns = match namespace {
        Some(ns) if !body_ns.is_empty() && body_ns != ns => {
            return Err(ApiError::bad_request(format!(
                "the namespace of the object ({body_ns}) does not match the URL ({ns})"
            )));
        }
        Some(ns) => ns,
        None => body_ns,
    };
    Ok((ns.to_owned(), name.to_owned()))
}

pub fn describe(resource: &ResourceType, (ns, name): &ObjectKey) -> String {
    if ns.is_empty() {
        format!("{} \"{name}\"", resource.plural)
    } else {
        format!("{} \"{ns}/{name}\"", resource.plural)
    }
}

/// Now, as a Kubernetes `Time` (RFC 3339, whole seconds).
pub fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}
