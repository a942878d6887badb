//! What a bench run tells: the live [`Progress`] line, the final [`Report`] as a human table or
//! as one JSON object (`--json`).

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::Serialize;

use super::config::{Config, Stop};
use super::stats::{ErrorCounts, Percentiles, Summary};

/// A snapshot of the measured phase, taken once a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub elapsed: Duration,
    pub requests: u64,
    pub errors: u64,
    /// Requests per second over the last interval.
    pub rate: f64,
    /// p99 latency of the 2xx answers since the start of the measured phase, in µs.
    pub p99_us: u64,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>6.1}s  {:>10} req  {:>10.0} req/s  p99 {:>9}  errors {}",
            self.elapsed.as_secs_f64(),
            self.requests,
            self.rate,
            latency(self.p99_us),
            self.errors,
        )
    }
}

/// The result of a bench run. Serialized as is for `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub config: Config,
    /// Tokio worker threads of the load generator.
    pub threads: usize,
    /// The warm-up phase, if there was one.
    pub warmup: Option<Warmup>,
    /// Stopped early (Ctrl-C): the numbers cover a shorter run than configured.
    pub interrupted: bool,
    /// Length of the measured phase, from its start until the last answer.
    pub elapsed_secs: f64,
    /// Requests per second over the measured phase, errors included.
    pub throughput: f64,
    /// Gets and puts together.
    pub total: Summary,
    pub get: Summary,
    pub put: Summary,
}

/// What the warm-up did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Warmup {
    pub keys: usize,
    pub elapsed_secs: f64,
}

impl Report {
    /// True when not a single request got a 2xx answer: the run measured nothing.
    pub fn all_failed(&self) -> bool {
        self.total.ok == 0
    }

    /// The final table, for people.
    pub fn human(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let stop = match c.stop {
            Stop::Duration(d) => format!("{:.1}s", d.as_secs_f64()),
            Stop::Requests(n) => format!("{n} requests"),
        };
        let _ = writeln!(
            out,
            "kvstore bench {}: {} connections, {} threads, {stop}, {} keys, {}-byte values, {:.0}% reads",
            c.url,
            c.connections,
            self.threads,
            c.keys,
            c.value_size,
            c.read_ratio * 100.0,
        );
        if let Some(w) = &self.warmup {
            let _ = writeln!(
                out,
                "warm-up: wrote {} keys in {:.2}s",
                w.keys, w.elapsed_secs
            );
        }
        let _ = writeln!(
            out,
            "measured: {} requests in {:.2}s = {:.0} req/s{}\n",
            self.total.requests,
            self.elapsed_secs,
            self.throughput,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
        );
        if let Some(rate) = c.rate {
            let _ = writeln!(out, "{}\n", self.pace_line(rate));
        }
        let _ = writeln!(
            out,
            "{:<5} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "requests", "ok", "errors", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, s) in [("get", &self.get), ("put", &self.put), ("all", &self.total)] {
            if s.requests == 0 && name != "all" {
                continue;
            }
            let Percentiles {
                mean,
                p50,
                p90,
                p99,
                p99_9,
                max,
                ..
            } = s.latency_us;
            // Nothing succeeded, nothing timed: dashes rather than misleading zeros.
            let time = |us: u64| {
                if s.ok == 0 {
                    "-".to_owned()
                } else {
                    latency(us)
                }
            };
            let _ = writeln!(
                out,
                "{name:<5} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                s.requests,
                s.ok,
                s.errors.total,
                time(mean.round() as u64),
                time(p50),
                time(p90),
                time(p99),
                time(p99_9),
                time(max),
            );
        }
        if c.rate.is_some() {
            let _ = writeln!(out, "\nservice time, from the send to the answer:");
            for (name, s) in [("get", &self.get), ("put", &self.put), ("all", &self.total)] {
                let Some(p) = s.service_us.filter(|_| s.requests > 0) else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "{name:<5} {:>31} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    "",
                    latency(p.mean.round() as u64),
                    latency(p.p50),
                    latency(p.p90),
                    latency(p.p99),
                    latency(p.p99_9),
                    latency(p.max),
                );
            }
        }
        if self.total.errors.total > 0 {
            let _ = writeln!(out, "\nerrors: {}", describe_errors(&self.total.errors));
        }
        out
    }

    /// What `--rate` asked and whether it was reached. A run that fell behind its schedule
    /// says so, since its throughput is then the connections' limit, not the rate asked.
    fn pace_line(&self, rate: f64) -> String {
        let asked = format!(
            "rate: {rate:.0} req/s asked over {} connections (open loop: a request held back by \
             a slow answer counts from when it was due)",
            self.config.connections
        );
        // Within 2 %: the last requests of a timed run may still be in flight at its end.
        if self.interrupted || self.throughput >= rate * 0.98 {
            return asked;
        }
        format!(
            "{asked}\nNOT REACHED: {:.0} req/s sent; each connection has one request in flight, \
             so more connections (or a faster server) are needed for this rate",
            self.throughput
        )
    }
}

