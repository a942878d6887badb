//! The alerts and the dashboard the Helm chart ships
//! (`helm/kvstore-operator/files/prometheus-rules.yaml`, `files/grafana-dashboard.json`), for
//! the tests that hold every metric they name to what a binary really exports: an alert or a
//! panel on a misspelt or renamed metric would stay silent for good, and promtool cannot tell.

use std::collections::BTreeSet;

/// The rule file, as the chart ships it.
pub const RULES: &str = include_str!("../../helm/kvstore-operator/files/prometheus-rules.yaml");
/// The Grafana dashboard, as the chart ships it.
pub const DASHBOARD: &str =
    include_str!("../../helm/kvstore-operator/files/grafana-dashboard.json");

/// The metric names starting with `prefix` that the rule file or the dashboard mention
/// anywhere (expressions and texts alike), as they appear in an exposition (`_total`,
/// `_bucket` included).
pub fn metric_names(prefix: &str) -> BTreeSet<String> {
    [RULES, DASHBOARD]
        .iter()
        .flat_map(|text| text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')))
        .filter(|word| word.starts_with(prefix) && word.len() > prefix.len())
        .map(str::to_owned)
        .collect()
}

/// Whether Prometheus/OpenMetrics text `exposition` holds at least one sample of `name`.
pub fn has_sample(exposition: &str, name: &str) -> bool {
    exposition.lines().any(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_alerts_and_the_dashboard() {
        let server = metric_names("kv_server_");
        assert!(
            server.contains("kv_server_replication_synced"),
            "{server:?}"
        );
        assert!(
            server.contains("kv_server_sqlite_commit_seconds_bucket"),
            "{server:?}"
        );
        assert!(metric_names("kv_gateway_").contains("kv_gateway_member_up"));
        assert!(metric_names("kv_operator_").contains("kv_operator_reconcile_failures_total"));
        // Only on the dashboard.
        assert!(metric_names("kv_operator_").contains("kv_operator_leader"));
        assert!(metric_names("kv_gateway_").contains("kv_gateway_http_requests_total"));
        assert!(metric_names("kv_nothing_").is_empty());
    }

    #[test]
    fn a_sample_is_a_line_that_starts_with_the_name() {
        let text = "# TYPE a_total counter\na_total{x=\"1\"} 2\nab 1\nc 0\n";
        assert!(has_sample(text, "a_total"));
        assert!(has_sample(text, "c"));
        assert!(!has_sample(text, "a"), "a prefix of a name is not the name");
        assert!(!has_sample(text, "TYPE"));
    }
}
