//! Route handlers: check the request, call the store, shape the answer.

use std::fmt::Write as _;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kv_common::ErrorCode;
use kv_common::api::{
    ADDRESSEE_HEADER, CacheStats, DbStats, Operation, PutResponse, VersionEntry, VersionsResponse,
};
use kv_common::body::{CHUNKED_ANSWER_MIN, Chunks, shared_text};
use kv_common::replication::{ACKED_BY_HEADER, HealthBody, WRITE_QUORUM_HEADER};
use kv_common::ring_config::RING_EPOCH_HEADER;
use serde_json::value::RawValue;

use super::AppState;
use super::error::ApiError;
use super::extract::{self, KeyPath, Params, QueryParams};
use crate::store::{PutRequest, ReadSource, Versioned};

/// Most versions one `/versions` page returns.
pub const MAX_PAGE: u64 = 1000;
const DEFAULT_PAGE: u64 = 100;

/// Store a new version of a key.
#[utoipa::path(
    put, path = "/put/{key}", tag = "keys",
    params(
        ("key" = String, Path, description = "Any UTF-8 text, percent-encoded, 1 to 1024 bytes"),
        ("if_version" = Option<u64>, Query, description = "Store only if the latest version is this; 0 = only if the key does not exist"),
        ("x-kv-write-quorum" = Option<u64>, Header, description = "Replication: servers that must hold the version before the answer (the gateway sends it)"),
        ("x-kv-ring-epoch" = Option<u64>, Header, description = "Rebalancing: the ring epoch the gateway routed by; checked against the server's"),
        ("x-kv-to" = Option<String>, Header, description = "Replication: the server the gateway means to reach; another name is refused (`wrong_server`)"),
    ),
    request_body = kv_common::api::PutBody,
    responses(
        (status = 200, description = "Stored", body = PutResponse,
            headers(("x-kv-acked-by" = String, description = "Replication: the servers holding the version, primary first"))),
        (status = 400, description = "Invalid JSON (a lone surrogate `\\u` escape in a string too), empty key or bad parameter", body = kv_common::ErrorBody),
        (status = 412, description = "`if_version` did not match", body = kv_common::ErrorBody),
        (status = 413, description = "Value over the size limit", body = kv_common::ErrorBody),
        (status = 414, description = "Key over 1024 bytes", body = kv_common::ErrorBody),
        (status = 415, description = "The body has a `Content-Encoding` such as gzip (`unsupported_encoding`): bodies are read uncompressed only", body = kv_common::ErrorBody,
            headers(("accept-encoding" = String, description = "`identity`"))),
        (status = 409, description = "Rebalancing: `x-kv-ring-epoch` is older than the server's ring (`stale_ring`; the body's `ring` is the server's current ring configuration)", body = kv_common::ErrorBody),
        (status = 421, description = "Replication: this server is not the key's primary (`not_primary`), or `x-kv-to` names another server (`wrong_server`: nothing stored)", body = kv_common::ErrorBody),
        (status = 503, description = "Replication: a new database still catching up (`syncing`), or the version was stored here but too few replicas confirmed it in time (`quorum_failed`: the write is uncertain), or too few of the key's replicas answer this server to make the quorum (`quorum_unavailable`: nothing stored, retry); rebalancing: the key's primary is moving (`rebalancing`) or `x-kv-ring-epoch` is newer than the server's ring (`ring_behind`)", body = kv_common::ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait"))),
        (status = 422, description = "Body is not an object with a `value`, or the value is nested deeper than 100 arrays and objects, or has a non-finite number", body = kv_common::ErrorBody),
        (status = 507, description = "The server's disk is full (`storage_full`): nothing was stored", body = kv_common::ErrorBody),
    )
)]
pub async fn put(
    State(state): State<AppState>,
    path: KeyPath,
    params: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_addressee(&state, &headers)?;
    let key = extract::key(path)?;
    let if_version = QueryParams::from(params)?.count("if_version")?;
    if let Some(encoding) = kv_common::api::body_encoding(&headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedEncoding,
            kv_common::api::body_encoding_detail(&encoding),
        ));
    }
    let value = extract::put_value(body, state.config.max_value_bytes)?;
    // Replicated: only the key's primary under the ring in force assigns versions, not while
    // the key is moving (frozen), and not before it has caught up.
    let epoch = ring_epoch(&headers)?;
    let asked_quorum = write_quorum(&headers)?;
    let permit = match &state.replication {
        Some(replication) => Some(replication.admit_put(&key, epoch, asked_quorum).await?),
        None => None,
    };
    let outcome = state
        .store
        .put(PutRequest {
            key: key.as_str().into(),
            value: value.clone(),
            if_version,
        })
        .await?;
    let acked_by = match (&state.replication, permit) {
        (Some(replication), Some(permit)) => {
            let committed = permit.committed();
            let stored = Versioned {
                version: outcome.version,
                value,
                timestamp: outcome.timestamp,
            };
            Some(
                replication
                    .replicate(&committed.placement, &key, &stored, committed.quorum)
                    .await?,
            )
        }
        _ => None,
    };
    let mut response = Json(PutResponse {
        operation: if outcome.previous_version.is_none() {
            Operation::Create
        } else {
            Operation::Update
        },
        key,
        version: outcome.version,
        new_version: outcome.version,
        previous_version: outcome.previous_version,
        total_versions: outcome.total_versions,
        timestamp: outcome.timestamp,
    })
    .into_response();
    if let Some(acked_by) = acked_by
        && let Ok(value) = HeaderValue::from_str(&acked_by.join(","))
    {
        response.headers_mut().insert(ACKED_BY_HEADER, value);
    }
    Ok(response)
}

