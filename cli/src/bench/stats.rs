//! What the workers count: a latency histogram and outcome counters per operation, merged into
//! [`Summary`]s for the progress line and the final report.
//!
//! Each worker owns one [`WorkerStats`] behind a `std::sync::Mutex`: the worker locks it once per
//! request (uncontended, tens of nanoseconds) and the progress reporter once a second, so there is
//! no shared counter bouncing between cores on every request.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lowest latency the histograms track: 1 µs (values are recorded in microseconds).
const LOWEST_US: u64 = 1;
/// Highest latency the histograms track: 5 minutes; longer ones are clamped to it.
const HIGHEST_US: u64 = 300_000_000;
/// Three significant digits: a recorded value is within 0.1 % of the true latency.
const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// The two kinds of request the bench sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Get,
    Put,
}

/// Why a request did not get a 2xx answer, other than the status code itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection or the HTTP handshake could not be made.
    Connect,
    /// The connection broke or the answer was not valid HTTP.
    Io,
    /// No complete answer within the request timeout.
    Timeout,
}

/// Counters and latencies of one operation.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Latency of the 2xx answers only, in µs, measured from sending the request to reading the
    /// last byte of the answer. Failures are counted, not timed, so a fast error (a 503 from load
    /// shedding) cannot make the percentiles look better.
    pub latency: Histogram<u64>,
    /// With `--rate`, the 2xx answers' time from the actual send to the last byte, in µs
    /// (`latency` then counts from when the request was due); empty without it.
    pub service: Histogram<u64>,
    pub ok: u64,
    /// Non-2xx answers by status code.
    pub status: BTreeMap<u16, u64>,
    /// The non-2xx answers of `status` whose JSON body named a `code` (kvstore's error
    /// bodies do), by status and code: a 503 can be `rebalancing`, `ring_behind` or
    /// `server_unavailable`, and only the code tells which.
    pub codes: BTreeMap<(u16, String), u64>,
    pub connect: u64,
    pub io: u64,
    pub timeout: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            service: new_histogram(),
            ok: 0,
            status: BTreeMap::new(),
            codes: BTreeMap::new(),
            connect: 0,
            io: 0,
            timeout: 0,
        }
    }
}

impl OpStats {
    /// Counts one answer with this HTTP status; `latency` is recorded only for a 2xx.
    pub fn record_status(&mut self, status: u16, latency: Duration) {
        self.record_answer(status, None, latency);
    }

    /// Counts one answer with this HTTP status and, for an error, the `code` its body named.
    pub fn record_answer(&mut self, status: u16, code: Option<&str>, latency: Duration) {
        if (200..300).contains(&status) {
            self.ok += 1;
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency.saturating_record(us.max(LOWEST_US));
        } else {
            *self.status.entry(status).or_default() += 1;
            if let Some(code) = code {
                *self.codes.entry((status, code.to_owned())).or_default() += 1;
            }
        }
    }

    /// Records the service time (send to answer) of a 2xx answer under `--rate`.
    pub fn record_service(&mut self, service: Duration) {
        let us = u64::try_from(service.as_micros()).unwrap_or(u64::MAX);
        self.service.saturating_record(us.max(LOWEST_US));
    }

    pub fn record_failure(&mut self, failure: Failure) {
        match failure {
            Failure::Connect => self.connect += 1,
            Failure::Io => self.io += 1,
            Failure::Timeout => self.timeout += 1,
        }
    }

    /// Requests that did not get a 2xx answer.
    pub fn errors(&self) -> u64 {
        self.status.values().sum::<u64>() + self.connect + self.io + self.timeout
    }

    pub fn requests(&self) -> u64 {
        self.ok + self.errors()
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &OpStats) {
        self.latency
            .add(&other.latency)
            .expect("histograms share the same bounds");
        self.service
            .add(&other.service)
            .expect("histograms share the same bounds");
        self.ok += other.ok;
        for (&code, &n) in &other.status {
            *self.status.entry(code).or_default() += n;
        }
        for (key, &n) in &other.codes {
            *self.codes.entry(key.clone()).or_default() += n;
        }
        self.connect += other.connect;
        self.io += other.io;
        self.timeout += other.timeout;
    }

