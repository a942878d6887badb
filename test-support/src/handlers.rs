//! The REST verbs over the store: get, list, watch, create, replace, patch (JSON, merge,
//! strategic-as-merge, apply), delete and deletecollection, on objects and on their `status`
//! subresource. Any resource type is served (there is no discovery and no schema: an unknown
//! CRD is not a 404), every request is allowed (no authentication, RBAC or admission), and
//! nothing is validated beyond what the fake needs to find and version objects.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::patch::{self, PatchKind};
use crate::path::Target;
use crate::query::Params;
use crate::store::{ObjectKey, Store};

/// The one handler of the fake's router.
pub async fn handle(
    State(store): State<Arc<Store>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = Params::parse(uri.query().unwrap_or(""))
        .map_err(ApiError::bad_request)
        .and_then(|params| {
            let target = Target::parse(uri.path())
                .ok_or_else(|| ApiError::not_found(&format!("the path {}", uri.path())))?;
            dispatch(&store, &method, target, params, &headers, &body)
        });
    match result {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%method, %uri, %error, "fake API server refused a request");
            error.into_response()
        }
    }
}

fn dispatch(
    store: &Arc<Store>,
    method: &Method,
    target: Target,
    params: Params,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let status_only = match target.subresource.as_deref() {
        None => false,
        Some("status") => true,
        Some(other) => {
            return Err(ApiError::not_found(&format!(
                "the subresource {other} (only status is served)"
            )));
        }
    };
    let resource = &target.resource;
    let namespace = target.namespace.as_deref();
    let Some(name) = target.name.clone() else {
        return match *method {
            Method::GET if params.watch => Ok(crate::watch::stream(store, &target, params)),
            Method::GET => Ok(list(store, &target, &params)),
            Method::POST => {
                let created = store.create(resource, namespace, parse(body)?)?;
                Ok((StatusCode::CREATED, Json(created)).into_response())
            }
            Method::DELETE => {
                let (items, _) = store.list(resource, namespace, &params);
                let orphan = orphans(&params, body);
                let mut deleted = Vec::new();
                for item in items {
                    let key = crate::store::key_of(namespace, &item)?;
                    deleted.push(crate::gc::delete(store, resource, &key, orphan)?);
                }
                Ok(
                    Json(json!({ "apiVersion": "v1", "kind": "List", "metadata": {},
                                "items": deleted }))
                    .into_response(),
                )
            }
            _ => Err(ApiError::method_not_allowed(format!(
                "{method} on a collection"
            ))),
        };
    };
    let key: ObjectKey = (namespace.unwrap_or("").to_owned(), name);
    let object = match *method {
        Method::GET => store.get(resource, &key)?,
        Method::PUT => {
            let mut inner = store.lock();
            store.update(&mut inner, resource, &key, parse(body)?, status_only)?
        }
        Method::PATCH => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = PatchKind::from_content_type(content_type).ok_or_else(|| {
                ApiError::unsupported(format!("unsupported patch type {content_type:?}"))
            })?;
            let (object, created) = patch_object(
                store,
                &target,
                &key,
                kind,
                parse(body)?,
                &params,
                status_only,
            )?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            return Ok((code, Json(object)).into_response());
        }
        Method::DELETE => crate::gc::delete(store, resource, &key, orphans(&params, body))?,
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{method} on an object"
            )));
        }
    };
    Ok(Json(object).into_response())
}

fn list(store: &Store, target: &Target, params: &Params) -> Response {
    let (items, resource_version) =
        store.list(&target.resource, target.namespace.as_deref(), params);
    Json(json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": { "resourceVersion": resource_version.to_string() },
        "items": items,
    }))
    .into_response()
}

/// PATCH in its four flavours; returns the object and whether an apply created it.
fn patch_object(
    store: &Store,
    target: &Target,
    key: &ObjectKey,
    kind: PatchKind,
    body: Value,
    params: &Params,
    status_only: bool,
) -> Result<(Value, bool), ApiError> {
    let resource = &target.resource;
    let mut inner = store.lock();
    let live = inner
        .objects
        .get(resource)
        .and_then(|objects| objects.get(key))
        .cloned();
    if kind != PatchKind::Apply {
        let mut next =
            live.ok_or_else(|| ApiError::not_found(&crate::store::describe(resource, key)))?;
        match kind {
            PatchKind::Json => patch::json_patch(&mut next, &body).map_err(ApiError::invalid)?,
            _ => patch::merge_patch(&mut next, &body),
        }
        return Ok((
            store.update(&mut inner, resource, key, next, status_only)?,
            false,
        ));
    }

    let manager = params
        .field_manager
        .clone()
        .ok_or_else(|| ApiError::bad_request("fieldManager is required for apply patch"))?;
    if body["apiVersion"].as_str().is_none() || body["kind"].as_str().is_none() {
        return Err(ApiError::bad_request("apiVersion and kind must be set"));
    }
    if body["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != key.1)
    {
        return Err(ApiError::bad_request(
            "metadata.name does not match the URL",
        ));
    }
    // What this manager states: the status alone through `/status`, all but status otherwise.
    let mut applied = body.clone();
    if let Some(map) = applied.as_object_mut() {
        if status_only {
            map.retain(|k, _| k == "status");
        } else {
            map.remove("status");
        }
    }
    if let Some(meta) = applied["metadata"].as_object_mut() {
        for field in ["uid", "creationTimestamp", "generation", "managedFields"] {
            meta.remove(field);
        }
    }
    let memo = (resource.clone(), key.clone(), manager, status_only);
    let forget_version = |v: &Value| {
        let mut v = v.clone();
        if let Some(meta) = v["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        v
    };
    let Some(live) = live else {
        if status_only {
            return Err(ApiError::not_found(&crate::store::describe(resource, key)));
        }
        let mut object = applied.clone();
        object["metadata"]["name"] = json!(key.1);
        let namespace = target.namespace.as_deref();
        let created = store.insert(&mut inner, resource, namespace, object)?;
        inner.applied.insert(memo, forget_version(&applied));
        return Ok((created, true));
    };
    let last = inner.applied.get(&memo).cloned().unwrap_or(Value::Null);
    let mut next = live;
    patch::apply(&mut next, &last, &applied);
    let updated = store.update(&mut inner, resource, key, next, status_only)?;
    inner.applied.insert(memo, forget_version(&applied));
    Ok((updated, false))
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// `propagationPolicy=Orphan`, from the query or the `DeleteOptions` body.
fn orphans(params: &Params, body: &[u8]) -> bool {
    let from_body = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["propagationPolicy"].as_str().map(str::to_owned));
    params.propagation_policy.clone().or(from_body).as_deref() == Some("Orphan")
}
