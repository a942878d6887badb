//! `/servers` and the per-member stats routes.
//!
//! Architecture Invariant: `server` only ever selects a member by its ring name; the URL
//! contacted is that member's, with a fixed path. No request parameter reaches another host.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use http::Method;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{Error, Result};
use crate::membership::Backend;
use crate::proxy::{decorate, upstream_error};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
pub struct StatsQuery {
    /// Name of the member to ask, as listed by `/servers` (required).
    server: Option<String>,
}

/// The servers on the ring: the seed's servers and count, plus each member's URL, health,
/// ring share and replication lag, the ring epoch and where the ring comes from, and the
/// replication in force.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServersResponse {
    /// Member names, sorted.
    pub servers: Vec<String>,
    pub count: usize,
    /// The ring configuration's epoch (`ring_source: config`), or without one, up by one
    /// each time the set of members changes (`ring_source: members`).
    pub epoch: u64,
    /// `config`: the ring is a configuration learned from the servers (docs/rebalancing.md),
    /// and key requests name its epoch; `members`: the membership source's names.
    pub ring_source: String,
    pub vnodes: usize,
    /// Servers holding each key: the ring configuration's, else the configured factor,
    /// capped at `count`.
    pub replication_factor: usize,
    /// Servers that must hold a version before a put is answered (sent to primaries).
    pub write_quorum: usize,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberStatus {
    pub name: String,
    pub url: String,
    /// `up`, `down`, or `unknown` before the first check.
    pub health: String,
    /// Fraction of the hash space (and so, on average, of the keys) this member owns.
    pub ring_share: f64,
    /// Versions the member has yet to pull from its peers, from its last health check; null
    /// for a standalone member or before the first check.
    pub replication_lag: Option<u64>,
    /// False while a member with a new database catches up (its reads then go to replicas);
    /// null for a standalone member or before the first check.
    pub synced: Option<bool>,
}

#[utoipa::path(get, path = "/servers", tag = "cluster",
    responses((status = 200, description = "Members with health, ring share and replication lag; the replication factor and write quorum in force", body = ServersResponse)))]
pub async fn servers(State(state): State<AppState>) -> Json<ServersResponse> {
    let topology = state.topology.load();
    let (replication_factor, write_quorum) = state.replication(&topology);
    let members = topology
        .ring
        .shares()
        .into_iter()
        .filter_map(|(name, share)| {
            let backend = topology.backends.get(name)?;
            Some(MemberStatus {
                name: name.to_owned(),
                url: backend.url.to_string(),
                health: backend.health.as_str().to_owned(),
                ring_share: share,
                replication_lag: backend.replication.lag(),
                synced: backend.replication.synced(),
            })
        })
        .collect();
    Json(ServersResponse {
        servers: topology.ring.members().to_vec(),
        count: topology.ring.len(),
        epoch: topology.epoch,
        ring_source: topology.ring_source().to_owned(),
        vnodes: topology.ring.vnodes(),
        replication_factor,
        write_quorum,
        members,
    })
}

#[utoipa::path(get, path = "/cache/stats", tag = "cluster", params(StatsQuery),
    responses((status = 200, body = kv_common::api::CacheStats),
              (status = 400, description = "`server` missing or not a member; the detail lists the members", body = kv_common::ErrorBody),
              (status = 503, body = kv_common::ErrorBody)))]
pub async fn cache_stats(
    State(state): State<AppState>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Response> {
    member_stats(&state, query, "/cache/stats").await
}

#[utoipa::path(get, path = "/db/stats", tag = "cluster", params(StatsQuery),
    responses((status = 200, body = kv_common::api::DbStats),
              (status = 400, description = "`server` missing or not a member; the detail lists the members", body = kv_common::ErrorBody),
              (status = 503, body = kv_common::ErrorBody)))]
pub async fn db_stats(
    State(state): State<AppState>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Response> {
    member_stats(&state, query, "/db/stats").await
}

/// The ring member a `?server=NAME` parameter names, if it is up. Only ring members can be
/// named: no request parameter makes the gateway contact another host.
pub(crate) fn member(state: &AppState, server: Option<String>) -> Result<Arc<Backend>> {
    let topology = state.topology.load();
    let valid = || topology.ring.members().to_vec();
    let name = server.ok_or_else(|| Error::MissingServer { valid: valid() })?;
    let backend = topology
        .backends
        .get(&name)
        .cloned()
        .ok_or_else(|| Error::UnknownServer {
            name: name.clone(),
            valid: valid(),
        })?;
    if backend.health.is_down() {
        return Err(Error::ServerDown {
            name,
            retry_after_secs: state.retry_after_secs,
        });
    }
    Ok(backend)
}

async fn member_stats(
    state: &AppState,
    query: Result<Query<StatsQuery>, QueryRejection>,
    path: &'static str,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| Error::InvalidQuery(e.body_text()))?;
    let backend = member(state, query.server)?;
    let name = backend.name.clone();
    let response = state
        .client
        .send(&backend, Method::GET, path, None)
        .await
        .map_err(|e| upstream_error(state, &name, e))?;
    Ok(decorate(response, &name))
}
