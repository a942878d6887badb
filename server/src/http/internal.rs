//! `/internal/*`: what servers ask each other (see docs/replication.md). The gateway never
//! forwards these paths; on a standalone server they answer 404.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kv_common::ErrorCode;
use kv_common::replication::{
    Change, ChangesResponse, Conflict, MAX_CHANGES_PAGE, Record, ReplicateRequest,
    ReplicateResponse, ReplicationStatus,
};
use kv_common::ring_config::{CleanupReport, RingState, RingView};
use serde_json::value::RawValue;

use super::AppState;
use super::error::ApiError;
use super::extract::{Params, QueryParams};
use crate::replication::{Adoption, Replication};
use crate::store::{MAX_VERSION, ReplicaBatch, ReplicaRecord, Versioned, validate_key};

/// Value bytes one change page carries at most (one bigger value still goes alone).
const CHANGES_PAGE_BYTES: usize = 4 << 20;

fn replication(state: &AppState) -> Result<&Arc<Replication>, ApiError> {
    state.replication.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "replication is off on this server (no --peers)",
        )
    })
}

/// Store versions exactly as their primary assigned them.
pub async fn replicate(
    State(state): State<AppState>,
    body: Result<Json<ReplicateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    replication(&state)?;
    let Json(request) = body.map_err(|e| {
        ApiError::bad_request(
            ErrorCode::InvalidBody,
            format!("Invalid replicate body: {e}"),
        )
    })?;
    let records = request
        .records
        .into_iter()
        .map(to_replica)
        .collect::<Result<Vec<_>, _>>()?;
    let outcome = state
        .store
        .replicate(ReplicaBatch {
            records,
            cursor: None,
        })
        .await?;
    let counts = ReplicateResponse {
        stored: outcome.stored,
        duplicates: outcome.duplicates,
    };
    if outcome.conflicts.is_empty() {
        return Ok(Json(counts).into_response());
    }
    tracing::error!(from = %request.from, conflicts = outcome.conflicts.len(),
        "refused replicated versions that differ from the ones held");
    let conflicts: Vec<Conflict> = outcome
        .conflicts
        .into_iter()
        .map(|(key, version)| Conflict { key, version })
        .collect();
    let body = serde_json::json!({
        "detail": format!("{} version(s) are held here with another value; kept the held ones",
            conflicts.len()),
        "code": ErrorCode::ReplicaConflict,
        "stored": counts.stored,
        "duplicates": counts.duplicates,
        "conflicts": conflicts,
    });
    Ok((StatusCode::CONFLICT, Json(body)).into_response())
}

fn to_replica(record: Record) -> Result<ReplicaRecord, ApiError> {
    validate_key(&record.key)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidKey, e.to_string()))?;
    if record.version == 0 || record.version > MAX_VERSION || !record.timestamp.is_finite() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidVersion,
            format!(
                "Key '{}': version {} or timestamp {} out of range",
                record.key, record.version, record.timestamp
            ),
        ));
    }
    Ok(ReplicaRecord {
        key: record.key.as_str().into(),
        stored: Versioned {
            version: record.version,
            value: record.value.get().into(),
            timestamp: record.timestamp,
        },
    })
}

