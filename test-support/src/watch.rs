//! Watch streams: newline-delimited JSON events (`{"type":"ADDED","object":{...}}`), first the
//! changes after the requested `resourceVersion` (or, for version `0`/none, the current
//! objects as `ADDED`), then live ones. An object whose labels stop (start) matching the
//! selector is reported `DELETED` (`ADDED`), as the real API server does. The stream ends
//! after `timeoutSeconds`, or if the watcher falls too far behind, and the client simply
//! watches again from the last version it saw. No `BOOKMARK` events are sent (they are best
//! effort in the real API too), and no `410 Gone` either: the history is never compacted.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::broadcast;

use crate::path::Target;
use crate::query::Params;
use crate::store::{Change, Store};

pub fn stream(store: &Store, target: &Target, params: Params) -> Response {
    let (replay, receiver) = store.watch_from(&target.resource, &params);
    let live = futures::stream::unfold(receiver, |mut receiver| async move {
        match receiver.recv().await {
            Ok(change) => Some((change, receiver)),
            // Lagged: end the stream; the client re-watches from its last version and the
            // history fills the gap.
            Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => {
                None
            }
        }
    });
    let timeout = Duration::from_secs(params.timeout_seconds.unwrap_or(1800));
    let target = target.clone();
    let lines = futures::stream::iter(replay)
        .chain(live)
        .take_until(tokio::time::sleep(timeout))
        .filter_map(move |change| {
            let line = event(&change, &target, &params).map(|kind| {
                let mut line = json!({ "type": kind, "object": change.object }).to_string();
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

/// The event type this watch sees for `change`, if any.
fn event(change: &Change, target: &Target, params: &Params) -> Option<&'static str> {
    if change.resource != target.resource {
        return None;
    }
    let namespace = change.object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("");
    if target
        .namespace
        .as_deref()
        .is_some_and(|ns| ns != namespace)
    {
        return None;
    }
    if let Some(name) = &target.name
        && change.object["metadata"]["name"].as_str() != Some(name)
    {
        return None;
    }
    let now = params.selects(&change.object);
    if change.kind != "MODIFIED" {
        return now.then_some(change.kind);
    }
    let before = change.previous.as_ref().is_none_or(|p| params.selects(p));
    match (before, now) {
        (true, true) => Some("MODIFIED"),
        (false, true) => Some("ADDED"),
        (true, false) => Some("DELETED"),
        (false, false) => None,
    }
}
