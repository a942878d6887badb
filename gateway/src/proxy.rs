//! Forwarding the storage API (`/put`, `/get`, `/versions`) to the owner (primary) of the key.
//!
//! Architecture Invariant: writes and version listings only ever go to the key's primary on
//! the current ring. When it is down the answer is a 503 naming it, never a detour to another
//! member: a write elsewhere would fork the key's versions (the seed did that and lost data).
//! Only a read of one version may go to the key's replicas, the other members of its
//! preference list, when the primary cannot answer (`replicas`).
//!
//! With a ring configuration known, every call names its epoch (`ring_sync`). A primary on a
//! newer ring refuses it (`409 stale_ring`, having done nothing) and the request is routed
//! once more on that ring: still only ever to the key's primary, on the ring in force. A
//! member that has not learned the ring yet refuses too (`503 ring_behind`, having done
//! nothing): the request waits a little and is routed again.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::{BodyExt, Limited};
use kv_common::body::{CHUNKED_ANSWER_MIN, Chunks};
use kv_common::replication::{ACKED_BY_HEADER, WRITE_QUORUM_HEADER};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::{Error, Result};
use crate::membership::Topology;
use crate::replicas;
use crate::ring_sync::KeyCall;
use crate::state::AppState;

/// Names the member that answered, on every proxied answer.
pub const SERVER_USED: HeaderName = HeaderName::from_static("x-server-used");

/// Everything but RFC 3986 unreserved characters is escaped, so a key is always exactly one
/// path segment on the way out (`a/b` becomes `a%2Fb`, `..` cannot climb, `?` cannot start a
/// query).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Tells the primary how many servers must hold a put's version before it answers.
const WRITE_QUORUM: HeaderName = HeaderName::from_static(WRITE_QUORUM_HEADER);

/// Answer headers worth passing on; the rest (server, date, location...) describe the member
/// and are the gateway's own business. `x-kv-acked-by` names the servers holding a put.
const PASSED_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::ALLOW,
    header::RETRY_AFTER,
    HeaderName::from_static(ACKED_BY_HEADER),
];

/// Which key route a request is for: each has its own rule for leaving the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Put,
    Get,
    Versions,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Route::Put => "put",
            Route::Get => "get",
            Route::Versions => "versions",
        }
    }
}

/// Store a new version of a key (compare-and-set with if_version).
#[utoipa::path(put, path = "/put/{key}", tag = "keys",
    params(("key" = String, Path, description = "The key, one percent-encoded path segment"),
           ("if_version" = Option<u64>, Query, description = "Only write if the latest version is this one (412 otherwise)")),
    request_body = kv_common::api::PutBody,
    responses((status = 200, description = "Stored on at least the write quorum of the key's replicas; `server_used` names the primary",
                  body = kv_common::api::PutResponse,
                  headers(("x-server-used" = String, description = "The key's primary, which assigned the version"),
                          ("x-kv-acked-by" = String, description = "The servers holding the version, primary first, comma-separated (replicated servers only)"))),
              (status = 409, description = "The primary is on a newer ring than the gateway even after the gateway learned its ring and \
                  routed the put once more (`stale_ring`): nothing was stored, retry", body = kv_common::ErrorBody),
              (status = 412, description = "`if_version` is not the latest", body = kv_common::ErrorBody),
              (status = 408, description = "The body did not arrive within the gateway's client timeout (`body_timeout`): nothing was stored; the connection is closed",
                  body = kv_common::ErrorBody),
              (status = 415, description = "The body has a `Content-Encoding` such as gzip (`unsupported_encoding`): bodies are read uncompressed only",
                  body = kv_common::ErrorBody, headers(("accept-encoding" = String, description = "`identity`"))),
              (status = 503, description = "The key's primary is down (`server_unavailable`, with `Retry-After`; the put is never sent to another server), \
                  still syncing a new database (`syncing`), or stored the version but too few replicas confirmed it in time \
                  (`quorum_failed`: the write is indeterminate, it may or may not become visible), or cannot reach enough replicas \
                  for the quorum (`quorum_unavailable`: nothing stored, retry); during a rebalance, the key's \
                  primary is moving (`rebalancing`) or the server has not learned the gateway's ring yet (`ring_behind`), both \
                  with `Retry-After` and nothing stored",
                  body = kv_common::ErrorBody,
                  headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
              (status = 507, description = "The primary's disk is full (`storage_full`): nothing was stored", body = kv_common::ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    // Only the content type travels on to the server: a compressed body would reach it as
    // bytes that are not JSON, and answer a puzzling `invalid_json`.
    if let Some(encoding) = kv_common::api::body_encoding(&headers) {
        return Err(Error::BodyEncoding(encoding));
    }
    // Read only once the body fits beside the others held (`BodyBudget`); its room is given
    // back when this answer is made.
    let _admitted = state.body_budget.admit(&headers).await;
    // A client that sends a head and then stalls must not hold the connection and this task.
    let collected = tokio::time::timeout(
        state.client_timeout,
        Limited::new(body, state.max_body_bytes).collect(),
    )
    .await
    .map_err(|_| Error::BodyTimeout(state.client_timeout.as_secs()))?;
    let body = collected
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::BodyTooLarge(state.max_body_bytes)
            } else {
                Error::BadBody(e.to_string())
            }
        })?
        .to_bytes();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    forward(
        &state,
        method,
        Route::Put,
        key,
        query,
        Some((body, content_type)),
    )
    .await
}

