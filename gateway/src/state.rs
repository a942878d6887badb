//! What every handler shares.

use std::ops::Deref;
use std::sync::Arc;

use kv_common::http_metrics::HttpMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::auth::ApiToken;
use crate::client::BackendClient;
use crate::config::{GatewayConfig, Replication};
use crate::error::Result;
use crate::membership::{Topology, TopologyHandle};
use crate::metrics::GatewayMetrics;

/// Cheap to clone: one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub topology: Arc<TopologyHandle>,
    pub client: BackendClient,
    /// Every metric of this gateway; complete once built, so it needs no lock.
    pub registry: Registry,
    pub http_metrics: Arc<HttpMetrics>,
    pub token: Option<ApiToken>,
    pub max_body_bytes: usize,
    /// Put bodies held at once (`--max-inflight-body-bytes`).
    pub body_budget: kv_common::body_budget::BodyBudget,
    /// How long a request body may take to arrive after its head (`--client-timeout-secs`).
    pub client_timeout: std::time::Duration,
    /// The `Retry-After` of a 503 for a down member: by then the next check has run.
    pub retry_after_secs: u64,
    /// As configured; [`AppState::replication`] gives what is in force.
    pub replication: Replication,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Builds the state from a configuration, with an empty ring: the caller starts a
    /// membership source that fills it (see `crate::run`).
    pub fn new(config: &GatewayConfig) -> Result<AppState> {
        // Every name under `kv_gateway_`, as the servers' are under `kv_server_`: a shared
        // Prometheus holds other programs' `http_requests_total`.
        let mut registry = Registry::with_prefix("kv_gateway");
        let http_metrics = HttpMetrics::register(&mut registry);
        let metrics = GatewayMetrics::register(&mut registry);
        let (body_bytes, body_waits) = (Gauge::default(), Counter::default());
        registry.register(
            "request_body_bytes",
            "Bytes of put bodies held in memory now (at most --max-inflight-body-bytes)",
            body_bytes.clone(),
        );
        registry.register(
            "request_body_waits",
            "Puts that waited, unread, for room under --max-inflight-body-bytes",
            body_waits.clone(),
        );
        let body_budget = kv_common::body_budget::BodyBudget::new(
            config.max_inflight_body_bytes,
            config.max_body_bytes,
            body_bytes,
            body_waits,
        );
        let topology = Arc::new(TopologyHandle::new(config.vnodes, metrics.clone()));
        let client = BackendClient::new(
            config.connect_timeout(),
            config.request_timeout(),
            config.max_response_bytes,
            config.backend_transport,
            config.links_per_server,
            metrics,
        );
        Ok(AppState(Arc::new(Shared {
            topology,
            client,
            registry,
            http_metrics,
            token: ApiToken::load(config)?,
            max_body_bytes: config.max_body_bytes,
            body_budget,
            client_timeout: config.client_timeout(),
            retry_after_secs: config.health_interval().as_secs_f64().ceil().max(1.0) as u64,
            replication: config.replication_settings(),
        })))
    }

    /// `(R, W)` in force on `topology`: R from its ring configuration when it has one (the
    /// servers follow the same), else from the flags; both capped by its member count.
    /// Recomputed per request from the topology the request reads (a couple of comparisons),
    /// so it follows membership and configuration changes.
    pub fn replication(&self, topology: &Topology) -> (usize, usize) {
        let configured = match topology.replication_factor() {
            Some(factor) => Replication {
                factor,
                ..self.replication
            },
            None => self.replication,
        };
        configured.in_force(topology.ring.len())
    }
}