/// Error counts by cause, e.g. `HTTP 503: 5 (rebalancing 4, ring_behind 1), connect: 1`: the
/// codes that kvstore's error bodies named, and how many answers named none.
pub fn describe_errors(e: &ErrorCounts) -> String {
    let mut causes: Vec<String> = e
        .status
        .iter()
        .map(|(status, n)| {
            let Some(codes) = e.codes.get(status) else {
                return format!("HTTP {status}: {n}");
            };
            let mut named: Vec<String> = codes.iter().map(|(c, m)| format!("{c} {m}")).collect();
            let without = n.saturating_sub(codes.values().sum());
            if without > 0 {
                named.push(format!("no code {without}"));
            }
            format!("HTTP {status}: {n} ({})", named.join(", "))
        })
        .collect();
    for (what, n) in [("connect", e.connect), ("io", e.io), ("timeout", e.timeout)] {
        if n > 0 {
            causes.push(format!("{what}: {n}"));
        }
    }
    causes.join(", ")
}

/// A latency in µs, in the unit that keeps it readable: `850µs`, `12.34ms`, `1.50s`.
pub fn latency(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::{Failure, OpStats};

    #[test]
    fn latencies_are_readable() {
        assert_eq!(latency(0), "0µs");
        assert_eq!(latency(850), "850µs");
        assert_eq!(latency(12_340), "12.34ms");
        assert_eq!(latency(1_500_000), "1.50s");
    }

    fn report() -> Report {
        let mut get = OpStats::default();
        get.record_status(200, Duration::from_micros(300));
        get.record_answer(404, Some("not_found"), Duration::from_micros(1));
        let mut put = OpStats::default();
        put.record_status(201, Duration::from_millis(2));
        put.record_failure(Failure::Timeout);
        put.record_answer(503, Some("rebalancing"), Duration::from_micros(1));
        put.record_answer(503, Some("rebalancing"), Duration::from_micros(1));
        put.record_answer(503, None, Duration::from_micros(1));
        let mut total = get.clone();
        total.merge(&put);
        Report {
            config: Config::new("http://127.0.0.1:8000"),
            threads: 2,
            warmup: Some(Warmup {
                keys: 1000,
                elapsed_secs: 0.5,
            }),
            interrupted: false,
            elapsed_secs: 2.0,
            throughput: 2.0,
            total: total.summary(),
            get: get.summary(),
            put: put.summary(),
        }
    }

    #[test]
    fn the_table_shows_every_operation_and_error_causes() {
        let table = report().human();
        assert!(table.contains("warm-up: wrote 1000 keys"), "{table}");
        assert!(
            table.contains("measured: 7 requests in 2.00s = 2 req/s"),
            "{table}"
        );
        for row in ["\nget ", "\nput ", "\nall "] {
            assert!(table.contains(row), "{row:?} missing in\n{table}");
        }
        assert!(
            table.contains(
                "errors: HTTP 404: 1 (not_found 1), HTTP 503: 3 (rebalancing 2, no code 1), timeout: 1"
            ),
            "{table}"
        );
    }

    #[test]
    fn json_has_stable_field_names() {
        let json = serde_json::to_value(report()).unwrap();
        assert_eq!(json["total"]["requests"], 7);
        assert_eq!(json["total"]["errors"]["codes"]["503"]["rebalancing"], 2);
        assert_eq!(json["get"]["errors"]["codes"]["404"]["not_found"], 1);
        assert_eq!(json["total"]["errors"]["status"]["404"], 1);
        assert_eq!(json["put"]["errors"]["timeout"], 1);
        assert!(json["get"]["latency_us"]["p99.9"].as_u64().unwrap() >= 300);
        assert_eq!(json["config"]["stop"]["duration"], 10.0);
        assert_eq!(json["config"]["read_ratio"], 0.5);
        assert_eq!(json["warmup"]["keys"], 1000);
    }
}