/// The `x-kv-write-quorum` header of a put, if any.
fn write_quorum(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(raw) = headers.get(WRITE_QUORUM_HEADER) else {
        return Ok(None);
    };
    raw.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|w| *w >= 1)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidQuery,
                format!("Invalid {WRITE_QUORUM_HEADER} header: expected a whole number from 1"),
            )
        })
}

/// A replicated server refuses a key request meant for another member (`x-kv-to`,
/// [`ADDRESSEE_HEADER`]), before it reads or stores anything. A standalone server's name is a
/// label, which need not match the gateway's name for it.
fn check_addressee(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let me = &state.config.node_name;
    match (&state.replication, headers.get(ADDRESSEE_HEADER)) {
        (Some(_), Some(to)) if to.as_bytes() != me.as_bytes() => {
            let to = String::from_utf8_lossy(to.as_bytes());
            Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                ErrorCode::WrongServer,
                format!("This is server {me}, not {to}: the address used for {to} reaches {me}"),
            ))
        }
        _ => Ok(()),
    }
}

/// The `x-kv-ring-epoch` header: the ring epoch the gateway routed by, if any.
fn ring_epoch(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(raw) = headers.get(RING_EPOCH_HEADER) else {
        return Ok(None);
    };
    raw.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidQuery,
                format!("Invalid {RING_EPOCH_HEADER} header: expected a whole number from 0"),
            )
        })
}

/// Same as `PUT /put/{key}` (the seed's method).
#[utoipa::path(
    post, path = "/put/{key}", tag = "keys",
    params(("key" = String, Path), ("if_version" = Option<u64>, Query)),
    request_body = kv_common::api::PutBody,
    responses((status = 200, description = "Stored", body = PutResponse))
)]
pub async fn post(
    state: State<AppState>,
    path: KeyPath,
    params: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    put(state, path, params, headers, body).await
}

