//! Deletion: finalizers and the owner-reference cascade (the garbage collector's job).
//!
//! - An object with finalizers is not removed: it gets `metadata.deletionTimestamp` and stays
//!   until a write empties its finalizers, which removes it.
//! - When an object is removed, its dependents (objects whose `ownerReferences` name its uid)
//!   whose owners are all gone are deleted in turn (which again respects their finalizers),
//!   transitively. `propagationPolicy=Orphan` instead strips the owner reference from them.
//!   `Foreground` is treated as `Background`: the owner goes first, without waiting for its
//!   dependents, and no `foregroundDeletion` finalizer is added.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::path::ResourceType;
use crate::store::{Inner, ObjectKey, Store, describe, now};

/// DELETE of one object. Returns the object as it is now (marked for deletion, or removed).
pub fn delete(
    store: &Store,
    resource: &ResourceType,
    key: &ObjectKey,
    orphan: bool,
) -> Result<Value, ApiError> {
    let mut inner = store.lock();
    let object = inner
        .objects
        .get(resource)
        .and_then(|objects| objects.get(key))
        .cloned()
        .ok_or_else(|| ApiError::not_found(&describe(resource, key)))?;
    Ok(delete_object(
        store, &mut inner, resource, key, object, orphan,
    ))
}

fn delete_object(
    store: &Store,
    inner: &mut Inner,
    resource: &ResourceType,
    key: &ObjectKey,
    object: Value,
    orphan: bool,
) -> Value {
    let has_finalizers = object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if !has_finalizers {
        return remove(store, inner, resource, key, object, orphan);
    }
    if orphan {
        strip_owner(
            store,
            inner,
            object["metadata"]["uid"].as_str().unwrap_or(""),
        );
    }
    if object["metadata"].get("deletionTimestamp").is_some() {
        return object;
    }
    let mut marked = object.clone();
    marked["metadata"]["deletionTimestamp"] = json!(now());
    marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    store.store(inner, resource, key, marked, "MODIFIED", Some(object))
}

/// Removes the object for good, then collects its dependents. Returns it as last seen.
pub fn remove(
    store: &Store,
    inner: &mut Inner,
    resource: &ResourceType,
    key: &ObjectKey,
    object: Value,
    orphan: bool,
) -> Value {
    if let Some(objects) = inner.objects.get_mut(resource) {
        objects.remove(key);
    }
    inner
        .applied
        .retain(|(r, k, _, _), _| !(r == resource && k == key));
    inner.resource_version += 1;
    let mut object = object;
    object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
    let change = crate::store::Change {
        resource_version: inner.resource_version,
        resource: resource.clone(),
        kind: "DELETED",
        object: object.clone(),
        previous: None,
    };
    store.publish(inner, change);
    let uid = object["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    if orphan {
        strip_owner(store, inner, &uid);
    } else {
        collect(store, inner, &uid);
    }
    object
}

/// Deletes the dependents of the removed `uid` that have no living owner left.
fn collect(store: &Store, inner: &mut Inner, uid: &str) {
    let living: HashSet<String> = inner
        .objects
        .values()
        .flat_map(|objects| objects.values())
        .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
        .collect();
    let orphans: Vec<(ResourceType, ObjectKey, Value)> = inner
        .objects
        .iter()
        .flat_map(|(resource, objects)| {
            objects
                .iter()
                .map(move |(key, object)| (resource, key, object))
        })
        .filter(|(_, _, object)| {
            let owners = owner_uids(object);
            owners.iter().any(|o| o == uid) && owners.iter().all(|o| !living.contains(o))
        })
        .filter(|(_, _, object)| object["metadata"].get("deletionTimestamp").is_none())
        .map(|(r, k, o)| (r.clone(), k.clone(), o.clone()))
        .collect();
    for (resource, key, object) in orphans {
        delete_object(store, inner, &resource, &key, object, false);
    }
}

/// Removes owner references to `uid` (orphaning).
fn strip_owner(store: &Store, inner: &mut Inner, uid: &str) {
    let dependents: Vec<(ResourceType, ObjectKey, Value)> = inner
        .objects
        .iter()
        .flat_map(|(r, objects)| objects.iter().map(move |(k, o)| (r, k, o)))
        .filter(|(_, _, o)| owner_uids(o).iter().any(|o| o == uid))
        .map(|(r, k, o)| (r.clone(), k.clone(), o.clone()))
        .collect();
    for (resource, key, object) in dependents {
        let mut next = object.clone();
        if let Some(refs) = next["metadata"]["ownerReferences"].as_array_mut() {
            refs.retain(|r| r["uid"].as_str() != Some(uid));
        }
        store.store(inner, &resource, &key, next, "MODIFIED", Some(object));
    }
}

fn owner_uids(object: &Value) -> Vec<String> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