/// Store a new version of a key (the seed's method, same as PUT).
#[utoipa::path(post, path = "/put/{key}", tag = "keys",
    params(("key" = String, Path), ("if_version" = Option<u64>, Query)),
    request_body = kv_common::api::PutBody,
    responses((status = 200, body = kv_common::api::PutResponse)))]
#[allow(dead_code)] // Documentation only: the route is served by `put`.
fn put_post_doc() {}

/// Read the latest version of a key, or an exact version.
#[utoipa::path(get, path = "/get/{key}", tag = "keys",
    params(("key" = String, Path), ("version" = Option<u64>, Query, description = "A past version; the latest if absent")),
    responses((status = 200, description = "From the key's primary or, when it is down or still syncing, from the replica \
                  holding the highest version (for `?version=N`, the first replica holding it)",
                  body = kv_common::api::GetResponse,
                  headers(("x-server-used" = String, description = "The server that answered"),
                          ("x-kv-primary-unavailable" = String, description = "Only on an answer from a replica: the primary that could not answer"))),
              (status = 404, description = "No such key or version (only the primary says so)", body = kv_common::ErrorBody),
              (status = 503, description = "Neither the key's primary nor any of its replicas could answer (`server_unavailable`, \
                  naming the primary, with `Retry-After`): with the primary unreachable the gateway cannot tell \
                  \"no such key\" from \"not here yet\", so this is never a 404",
                  body = kv_common::ErrorBody,
                  headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
              (status = 504, description = "The key's primary did not answer in time (without replication)", body = kv_common::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    forward(&state, Method::GET, Route::Get, key, query, None).await
}

/// List a key's versions, oldest first, a page at a time (at most `limit`, and fewer once
/// the values reach 8 MiB: follow `next_after`).
#[utoipa::path(get, path = "/versions/{key}", tag = "keys",
    params(("key" = String, Path), ("after" = Option<u64>, Query), ("limit" = Option<u64>, Query)),
    responses((status = 200, description = "From the key's primary only: a page from a lagging replica could miss versions",
                  body = kv_common::api::VersionsResponse),
              (status = 404, body = kv_common::ErrorBody),
              (status = 503, description = "The key's primary is down (`server_unavailable`, with `Retry-After`) or still syncing (`syncing`)",
                  body = kv_common::ErrorBody)))]
pub async fn versions(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    forward(&state, Method::GET, Route::Versions, key, query, None).await
}

/// `/put/`, `/get/`, `/versions/`: a key route without a key.
pub async fn empty_key() -> Error {
    Error::EmptyKey
}

/// One key request, as the gateway sends it to members.
struct KeyRequest {
    method: Method,
    route: Route,
    key: String,
    /// Path and query on the member.
    path: String,
    body: Option<(Bytes, HeaderValue)>,
}