/// This server's versions after `after`, for the keys peer `for` holds; `ring` (optional) is
/// the asking server's newest epoch: a feed filtered by an older ring would skip keys it
/// needs, so this server answers `503 ring_behind` until it has learned that epoch.
/// `gained_below` with `gained_epoch` (together): up to that sequence, only the keys `for`
/// gains with `next`, if `gained_epoch` is the `current` here (a copy after a cursor the
/// asking server already had, `replication/copy_base.rs`).
pub async fn changes(
    State(state): State<AppState>,
    params: Params,
) -> Result<Json<ChangesResponse>, ApiError> {
    let replication = replication(&state)?;
    let params = QueryParams::from(params)?;
    let after = params.count("after")?.unwrap_or(0);
    let limit = params
        .count("limit")?
        .unwrap_or(u64::from(MAX_CHANGES_PAGE));
    if !(1..=u64::from(MAX_CHANGES_PAGE)).contains(&limit) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("Invalid limit: expected 1 to {MAX_CHANGES_PAGE}"),
        ));
    }
    let peer = params.get("for").filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::MissingParameter,
            "Missing 'for': the name of the server asking",
        )
    })?;
    replication.check_feed_epoch(params.count("ring")?)?;
    let gained = match (params.count("gained_epoch")?, params.count("gained_below")?) {
        (Some(epoch), Some(below)) => Some((epoch, below)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                "'gained_epoch' and 'gained_below' go together",
            ));
        }
    };
    let epoch = replication.placement().epoch();
    let (rows, next, head) = state
        .store
        .changes(
            after,
            limit as u32,
            CHANGES_PAGE_BYTES,
            replication.filter_for(peer.to_owned(), gained),
        )
        .await?;
    // Gained keys only is right while this server's `current` stays the one asked about (a
    // joiner assigns no version before the switch). If it changed during the read, the page
    // may hold versions assigned since: serve none and no progress, and the asker reads
    // again at once, now with the whole filter.
    let (rows, next) = match gained.is_some() && replication.placement().epoch() != epoch {
        true => (Vec::new(), after),
        false => (rows, next),
    };
    let records = rows
        .into_iter()
        .map(|row| {
            let value = RawValue::from_string(row.stored.value.to_string())
                .map_err(|e| ApiError::from(crate::Error::Internal(e.to_string())))?;
            Ok(Change {
                seq: row.seq,
                key: row.key,
                version: row.stored.version,
                value,
                timestamp: row.stored.timestamp,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(ChangesResponse {
        instance: state.store.open_info().instance.clone(),
        records,
        next,
        head,
    }))
}

/// Where catch-up stands with every peer.
pub async fn status(State(state): State<AppState>) -> Result<Json<ReplicationStatus>, ApiError> {
    let replication = replication(&state)?;
    let head = state.store.head().await?;
    Ok(Json(replication.status(head)))
}

/// This server's ring state and how far it is with the transition.
pub async fn ring(State(state): State<AppState>) -> Result<Json<RingView>, ApiError> {
    let replication = replication(&state)?;
    let head = state.store.head().await?;
    Ok(Json(replication.view(head)))
}

/// A ring state pushed by the coordinator: adopted (durably, and once frozen after the puts
/// in flight committed) if above this server's, `200` with the view; the same again is a
/// `200` too; below (or conflicting) is a `409 stale_ring` whose body is the error and this
/// server's view side by side (`{detail, code, name, state, copied, ...}`).
pub async fn put_ring(
    State(state): State<AppState>,
    body: Result<Json<RingState>, JsonRejection>,
) -> Result<Response, ApiError> {
    let replication = replication(&state)?;
    let Json(offered) = body.map_err(|e| {
        ApiError::bad_request(ErrorCode::InvalidBody, format!("Invalid ring state: {e}"))
    })?;
    let adoption = replication.adopt(offered).await?;
    let head = state.store.head().await?;
    let view = replication.view(head);
    match adoption {
        Adoption::Adopted | Adoption::Same => Ok(Json(view).into_response()),
        Adoption::Refused(why) => {
            let mut body = serde_json::to_value(&view)
                .map_err(|e| ApiError::from(crate::Error::Internal(e.to_string())))?;
            body["detail"] = why.into();
            body["code"] = serde_json::to_value(ErrorCode::StaleRing).unwrap_or_default();
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
    }
}

/// Deletes the keys this server no longer holds under `current`; `409 rebalancing` while a
/// `next` ring is announced.
pub async fn cleanup(State(state): State<AppState>) -> Result<Json<CleanupReport>, ApiError> {
    let replication = replication(&state)?;
    Ok(Json(replication.cleanup().await?))
}
