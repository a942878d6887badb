//! Gateway-specific metrics: per-member requests, latencies and errors, member health and
//! replication lag, reads served by replicas, the ring's epoch and size, ring configurations
//! adopted and key requests retried on a newer ring. Per-route metrics come from
//! `kv_common::http_metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    pub member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub member: String,
    /// `ok` (any HTTP answer), `connect_error`, `wrong_server` (another server answers at
    /// the member's address: `421 wrong_server`), `timeout`, `error`, `too_large`, or
    /// `rejected` (not tried because the member is marked down).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// `served` (a replica answered) or `unavailable` (none had the key: 503).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdoptionLabels {
    /// How the configuration was learned: `health` (a member's `/health` named a newer
    /// epoch) or `stale_ring` (a member refused a request with it).
    pub how: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `put`, `get` or `versions`.
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabels {
    /// `opened`, `closed` (broken, or closed by the server), `goaway` (the server announced
    /// its shutdown) or `refused` (the server does not speak the link: HTTP is used).
    pub event: &'static str,
}

pub struct GatewayMetrics {
    member_requests: Family<OutcomeLabels, Counter>,
    member_latency: Family<MemberLabels, Histogram>,
    member_up: Family<MemberLabels, Gauge>,
    member_replication_lag: Family<MemberLabels, Gauge>,
    fallback_reads: Family<FallbackLabels, Counter>,
    ring_epoch: Gauge,
    ring_members: Gauge,
    ring_config_adoptions: Family<AdoptionLabels, Counter>,
    stale_ring_retries: Family<RouteLabels, Counter>,
    ring_behind_retries: Family<RouteLabels, Counter>,
    link_events: Family<LinkLabels, Counter>,
    /// Client connections: open, their limit, and accepts the limit held back.
    pub client_connections: kv_common::serve::ConnectionMetrics,
    client_connections_max: Gauge,
}

impl GatewayMetrics {
    /// Registers every metric under `registry`'s prefix (`kv_gateway_`: `AppState::new`).
    pub fn register(registry: &mut Registry) -> Arc<GatewayMetrics> {
        let metrics = GatewayMetrics {
            member_requests: Family::default(),
            // 50 µs .. ~1.6 s, like the per-route histogram.
            member_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            }),
            member_up: Family::default(),
            member_replication_lag: Family::default(),
            fallback_reads: Family::default(),
            ring_epoch: Gauge::default(),
            ring_members: Gauge::default(),
            ring_config_adoptions: Family::default(),
            stale_ring_retries: Family::default(),
            ring_behind_retries: Family::default(),
            link_events: Family::default(),
            client_connections: kv_common::serve::ConnectionMetrics::default(),
            client_connections_max: Gauge::default(),
        };
        registry.register(
            "client_connections",
            "Client connections open",
            metrics.client_connections.open.clone(),
        );
        registry.register(
            "client_connections_max",
            "Most client connections open at once (--max-connections; 0: no limit)",
            metrics.client_connections_max.clone(),
        );
        registry.register(
            "client_connection_limit_waits",
            "Times the connection limit held an accept back: new clients waited in the backlog",
            metrics.client_connections.limit_waits.clone(),
        );
        registry.register(
            "member_requests",
            "Requests the gateway made to each member, by outcome",
            metrics.member_requests.clone(),
        );
        registry.register(
            "member_request_duration_seconds",
            "Latency of the gateway's requests to each member",
            metrics.member_latency.clone(),
        );
        registry.register(
            "member_up",
            "1 when the member's last check or request succeeded, 0 when it failed",
            metrics.member_up.clone(),
        );
        registry.register(
            "member_replication_lag",
            "Versions the member has yet to pull from its peers, from its last health check \
             (absent for standalone members)",
            metrics.member_replication_lag.clone(),
        );
        registry.register(
            "fallback_reads",
            "Reads whose primary could not answer, by whether a replica served them",
            metrics.fallback_reads.clone(),
        );
        registry.register(
            "ring_epoch",
            "Epoch of the current ring: its ring configuration's, or without one up by one per \
             membership change",
            metrics.ring_epoch.clone(),
        );
        registry.register(
            "ring_members",
            "Members in the current ring",
            metrics.ring_members.clone(),
        );
        registry.register(
            "ring_config_adoptions",
            "Newer ring configurations the gateway started routing by, by how it learned them",
            metrics.ring_config_adoptions.clone(),
        );
        registry.register(
            "stale_ring_retries",
            "Key requests routed again on a newer ring after a member answered stale_ring",
            metrics.stale_ring_retries.clone(),
        );
        registry.register(
            "ring_behind_retries",
            "Key requests sent again after a short wait because a member had not learned \
             the gateway's ring yet (ring_behind)",
            metrics.ring_behind_retries.clone(),
        );
        registry.register(
            "link_events",
            "Pipelined links to servers opened, closed, announced closing by their server \
             (goaway) or refused by a server without the link (HTTP used instead), GET \
             answers too large for a link, asked again over HTTP (answer_over_http), and GETs \
             sent over HTTP at once because their last answer was (known_large_over_http)",
            metrics.link_events.clone(),
        );
        Arc::new(metrics)
    }

    pub fn request(&self, member: &str, outcome: &'static str, seconds: Option<f64>) {
        self.member_requests
            .get_or_create(&OutcomeLabels {
                member: member.to_owned(),
                outcome,
            })
            .inc();
        if let Some(seconds) = seconds {
            self.member_latency
                .get_or_create(&MemberLabels {
                    member: member.to_owned(),
                })
                .observe(seconds);
        }
    }

    pub fn member_up(&self, member: &str, up: bool) {
        self.member_up
            .get_or_create(&MemberLabels {
                member: member.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Sets a member's lag, or drops its gauge when it reports none (standalone).
    pub fn replication_lag(&self, member: &str, lag: Option<u64>) {
        let labels = MemberLabels {
            member: member.to_owned(),
        };
        match lag {
            Some(lag) => {
                self.member_replication_lag
                    .get_or_create(&labels)
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
            None => {
                self.member_replication_lag.remove(&labels);
            }
        }
    }

    /// Counts a read that went to the replicas; `served` when one of them answered it.
    pub fn fallback_read(&self, served: bool) {
        let outcome = if served { "served" } else { "unavailable" };
        self.fallback_reads
            .get_or_create(&FallbackLabels { outcome })
            .inc();
    }

    /// Drops a departed member's gauges, so dashboards do not show it forever.
    pub fn forget_member(&self, member: &str) {
        let labels = MemberLabels {
            member: member.to_owned(),
        };
        self.member_up.remove(&labels);
        self.member_replication_lag.remove(&labels);
    }

    pub fn ring_changed(&self, epoch: u64, members: usize) {
        self.ring_epoch
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
        self.ring_members
            .set(i64::try_from(members).unwrap_or(i64::MAX));
    }

    pub fn ring_config_adopted(&self, how: &'static str) {
        self.ring_config_adoptions
            .get_or_create(&AdoptionLabels { how })
            .inc();
    }

    pub fn ring_behind_retry(&self, route: &'static str) {
        self.ring_behind_retries
            .get_or_create(&RouteLabels { route })
            .inc();
    }

    pub fn stale_ring_retry(&self, route: &'static str) {
        self.stale_ring_retries
            .get_or_create(&RouteLabels { route })
            .inc();
    }

    pub fn connection_limit(&self, limit: Option<usize>) {
        let limit = limit.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX));
        self.client_connections_max.set(limit);
    }

    pub fn link_event(&self, event: &'static str) {
        self.link_events.get_or_create(&LinkLabels { event }).inc();
    }
}