    pub fn summary(&self) -> Summary {
        Summary {
            requests: self.requests(),
            ok: self.ok,
            errors: ErrorCounts {
                total: self.errors(),
                status: self
                    .status
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                codes: self.codes.iter().fold(
                    BTreeMap::new(),
                    |mut by_status: BTreeMap<String, BTreeMap<String, u64>>,
                     ((status, code), n)| {
                        by_status
                            .entry(status.to_string())
                            .or_default()
                            .insert(code.clone(), *n);
                        by_status
                    },
                ),
                connect: self.connect,
                io: self.io,
                timeout: self.timeout,
            },
            latency_us: Percentiles::of(&self.latency),
            service_us: (!self.service.is_empty()).then(|| Percentiles::of(&self.service)),
        }
    }
}

/// Everything one worker has counted so far.
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    pub get: OpStats,
    pub put: OpStats,
}

impl WorkerStats {
    pub fn op_mut(&mut self, op: Op) -> &mut OpStats {
        match op {
            Op::Get => &mut self.get,
            Op::Put => &mut self.put,
        }
    }

    pub fn merge(&mut self, other: &WorkerStats) {
        self.get.merge(&other.get);
        self.put.merge(&other.put);
    }

    /// Gets and puts together.
    pub fn total(&self) -> OpStats {
        let mut total = self.get.clone();
        total.merge(&self.put);
        total
    }
}

/// Counts of an operation (or of all of them), as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Requests sent (or attempted: a failed connection counts as a failed request).
    pub requests: u64,
    /// Requests answered with a 2xx.
    pub ok: u64,
    pub errors: ErrorCounts,
    /// Latency of the 2xx answers: from the send, or with `--rate` from when it was due.
    pub latency_us: Percentiles,
    /// With `--rate` only: the 2xx answers' time from the actual send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_us: Option<Percentiles>,
}

/// Failed requests by cause.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ErrorCounts {
    pub total: u64,
    /// Non-2xx answers by status code (a string, since JSON object keys are strings).
    pub status: BTreeMap<String, u64>,
    /// Of those, the ones whose JSON body named a `code`, by status then code:
    /// `{"503": {"rebalancing": 3}}`. Answers without one are counted in `status` only.
    pub codes: BTreeMap<String, BTreeMap<String, u64>>,
    pub connect: u64,
    pub io: u64,
    pub timeout: u64,
}

/// Longest error body read for its `code`; kvstore's are about a hundred bytes. A longer one is
/// read to its end but not kept.
pub const MAX_ERROR_BODY: usize = 4096;

/// Longest `code` counted; anything longer is not one of kvstore's codes (which are short
/// snake_case words) and is counted by status only.
const MAX_CODE: usize = 64;

/// The `code` of a JSON error body such as `{"detail": "...", "code": "rebalancing"}`, if it
/// has a short one.
pub fn error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        code: Option<String>,
    }
    let code = serde_json::from_slice::<ErrorBody>(body).ok()?.code?;
    (!code.is_empty() && code.len() <= MAX_CODE && !code.chars().any(char::is_control))
        .then_some(code)
}

