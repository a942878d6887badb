//! Keeping the gateway's ring configuration in step with the servers' (docs/rebalancing.md,
//! "Gateway side").
//!
//! The gateway learns a configuration two ways: a member's `/health` names a ring epoch above
//! the one in force, and the gateway asks that member for its ring (`GET /internal/ring`, a
//! call of the gateway's own: client requests never reach `/internal/*`); or a member answers
//! a key request `409 stale_ring`, which carries its configuration. Once the gateway routes by
//! a configuration, every member call of a key request names its epoch (`x-kv-ring-epoch`),
//! so a server on another ring refuses the call instead of acting on it under the wrong
//! owners.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use kv_common::ErrorCode;
use kv_common::ring_config::{RING_EPOCH_HEADER, RingConfig, RingHealth, RingView};
use serde::Deserialize;

use crate::client::{BackendClient, CallError};
use crate::membership::{Backend, Topology, TopologyHandle};
use crate::metrics::GatewayMetrics;
use crate::state::AppState;

/// The ring epoch a call was routed by.
pub const RING_EPOCH: HeaderName = HeaderName::from_static(RING_EPOCH_HEADER);

/// The member calls of one key request routed on one topology: each carries the topology's
/// epoch (when it comes from a configuration), and a `409 stale_ring` answer is learned from
/// at once.
pub struct KeyCall<'a> {
    state: &'a AppState,
    epoch: Option<HeaderValue>,
    /// A member answered `409 stale_ring` with its configuration: the call was refused, not
    /// acted on, and may be routed again on the newer ring.
    stale: AtomicBool,
    /// A member answered `503 ring_behind`: it has not learned this call's ring yet, refused
    /// the call without acting on it, and is asking its peers for the ring now.
    behind: AtomicBool,
}

