//! Reads of a key whose primary cannot answer: the other members of the key's preference
//! list are asked at once, and the newest version any of them holds is the answer
//! (`docs/replication.md`, "Reads").
//!
//! Only reads ever leave the primary. A replica stores exactly the versions the primary
//! assigned, so reading one may be stale but never forks a key; writes wait for the primary
//! (see `proxy`).

use std::sync::Arc;

use axum::response::Response;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use kv_common::ErrorCode;
use kv_common::replication::PRIMARY_UNAVAILABLE_HEADER;
use serde::Deserialize;

use crate::client::CallError;
use crate::error::{Error, Result};
use crate::membership::Backend;
use crate::proxy::{decorate, upstream_error};
use crate::ring_sync::{KeyCall, unavailable_because};
use crate::state::AppState;

/// Names the primary that could not answer, on an answer a replica gave.
pub const PRIMARY_UNAVAILABLE: HeaderName = HeaderName::from_static(PRIMARY_UNAVAILABLE_HEADER);

type Answer = std::result::Result<http::Response<Bytes>, CallError>;

/// Reads `path` (a `/get/...` with its query) for a key whose preference list is `members`,
/// primary first. With a single member this is the plain forward of the primary's answer.
///
/// Every call goes through `call`, so it names the ring epoch and a `409 stale_ring` (from
/// the primary: passed back, the caller routes again) teaches the gateway the newer ring.
pub async fn get(
    state: &AppState,
    call: &KeyCall<'_>,
    members: &[&Arc<Backend>],
    path: &str,
) -> Result<Response> {
    let (primary, replicas) = members.split_first().ok_or(Error::NoServers)?;
    if primary.health.is_down() {
        state
            .client
            .metrics()
            .request(&primary.name, "rejected", None);
        if replicas.is_empty() {
            return Err(server_down(state, primary));
        }
    } else {
        let answer = call.send(primary, Method::GET, path, None, &[]).await;
        if replicas.is_empty() || !primary_unavailable(&answer) {
            return answer
                .map(|response| decorate(response, &primary.name))
                .map_err(|e| upstream_error(state, &primary.name, e));
        }
    }
    // Down replicas are skipped like a down primary: a quick 503 beats waiting on them.
    let asked: Vec<&Arc<Backend>> = replicas
        .iter()
        .copied()
        .filter(|b| !b.health.is_down())
        .collect();
    let answers = futures::future::join_all(
        asked
            .iter()
            .map(|b| call.send(b, Method::GET, path, None, &[])),
    )
    .await;
    // Only 200s that say which version they hold can be chosen.
    let mut served: Vec<Option<(u64, http::Response<Bytes>)>> = answers
        .into_iter()
        .map(|answer| {
            let response = answer.ok()?;
            Some((served_version(&response)?, response))
        })
        .collect();
    let versions: Vec<Option<u64>> = served.iter().map(|s| s.as_ref().map(|(v, _)| *v)).collect();
    let chosen = choose(&versions).and_then(|i| Some((i, served.swap_remove(i)?.1)));
    state.client.metrics().fallback_read(chosen.is_some());
    let Some((index, response)) = chosen else {
        tracing::debug!(primary = %primary.name, "no replica could answer a read");
        return Err(server_down(state, primary));
    };
    tracing::debug!(primary = %primary.name, replica = %asked[index].name, "read served by a replica");
    let mut out = decorate(response, &asked[index].name);
    if let Ok(value) = HeaderValue::from_str(&primary.name) {
        out.headers_mut().insert(PRIMARY_UNAVAILABLE, value);
    }
    Ok(out)
}

/// The answer when neither the primary nor a replica could give one: a 503 naming the
/// primary, never a 404, since the replicas may only lack what the primary holds.
fn server_down(state: &AppState, primary: &Backend) -> Error {
    Error::ServerDown {
        name: primary.name.clone(),
        retry_after_secs: state.retry_after_secs,
    }
}

/// Whether the primary's outcome sends a read to the replicas: it could not be reached, did
/// not answer in time, or holds a new database still catching up (`503 syncing`). Any other
/// answer, a 404 included, is the primary's word and final.
pub fn primary_unavailable(answer: &Answer) -> bool {
    match answer {
        Err(CallError::Connect(_) | CallError::Timeout(_)) => true,
        Err(_) => false,
        Ok(response) => unavailable_because(response, ErrorCode::Syncing),
    }
}

/// The version a replica's answer holds: `Some` only for a 200 whose body says which.
fn served_version(response: &http::Response<Bytes>) -> Option<u64> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u64,
    }
    if response.status() != StatusCode::OK {
        return None;
    }
    serde_json::from_slice::<Versioned>(response.body())
        .ok()
        .map(|body| body.version)
}

/// Which replica's answer to give, from the versions they served in preference order
/// (`None`: no 200): the highest version, the earliest replica on a tie. For `?version=N`
/// every 200 holds N, so this is the first 200 in preference order, as the contract says.
pub fn choose(versions: &[Option<u64>]) -> Option<usize> {
    versions
        .iter()
        .enumerate()
        .filter_map(|(index, version)| version.map(|v| (index, v)))
        // `max_by` keeps the last of equal elements: order ties so the earliest wins.
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Ok(http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Bytes::from(body.to_owned()))
            .unwrap())
    }

    #[test]
    fn the_highest_version_wins_and_ties_go_to_the_earliest() {
        assert_eq!(choose(&[]), None);
        assert_eq!(choose(&[None, None]), None);
        assert_eq!(choose(&[Some(3), Some(5), None]), Some(1));
        assert_eq!(choose(&[None, Some(4), Some(4)]), Some(1));
        assert_eq!(choose(&[Some(9), Some(2)]), Some(0));
        // An exact version: every 200 holds it, so the first 200 wins.
        assert_eq!(choose(&[None, Some(2), Some(2), Some(2)]), Some(1));
    }

    #[test]
    fn only_200s_with_a_version_count() {
        let served = |status, body| served_version(&answer(status, body).unwrap());
        let big =
            r#"{"value":12345678901234567890123,"version":7,"timestamp":1.5,"source":"cache"}"#;
        assert_eq!(served(200, big), Some(7));
        assert_eq!(
            served(404, r#"{"detail":"x","code":"key_not_found"}"#),
            None
        );
        assert_eq!(served(200, "not json"), None);
        assert_eq!(served(200, r#"{"value":1}"#), None);
    }

    #[test]
    fn only_unreachable_slow_or_syncing_primaries_are_bypassed() {
        assert!(primary_unavailable(&Err(CallError::Timeout(
            std::time::Duration::ZERO
        ))));
        assert!(!primary_unavailable(&Err(CallError::TooLarge(1))));
        assert!(primary_unavailable(&answer(
            503,
            r#"{"detail":"catching up","code":"syncing"}"#
        )));
        for (status, body) in [
            (503, r#"{"detail":"x","code":"quorum_failed"}"#),
            (503, "busy"),
            (404, r#"{"detail":"x","code":"key_not_found"}"#),
            (404, r#"{"detail":"x","code":"syncing"}"#),
            (200, r#"{"value":1,"version":1}"#),
            (400, r#"{"detail":"x","code":"invalid_version"}"#),
        ] {
            assert!(
                !primary_unavailable(&answer(status, body)),
                "{status} {body}"
            );
        }
    }
}