/// Read the latest version of a key, or exactly `?version=N`.
#[utoipa::path(
    get, path = "/get/{key}", tag = "keys",
    params(
        ("key" = String, Path),
        ("version" = Option<u64>, Query, description = "An exact version, 1 or more"),
        ("x-kv-ring-epoch" = Option<u64>, Header, description = "Rebalancing: the ring epoch the gateway routed by"),
    ),
    responses(
        (status = 200, description = "Found", body = kv_common::api::GetResponse),
        (status = 400, description = "Bad version or key", body = kv_common::ErrorBody),
        (status = 404, description = "No such key or version", body = kv_common::ErrorBody),
        (status = 409, description = "`stale_ring`: older `x-kv-ring-epoch` than the server's; `ring` in the body", body = kv_common::ErrorBody),
        (status = 503, description = "`syncing`, or `ring_behind` (newer `x-kv-ring-epoch`)", body = kv_common::ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    path: KeyPath,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = extract::key(path)?;
    let version = QueryParams::from(params)?.version()?;
    admit_read(&state, &headers)?;
    let (found, source) = state.store.get(&key, version).await?;
    if found.value.len() >= CHUNKED_ANSWER_MIN {
        // A large value is sent from where it is held (the cache's or the read's copy),
        // between the two small pieces of JSON around it, instead of copied into a new buffer.
        let body = Chunks::new([
            Bytes::from_static(GET_BODY_START.as_bytes()),
            shared_text(found.value.clone()),
            Bytes::from({
                let mut after = String::with_capacity(80);
                write_after_value(&mut after, &found, source);
                after
            }),
        ]);
        return Ok(json_response(axum::body::Body::new(body)));
    }
    Ok(json_response(get_body(&found, source)))
}

/// What precedes the value in a GET's body.
const GET_BODY_START: &str = "{\"value\":";

/// The body of a GET, written by hand so the stored JSON text is sent as it is, without
/// parsing and re-serializing it on every read.
fn get_body(v: &Versioned, source: ReadSource) -> String {
    let mut out = String::with_capacity(v.value.len() + 80);
    out.push_str(GET_BODY_START);
    out.push_str(&v.value);
    write_after_value(&mut out, v, source);
    out
}

/// What follows the value in a GET's body.
fn write_after_value(out: &mut String, v: &Versioned, source: ReadSource) {
    let source = match source {
        ReadSource::Cache => "cache",
        ReadSource::Database => "database",
    };
    // f64's Display never uses exponents and timestamps are finite: always valid JSON.
    let _ = write!(
        out,
        ",\"version\":{},\"timestamp\":{},\"source\":\"{source}\"}}",
        v.version, v.timestamp
    );
}

/// A request routed by another ring epoch is refused; a new database may lack versions its
/// peers hold: it answers nothing until it caught up.
fn admit_read(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    check_addressee(state, headers)?;
    let epoch = ring_epoch(headers)?;
    match &state.replication {
        Some(replication) => Ok(replication.admit_read(epoch)?),
        None => Ok(()),
    }
}

fn json_response(body: impl Into<axum::body::Body>) -> Response {
    let body: axum::body::Body = body.into();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// List a key's versions, oldest first, a page at a time (at most `limit`, and fewer once
/// the values reach 8 MiB: follow `next_after`).
#[utoipa::path(
    get, path = "/versions/{key}", tag = "keys",
    params(
        ("key" = String, Path),
        ("after" = Option<u64>, Query, description = "Only versions greater than this (default 0)"),
        ("limit" = Option<u64>, Query, description = "At most this many, 1 to 1000 (default 100)"),
        ("x-kv-ring-epoch" = Option<u64>, Header, description = "Rebalancing: the ring epoch the gateway routed by"),
    ),
    responses(
        (status = 200, description = "A page of versions", body = VersionsResponse),
        (status = 404, description = "No such key", body = kv_common::ErrorBody),
        (status = 409, description = "`stale_ring`: older `x-kv-ring-epoch` than the server's; `ring` in the body", body = kv_common::ErrorBody),
        (status = 503, description = "`syncing`, or `ring_behind` (newer `x-kv-ring-epoch`)", body = kv_common::ErrorBody),
    )
)]
pub async fn versions(
    State(state): State<AppState>,
    path: KeyPath,
    params: Params,
    headers: HeaderMap,
) -> Result<Json<VersionsResponse>, ApiError> {
    let key = extract::key(path)?;
    let params = QueryParams::from(params)?;
    let after = params.count("after")?.unwrap_or(0);
    let limit = params.count("limit")?.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("Invalid limit: {limit} is out of range: expected 1 to {MAX_PAGE}"),
        ));
    }
    admit_read(&state, &headers)?;
    let page = state.store.versions(&key, after, limit as u32).await?;
    let next_after = page
        .versions
        .last()
        .map(|v| v.version)
        .filter(|last| *last < page.latest_version);
    let versions = page
        .versions
        .into_iter()
        .map(|v| {
            let value = RawValue::from_string(v.value.to_string())
                .map_err(|e| ApiError::from(crate::Error::Internal(e.to_string())))?;
            Ok(VersionEntry {
                version: v.version,
                value,
                timestamp: v.timestamp,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(VersionsResponse {
        key,
        latest_version: page.latest_version,
        versions,
        next_after,
    }))
}

/// Cache statistics of this server.
#[utoipa::path(get, path = "/cache/stats", tag = "stats",
    params(("x-kv-to" = Option<String>, Header, description = "Replication: the server the gateway means to reach; another name is refused (`wrong_server`)")),
    responses((status = 200, body = CacheStats),
        (status = 421, description = "Replication: `x-kv-to` names another server (`wrong_server`)", body = kv_common::ErrorBody)))]