impl<'a> KeyCall<'a> {
    pub fn new(state: &'a AppState, topology: &Topology) -> KeyCall<'a> {
        KeyCall {
            state,
            // Epoch 0 without a configuration: a server that has one answers `stale_ring`,
            // so a gateway that has not learned the ring yet (just started, or the first
            // move) can never read a range from a server that no longer holds it.
            epoch: Some(HeaderValue::from(topology.config_epoch().unwrap_or(0))),
            stale: AtomicBool::new(false),
            behind: AtomicBool::new(false),
        }
    }

    /// Sends one call with the epoch header and `headers`; learns from a `409 stale_ring`.
    pub async fn send(
        &self,
        backend: &Backend,
        method: Method,
        path: &str,
        body: Option<(Bytes, HeaderValue)>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<http::Response<Bytes>, CallError> {
        let mut all = headers.to_vec();
        if let Some(epoch) = &self.epoch {
            all.push((RING_EPOCH, epoch.clone()));
        }
        let answer = self
            .state
            .client
            .send_with_headers(backend, method, path, body, &all)
            .await;
        if answer.as_ref().is_ok_and(ring_behind) {
            self.behind.store(true, Ordering::Relaxed);
        }
        if let Some(config) = answer.as_ref().ok().and_then(stale_ring) {
            self.stale.store(true, Ordering::Relaxed);
            learn(
                &self.state.topology,
                self.state.client.metrics(),
                config,
                &backend.name,
                "stale_ring",
            );
        }
        answer
    }

    /// Whether a member said this call's ring was stale.
    pub fn told_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Whether a member said it had not learned this call's ring yet.
    pub fn told_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }
}

/// Whether an answer is `503 ring_behind`.
pub fn ring_behind(response: &http::Response<Bytes>) -> bool {
    unavailable_because(response, ErrorCode::RingBehind)
}

/// Whether an answer is a 503 whose error body has `code`; only a 503's body is read.
pub fn unavailable_because(response: &http::Response<Bytes>, code: ErrorCode) -> bool {
    #[derive(Deserialize)]
    struct Coded {
        code: ErrorCode,
    }
    response.status() == StatusCode::SERVICE_UNAVAILABLE
        && serde_json::from_slice::<Coded>(response.body()).is_ok_and(|body| body.code == code)
}

/// The configuration a `409 stale_ring` answer carries; `None` for any other answer.
pub fn stale_ring(response: &http::Response<Bytes>) -> Option<RingConfig> {
    #[derive(Deserialize)]
    struct StaleRing {
        code: ErrorCode,
        ring: Option<RingConfig>,
    }
    if response.status() != StatusCode::CONFLICT {
        return None;
    }
    let body: StaleRing = serde_json::from_slice(response.body()).ok()?;
    (body.code == ErrorCode::StaleRing)
        .then_some(body.ring)
        .flatten()
}

/// Adopts `config`, learned from `member` by `how` (`health`, `stale_ring`), if it is newer
/// than the one in force; logs and counts it. Returns whether it was adopted.
pub fn learn(
    topology: &TopologyHandle,
    metrics: &GatewayMetrics,
    config: RingConfig,
    member: &str,
    how: &'static str,
) -> bool {
    let epoch = config.epoch;
    match topology.adopt(config) {
        Ok(true) => {
            tracing::info!(epoch, %member, how, "routing by a newer ring configuration");
            metrics.ring_config_adopted(how);
            true
        }
        Ok(false) => false,
        Err(error) => {
            tracing::warn!(epoch, %member, how, %error, "ignoring an invalid ring configuration");
            false
        }
    }
}

/// A member's `/health` reported `ring`: when its epoch is above the one in force, asks the
/// member for its configuration (within `timeout`) and adopts it. A failed fetch is retried by
/// the next check.
pub async fn on_health(
    topology: &TopologyHandle,
    client: &BackendClient,
    backend: &Backend,
    ring: RingHealth,
    timeout: Duration,
) {
    if !topology.is_behind(ring.epoch) {
        return;
    }
    let answer = tokio::time::timeout(
        timeout,
        client.send(backend, Method::GET, "/internal/ring", None),
    )
    .await;
    let view = match answer {
        Ok(Ok(response)) if response.status().is_success() => {
            serde_json::from_slice::<RingView>(response.body()).map_err(|e| e.to_string())
        }
        Ok(Ok(response)) => Err(format!("status {}", response.status())),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    match view {
        Ok(view) => {
            learn(
                topology,
                client.metrics(),
                view.state.current,
                &backend.name,
                "health",
            );
        }
        Err(error) => {
            tracing::warn!(member = %backend.name, epoch = ring.epoch, %error, "cannot read the member's ring");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> http::Response<Bytes> {
        http::Response::builder()
            .status(status)
            .body(Bytes::from(body.to_owned()))
            .unwrap()
    }

    #[test]
    fn only_a_503_ring_behind_is_ring_behind() {
        assert!(ring_behind(&answer(
            503,
            r#"{"detail":"x","code":"ring_behind"}"#
        )));
        assert!(!ring_behind(&answer(
            503,
            r#"{"detail":"x","code":"syncing"}"#
        )));
        assert!(!ring_behind(&answer(
            409,
            r#"{"detail":"x","code":"ring_behind"}"#
        )));
        assert!(!ring_behind(&answer(503, "busy")));
    }

    #[test]
    fn only_a_409_stale_ring_with_a_ring_is_learned_from() {
        let ring = r#"{"epoch":3,"members":[{"name":"a","url":"http://a:1"}],"vnodes":150,"replication_factor":1}"#;
        let stale = format!(r#"{{"detail":"x","code":"stale_ring","ring":{ring}}}"#);
        assert_eq!(stale_ring(&answer(409, &stale)).unwrap().epoch, 3);
        let other = format!(r#"{{"detail":"x","code":"replica_conflict","ring":{ring}}}"#);
        assert!(stale_ring(&answer(409, &other)).is_none());
        assert!(stale_ring(&answer(503, &stale)).is_none());
        assert!(stale_ring(&answer(409, r#"{"detail":"x","code":"stale_ring"}"#)).is_none());
        assert!(stale_ring(&answer(409, "not json")).is_none());
    }
}