/// Latency percentiles in microseconds; all zero when nothing succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    #[serde(rename = "p99.9")]
    pub p99_9: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Within hdrhistogram's 3-significant-digit precision.
    fn close(actual: u64, expected: u64) -> bool {
        actual.abs_diff(expected) <= expected / 1000 + 1
    }

    #[test]
    fn percentiles_of_uniform_latencies() {
        let mut s = OpStats::default();
        for n in 1..=10_000 {
            s.record_status(200, us(n));
        }
        let p = s.summary().latency_us;
        assert_eq!(p.min, 1);
        assert!(close(p.p50, 5_000), "{p:?}");
        assert!(close(p.p90, 9_000), "{p:?}");
        assert!(close(p.p99, 9_900), "{p:?}");
        assert!(close(p.p99_9, 9_990), "{p:?}");
        assert!(close(p.max, 10_000), "{p:?}");
        assert!((p.mean - 5_000.5).abs() < 10.0, "{p:?}");
        assert!(p.min <= p.p50 && p.p50 <= p.p90 && p.p90 <= p.p99);
        assert!(p.p99 <= p.p99_9 && p.p99_9 <= p.max);
    }

    #[test]
    fn a_slow_tail_shows_only_in_the_high_percentiles() {
        let mut s = OpStats::default();
        for _ in 0..990 {
            s.record_status(200, us(100));
        }
        for _ in 0..10 {
            s.record_status(204, Duration::from_millis(50));
        }
        let p = Percentiles::of(&s.latency);
        assert!(
            close(p.p50, 100) && close(p.p90, 100) && close(p.p99, 100),
            "{p:?}"
        );
        assert!(close(p.p99_9, 50_000) && close(p.max, 50_000), "{p:?}");
    }

    #[test]
    fn only_2xx_answers_are_timed_and_errors_are_counted_by_cause() {
        let mut s = OpStats::default();
        s.record_status(200, us(10));
        s.record_status(404, us(1));
        s.record_status(404, us(1));
        s.record_status(503, us(1));
        s.record_failure(Failure::Connect);
        s.record_failure(Failure::Io);
        s.record_failure(Failure::Timeout);
        let sum = s.summary();
        assert_eq!((sum.requests, sum.ok, sum.errors.total), (7, 1, 6));
        assert_eq!(sum.errors.status["404"], 2);
        assert_eq!(sum.errors.status["503"], 1);
        assert_eq!(
            (sum.errors.connect, sum.errors.io, sum.errors.timeout),
            (1, 1, 1)
        );
        assert_eq!(s.latency.len(), 1);
        assert!(close(sum.latency_us.min, 10));
    }

    #[test]
    fn error_codes_are_counted_under_their_status() {
        let mut a = OpStats::default();
        a.record_answer(503, Some("rebalancing"), us(1));
        a.record_answer(503, Some("ring_behind"), us(1));
        a.record_answer(503, None, us(1));
        let mut b = OpStats::default();
        b.record_answer(503, Some("rebalancing"), us(1));
        b.record_answer(404, Some("not_found"), us(1));
        // A 2xx's body is never an error, whatever it says.
        b.record_answer(200, Some("rebalancing"), us(5));
        a.merge(&b);
        let errors = a.summary().errors;
        assert_eq!(errors.total, 5);
        assert_eq!(errors.status["503"], 4);
        assert_eq!(errors.codes["503"]["rebalancing"], 2);
        assert_eq!(errors.codes["503"]["ring_behind"], 1);
        assert_eq!(errors.codes["404"]["not_found"], 1);
        assert_eq!(errors.codes.len(), 2);
    }

    #[test]
    fn the_code_is_read_from_json_error_bodies_only() {
        let code = |body: &str| error_code(body.as_bytes());
        assert_eq!(
            code(r#"{"detail":"moving","code":"rebalancing","server_used":"s1"}"#).as_deref(),
            Some("rebalancing")
        );
        assert_eq!(code(r#"{"detail":"no code"}"#), None);
        assert_eq!(code(r#"{"code":7}"#), None);
        assert_eq!(code(r#"{"code":""}"#), None);
        assert_eq!(code(&format!(r#"{{"code":"{}"}}"#, "x".repeat(65))), None);
        assert_eq!(
            code(
                r#"{"code":"a
b"}"#
            ),
            None
        );
        assert_eq!(code("Service Unavailable"), None);
        assert_eq!(code(""), None);
    }

    #[test]
    fn nothing_recorded_gives_zero_percentiles() {
        let mut s = OpStats::default();
        s.record_failure(Failure::Connect);
        assert_eq!(s.summary().latency_us, Percentiles::default());
    }

    #[test]
    fn latencies_out_of_range_are_clamped() {
        let mut s = OpStats::default();
        s.record_status(200, Duration::ZERO);
        s.record_status(200, Duration::from_secs(3600));
        let p = s.summary().latency_us;
        assert_eq!(p.min, 1);
        assert!(p.max >= HIGHEST_US && p.max <= HIGHEST_US + HIGHEST_US / 1000);
    }

    #[test]
    fn merging_workers_adds_counts_and_latencies() {
        let mut a = WorkerStats::default();
        let mut b = WorkerStats::default();
        a.op_mut(Op::Get).record_status(200, us(100));
        a.op_mut(Op::Put).record_status(500, us(1));
        b.op_mut(Op::Get).record_status(200, us(300));
        b.op_mut(Op::Put).record_status(201, us(200));
        b.op_mut(Op::Put).record_status(500, us(1));
        a.merge(&b);
        assert_eq!(a.get.ok, 2);
        assert_eq!(a.put.status[&500], 2);
        let total = a.total().summary();
        assert_eq!((total.requests, total.ok, total.errors.total), (5, 3, 2));
        assert!(close(total.latency_us.p50, 200), "{total:?}");
        assert!(close(total.latency_us.max, 300), "{total:?}");
    }
}