pub async fn cache_stats(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<CacheStats>, ApiError> {
    // The gateway shows these as the named member's: another server's are refused as its
    // key requests are.
    check_addressee(&state, &headers)?;
    let s = state.store.cache_stats();
    let lookups = s.hits + s.misses;
    Ok(Json(CacheStats {
        current_size: s.current_size,
        max_size: s.max_size,
        current_bytes: s.current_bytes,
        max_bytes: s.max_bytes,
        // Once either limit is reached a new key evicts the least recently used one.
        is_full: s.current_size >= s.max_size || s.current_bytes >= s.max_bytes,
        expiration_minutes: s.ttl.as_secs_f64() / 60.0,
        hits: s.hits,
        misses: s.misses,
        evictions: s.evictions,
        hit_ratio: if lookups == 0 {
            0.0
        } else {
            s.hits as f64 / lookups as f64
        },
        node_name: state.config.node_name.clone(),
    }))
}

/// Database statistics of this server.
#[utoipa::path(get, path = "/db/stats", tag = "stats",
    params(("x-kv-to" = Option<String>, Header, description = "Replication: the server the gateway means to reach; another name is refused (`wrong_server`)")),
    responses((status = 200, body = DbStats),
        (status = 421, description = "Replication: `x-kv-to` names another server (`wrong_server`)", body = kv_common::ErrorBody)))]
pub async fn db_stats(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<DbStats>, ApiError> {
    check_addressee(&state, &headers)?;
    let c = state.store.db_stats().await?;
    let dir = state.config.data_dir.clone();
    let space = tokio::task::spawn_blocking(move || kv_common::disk::space(&dir).ok())
        .await
        .ok()
        .flatten();
    Ok(Json(DbStats {
        total_keys: c.total_keys,
        total_versions: c.total_versions,
        database_size_bytes: c.database_size_bytes,
        wal_size_bytes: c.wal_size_bytes,
        volume_size_bytes: space.map(|s| s.total),
        volume_available_bytes: space.map(|s| s.available),
        node_name: state.config.node_name.clone(),
    }))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive; with replication, the catch-up lag and whether a new database has caught up", body = HealthBody)))]
pub async fn health(State(state): State<AppState>) -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok".into(),
        name: Some(state.config.node_name.clone()),
        replication: state.replication.as_ref().map(|r| r.health()),
        ring: state.replication.as_ref().map(|r| r.ring_health()),
    })
}

/// Readiness: the database is open and its write lock can be taken.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, description = "Not ready", body = kv_common::ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ready().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("not ready: {e}"),
        )
    })?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(replication) = &state.replication {
        replication.refresh_metrics();
    }
    let (metrics, db_path) = (state.metrics.clone(), state.store.db_path().to_owned());
    // A scrape must not fail over this: a failed read keeps the last figures.
    let _ = tokio::task::spawn_blocking(move || metrics.refresh_storage(&db_path)).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn empty_key() -> ApiError {
    ApiError::bad_request(ErrorCode::EmptyKey, "Key must not be empty")
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "Not Found")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "Method Not Allowed",
    )
}