async fn forward(
    state: &AppState,
    method: Method,
    route: Route,
    key: Result<Path<String>, PathRejection>,
    query: Option<String>,
    body: Option<(Bytes, HeaderValue)>,
) -> Result<Response> {
    // The only rejection left once the route matched is a segment that is not UTF-8.
    let Path(key) = key.map_err(|e| Error::InvalidKey(e.body_text()))?;
    // The query passes through as the client wrote it: it only ever lands after the path, on
    // a member the ring chose for the key.
    let mut path = format!("/{}/{}", route.path(), utf8_percent_encode(&key, SEGMENT));
    if let Some(query) = query {
        path.push('?');
        path.push_str(&query);
    }
    let request = KeyRequest {
        method,
        route,
        key,
        path,
        body,
    };
    let topology = state.topology.load();
    let (mut answer, told) = route_once(state, &request, &topology).await;
    // A member on a newer ring refused the request without acting on it (a put stored
    // nothing) and gave its ring, now ours: route it once more, on that ring. Only once: a
    // ring moving again meanwhile is the client's to retry.
    let moved = state.topology.load();
    let mut told_behind = told.behind;
    if told.stale && failed(&answer) && moved.config_epoch() > topology.config_epoch() {
        state.client.metrics().stale_ring_retry(route.path());
        tracing::debug!(
            from = topology.epoch,
            to = moved.epoch,
            "request routed again on a newer ring"
        );
        let told;
        (answer, told) = route_once(state, &request, &moved).await;
        told_behind = told.behind;
    }
    // A request whose member has not learned the ring yet (the switch of a move reaches
    // the servers a few milliseconds apart, and one told the gateway first) waits for it:
    // the member refused before reading or storing anything (a put too: the ring epoch is
    // its first check), and is fetching the ring from its peers now. So the switch fails
    // no request; only the puts of moving keys pause, with `503 rebalancing`.
    for wait in RING_BEHIND_WAITS {
        if !(told_behind && failed(&answer)) {
            break;
        }
        state.client.metrics().ring_behind_retry(route.path());
        tokio::time::sleep(wait).await;
        let told;
        (answer, told) = route_once(state, &request, &state.topology.load()).await;
        told_behind = told.behind;
    }
    answer
}

/// How long a request answered `ring_behind` waits before each new try: a server learns a
/// ring within a gossip exchange, and about half a second in all stays under a client's
/// patience.
const RING_BEHIND_WAITS: [Duration; 4] = [
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
];

fn failed(answer: &Result<Response>) -> bool {
    answer.as_ref().map_or(true, |r| !r.status().is_success())
}

/// What the members told one routing of a request.
struct Told {
    /// A member answered `stale_ring`.
    stale: bool,
    /// A member answered `ring_behind`.
    behind: bool,
}

/// Routes `request` on `topology`; also says what the members told of their rings.
async fn route_once(
    state: &AppState,
    request: &KeyRequest,
    topology: &Topology,
) -> (Result<Response>, Told) {
    let call = KeyCall::new(state, topology);
    let answer = send_to_owners(state, request, topology, &call).await;
    let told = Told {
        stale: call.told_stale(),
        behind: call.told_behind(),
    };
    (answer, told)
}

async fn send_to_owners(
    state: &AppState,
    request: &KeyRequest,
    topology: &Topology,
    call: &KeyCall<'_>,
) -> Result<Response> {
    let (r, w) = state.replication(topology);
    if request.route == Route::Get {
        let members = topology.preference_list(&request.key, r);
        return replicas::get(state, call, &members, &request.path).await;
    }
    let backend = topology.owner(&request.key).ok_or(Error::NoServers)?;
    if backend.health.is_down() {
        state
            .client
            .metrics()
            .request(&backend.name, "rejected", None);
        return Err(Error::ServerDown {
            name: backend.name.clone(),
            retry_after_secs: state.retry_after_secs,
        });
    }
    let headers = match request.route {
        Route::Put => vec![(WRITE_QUORUM, HeaderValue::from(w))],
        Route::Get | Route::Versions => Vec::new(),
    };
    let response = call
        .send(
            backend,
            request.method.clone(),
            &request.path,
            request.body.clone(),
            &headers,
        )
        .await
        .map_err(|e| upstream_error(state, &backend.name, e))?;
    Ok(decorate(response, &backend.name))
}

/// Maps a failed call to the answer the client gets.
pub fn upstream_error(state: &AppState, name: &str, error: crate::client::CallError) -> Error {
    use crate::client::CallError;
    let name = name.to_owned();
    match error {
        CallError::Connect(_) => Error::ServerDown {
            name,
            retry_after_secs: state.retry_after_secs,
        },
        CallError::Timeout(_) => Error::ServerTimeout { name },
        other => Error::BadGateway {
            name,
            source: other,
        },
    }
}

