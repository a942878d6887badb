//! `GET /admin/snapshot?server=NAME`: a member's consistent database snapshot, streamed
//! through (never buffered, so no size limit applies: snapshots can be large).
//!
//! Who may call it: when an API token is configured, only callers presenting it (the `auth`
//! layer covers this route like every other but the probes). With authentication off, the
//! route is exactly as open as the key routes, which already read every value.
//!
//! Architecture Invariant (as in `stats`): `server` only selects a ring member by name; the
//! URL contacted is that member's, with a fixed path.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, header};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::client::CallError;
use crate::error::{Error, Result};
use crate::proxy::{SERVER_USED, upstream_error};
use crate::state::AppState;

/// The member copies its database before it answers: allow that much time for the headers.
/// The body then streams for as long as it takes.
pub const HEADERS_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Member answer headers passed on: the snapshot's description.
const PASSED: [&str; 7] = [
    "content-type",
    "content-length",
    "x-snapshot-keys",
    "x-snapshot-versions",
    "x-snapshot-sha256",
    "x-snapshot-node",
    "retry-after",
];

#[derive(Debug, Deserialize, IntoParams)]
pub struct SnapshotQuery {
    /// Name of the member, as listed by `/servers` (required).
    server: Option<String>,
}

/// A consistent snapshot of one member's database (a SQLite file), streamed.
#[utoipa::path(get, path = "/admin/snapshot", tag = "cluster", params(SnapshotQuery),
    responses((status = 200, description = "The member's database as of one commit; \
                 `X-Snapshot-Keys`, `X-Snapshot-Versions` and `X-Snapshot-Sha256` describe it",
                 content_type = "application/vnd.sqlite3"),
              (status = 400, description = "`server` missing or not a member", body = kv_common::ErrorBody),
              (status = 401, description = "API token required", body = kv_common::ErrorBody),
              (status = 503, body = kv_common::ErrorBody)))]
pub async fn snapshot(
    State(state): State<AppState>,
    query: Result<Query<SnapshotQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| Error::InvalidQuery(e.body_text()))?;
    let backend = crate::stats::member(&state, query.server)?;
    let name = backend.name.clone();
    let uri = backend
        .url
        .join("/admin/snapshot")
        .map_err(|e| upstream_error(&state, &name, CallError::Transport(e.into())))?;
    // Its own client: the pooled one reads whole answers under a size limit and a timeout.
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let request = Request::get(uri)
        .body(Empty::new())
        .map_err(|e| upstream_error(&state, &name, CallError::Transport(e.into())))?;
    let answer = tokio::time::timeout(HEADERS_TIMEOUT, client.request(request))
        .await
        .map_err(|_| upstream_error(&state, &name, CallError::Timeout(HEADERS_TIMEOUT)))?
        .map_err(|e| {
            let error = if e.is_connect() {
                CallError::Connect(e.into())
            } else {
                CallError::Transport(e.into())
            };
            upstream_error(&state, &name, error)
        })?;
    let (parts, body) = answer.into_parts();
    tracing::info!(server = %name, status = %parts.status, "snapshot streamed");
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = parts.status;
    let headers = response.headers_mut();
    for passed in PASSED {
        if let Some(value) = parts.headers.get(passed) {
            headers.insert(HeaderName::from_static(passed), value.clone());
        }
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    if let Ok(value) = HeaderValue::from_str(&name) {
        headers.insert(SERVER_USED, value);
    }
    Ok(response)
}
