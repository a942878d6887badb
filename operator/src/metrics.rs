//! The operator's Prometheus metrics: reconciliations, their duration, failures by reason
//! (`Error::metric_label`), and whether this replica leads.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub reason: String,
}

#[derive(Clone)]
pub struct Metrics {
    reconciliations: Counter,
    failures: Family<FailureLabels, Counter>,
    duration: Histogram,
    leader: Gauge,
}

impl Metrics {
    /// Registers every metric under `kv_operator_`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            reconciliations: Counter::default(),
            failures: Family::default(),
            // 10 ms .. ~40 s: a pass is a handful of API calls.
            duration: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            leader: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("kv_operator");
        sub.register(
            "reconciliations",
            "Reconcile passes started",
            metrics.reconciliations.clone(),
        );
        sub.register(
            "reconcile_failures",
            "Failed reconcile passes by reason",
            metrics.failures.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            metrics.duration.clone(),
        );
        sub.register(
            "leader",
            "1 while this replica holds the leader Lease",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Counts a pass; the guard records its duration when dropped.
    pub fn reconcile_started(&self) -> DurationGuard<'_> {
        self.reconciliations.inc();
        DurationGuard {
            histogram: &self.duration,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Failures counted so far for `reason`.
    pub fn failures(&self, reason: &str) -> u64 {
        self.failures
            .get_or_create(&FailureLabels {
                reason: reason.to_owned(),
            })
            .get()
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}

/// Records the time since its creation into the duration histogram.
pub struct DurationGuard<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for DurationGuard<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_test_support::monitoring;

    #[test]
    fn every_operator_metric_the_alerts_and_the_dashboard_name_is_exported() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        // Families show a sample once one is recorded, as in a real failing pass.
        metrics.reconcile_failed("kube_api");
        drop(metrics.reconcile_started());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let names = monitoring::metric_names("kv_operator_");
        assert!(!names.is_empty());
        for name in names {
            assert!(
                monitoring::has_sample(&text, &name),
                "{name} is not exported:\n{text}"
            );
        }
    }
}