/// Builds the client's answer from a member's: same status and body, `server_used` added to
/// a JSON object body and the `X-Server-Used` header set.
pub fn decorate(response: http::Response<Bytes>, name: &str) -> Response {
    let (parts, body) = response.into_parts();
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body = match is_json.then(|| server_used_field(&body, name)).flatten() {
        // A large answer is sent as it came, with the field between its two parts.
        Some((at, field)) if body.len() >= CHUNKED_ANSWER_MIN => {
            let (before, after) = (body.slice(..at), body.slice(at..));
            Body::new(Chunks::new([before, Bytes::from(field), after]))
        }
        Some((at, field)) => {
            let mut out = Vec::with_capacity(body.len() + field.len());
            out.extend_from_slice(&body[..at]);
            out.extend_from_slice(&field);
            out.extend_from_slice(&body[at..]);
            Body::from(out)
        }
        None => Body::from(body),
    };
    let mut out = (parts.status, body).into_response();
    let headers = out.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    for name in PASSED_HEADERS {
        for value in parts.headers.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(name) {
        headers.insert(SERVER_USED, value);
    }
    out
}

/// Where and what to insert to add `"server_used": name` to a JSON object, as text: parsing
/// into a `Value` and back would round big integers and reorder nothing useful. `None` when
/// `body` is not framed as a JSON object (`{` ... `}`), which is then passed on untouched.
///
/// The body is not parsed: it comes from a member, whose JSON answers serde wrote, and JSON
/// that starts with `{` is one object, closed by its last `}`. Checking it cost the gateway a
/// quarter of its CPU per read of a 256 KiB value (a scan of every byte, docs/benchmarks.md);
/// a body that is not JSON stays not JSON either way.
fn server_used_field(body: &[u8], name: &str) -> Option<(usize, Vec<u8>)> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    let end = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if start == end || body[start] != b'{' || body[end] != b'}' {
        return None;
    }
    let empty = body[start + 1..end].iter().all(u8::is_ascii_whitespace);
    let mut field = Vec::with_capacity(name.len() + 24);
    if !empty {
        field.push(b',');
    }
    field.extend_from_slice(b"\"server_used\":");
    serde_json::to_writer(&mut field, name).ok()?;
    Some((end, field))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decorated(body: &str) -> Option<String> {
        let (at, field) = server_used_field(body.as_bytes(), "kv-1")?;
        let field = String::from_utf8(field).unwrap();
        Some(format!("{}{field}{}", &body[..at], &body[at..]))
    }

    #[test]
    fn server_used_is_appended_to_objects_only() {
        assert_eq!(
            decorated(r#"{"value":12345678901234567890123,"version":1}"#).unwrap(),
            r#"{"value":12345678901234567890123,"version":1,"server_used":"kv-1"}"#
        );
        assert_eq!(
            decorated(" {} \n").unwrap(),
            " {\"server_used\":\"kv-1\"} \n"
        );
        assert_eq!(decorated("[1,2]"), None);
        assert_eq!(decorated("\"text\""), None);
        assert_eq!(decorated("{"), None);
        assert_eq!(decorated("}"), None);
        assert_eq!(decorated(" \n"), None);
        assert_eq!(decorated(""), None);
        // A value holding braces and escapes: the object's own last brace takes the field.
        assert_eq!(
            decorated(r#"{"value":"}\"{","version":2}"#).unwrap(),
            r#"{"value":"}\"{","version":2,"server_used":"kv-1"}"#
        );
    }

    #[test]
    fn keys_are_one_escaped_segment() {
        let enc = |k: &str| utf8_percent_encode(k, SEGMENT).to_string();
        assert_eq!(enc("a/b"), "a%2Fb");
        assert_eq!(enc("with space"), "with%20space");
        assert_eq!(enc("été"), "%C3%A9t%C3%A9");
        assert_eq!(enc("a?b#c%d"), "a%3Fb%23c%25d");
        assert_eq!(enc("user:1"), "user%3A1");
        assert_eq!(enc("A-z_0.9~"), "A-z_0.9~");
    }

    #[test]
    fn decorate_keeps_status_and_content_type_and_drops_member_headers() {
        let response = http::Response::builder()
            .status(404)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::SERVER, "kv-server")
            .body(Bytes::from_static(
                br#"{"detail":"x","code":"key_not_found"}"#,
            ))
            .unwrap();
        let out = decorate(response, "kv-1");
        assert_eq!(out.status(), 404);
        assert_eq!(out.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(out.headers()[SERVER_USED], "kv-1");
        assert!(out.headers().get(header::SERVER).is_none());
    }
}
