//! Updates, as the real API server does them: `metadata.uid`, `creationTimestamp`,
//! `namespace` and `name` are the server's; `resourceVersion` goes up on every change (and
//! only then: a write that changes nothing is no write, no event); `generation` starts at 1
//! and goes up when anything outside `metadata` and `status` changes; `status` is written only
//! through the `status` subresource (but a create keeps it, which seeds fixtures easily), and
//! the `status` subresource writes nothing else. A write carrying a `metadata.resourceVersion`
//! that is not the current one fails with 409 (optimistic concurrency). A write that empties
//! the finalizers of an object being deleted removes it.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::path::ResourceType;
use crate::store::{Inner, ObjectKey, Store, describe, key_of};

impl Store {
    /// Creates `object`, or replaces it (status included) when it exists: for fixtures and the
    /// simulator, which play controllers that own these objects outright.
    pub fn upsert(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = key_of(namespace, &object)?;
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        let exists = inner
            .objects
            .get(resource)
            .is_some_and(|objects| objects.contains_key(&key));
        if !exists {
            return self.insert(&mut inner, resource, namespace, object);
        }
        self.update(&mut inner, resource, &key, object.clone(), false)?;
        self.update(&mut inner, resource, &key, object, true)
    }

    /// Replaces the object at `key` with `next` after restoring what a write may not change
    /// (see the module doc); `status_only` for the status subresource. No change, no write.
    pub fn update(
        &self,
        inner: &mut Inner,
        resource: &ResourceType,
        key: &ObjectKey,
        mut next: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let old = inner
            .objects
            .get(resource)
            .and_then(|objects| objects.get(key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&describe(resource, key)))?;
        check_version(&old, &next)?;
        if status_only {
            let status = next.get("status").cloned();
            next = old.clone();
            set_or_remove(&mut next, "status", status);
        } else {
            if next["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n != key.1)
            {
                return Err(ApiError::bad_request(
                    "metadata.name does not match the URL",
                ));
            }
            if !next["metadata"].is_object() {
                next["metadata"] = json!({});
            }
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                let kept = old["metadata"].get(field).cloned();
                set_or_remove(&mut next["metadata"], field, kept);
            }
            set_or_remove(&mut next, "status", old.get("status").cloned());
            for field in ["apiVersion", "kind"] {
                if next.get(field).is_none() {
                    next[field] = old[field].clone();
                }
            }
            if body_of(&next) != body_of(&old) {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
                next["metadata"]["generation"] = json!(generation + 1);
            }
        }
        next["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if next == old {
            return Ok(old);
        }
        let deleting = next["metadata"].get("deletionTimestamp").is_some();
        let finalizers_left = next["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers_left {
            return Ok(crate::gc::remove(self, inner, resource, key, next, false));
        }
        Ok(self.store(inner, resource, key, next, "MODIFIED", Some(old)))
    }
}

/// A write naming a resourceVersion must name the current one.
fn check_version(current: &Value, next: &Value) -> Result<(), ApiError> {
    match next["metadata"]["resourceVersion"].as_str() {
        Some(v) if !v.is_empty() && Some(v) != current["metadata"]["resourceVersion"].as_str() => {
            Err(ApiError::conflict(format!(
                "the object has been modified (resourceVersion {v} is not the latest); \
                 read it again and retry"
            )))
        }
        _ => Ok(()),
    }
}

/// Everything outside `metadata` and `status`: what `generation` counts changes of.
fn body_of(object: &Value) -> Value {
    let mut body = object.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    body
}

fn set_or_remove(object: &mut Value, field: &str, value: Option<Value>) {
    if let Some(map) = object.as_object_mut() {
        match value {
            Some(v) => map.insert(field.to_owned(), v),
            None => map.remove(field),
        };
    }
}
