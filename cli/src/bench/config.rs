//! `kvstore bench` flags ([`BenchArgs`], parsed by clap) and the checked [`Config`] the runner
//! takes, so that the library can be driven without a command line (tests, other tools).

use std::time::Duration;

use clap::Args;
use hyper::Uri;
use serde::Serialize;

use crate::{Error, Result};

/// Flags of `kvstore bench` (the gateway URL and `--json` are global flags).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Concurrent connections, one request in flight on each.
    #[arg(short, long, default_value_t = 32)]
    pub connections: usize,

    /// How long to measure: `10s`, `500ms`, `2m`, `1m30s`, or plain seconds (`2.5`).
    /// The default, when neither this nor `--requests` is given, is 10s.
    #[arg(short, long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,

    /// Stop after this many requests instead of after a duration.
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,

    /// Size of the key space: keys are `{key-prefix}0` .. `{key-prefix}{keys-1}`, chosen
    /// uniformly at random.
    #[arg(short, long, default_value_t = 1000)]
    pub keys: usize,

    /// Length of each written value, in characters (ASCII, so also bytes).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,

    /// Fraction of requests that are GETs, 0.0 to 1.0 (0 = PUT only, 1 = GET only).
    #[arg(short, long, default_value_t = 0.5, value_parser = parse_ratio)]
    pub read_ratio: f64,

    /// Prefix of every key, so a bench does not touch other data.
    #[arg(long, default_value = "bench-")]
    pub key_prefix: String,

    /// Write every key once before measuring, so that reads find existing keys (a 404 is then
    /// a real error). On by default when `--read-ratio` > 0.
    #[arg(long, overrides_with = "no_warmup")]
    pub warmup: bool,

    /// Skip the warm-up: reads may then get 404 for keys not written yet.
    #[arg(long, overrides_with = "warmup")]
    pub no_warmup: bool,

    /// A request with no complete answer after this long counts as a timeout error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Runtime worker threads for the load generator; defaults to the number of CPUs.
    #[arg(short, long)]
    pub threads: Option<usize>,

    /// Send at this rate, in requests per second over all connections, instead of each
    /// request as soon as the last answer came (an open-loop load, as wrk2's `-R`). Latency
    /// is then counted from when each request was due, so a stall counts for every request it
    /// held back, not for one (no coordinated omission); the time from sending to the answer
    /// is reported beside it. Each connection still has one request in flight: a rate the
    /// connections cannot carry is not reached, and the report says so.
    #[arg(short = 'R', long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// HTTP client of the workers: `raw` (the bench's own HTTP/1.1 client, wrk-style: one task
    /// per connection and no task switch per request) or `hyper` (hyper's client, which costs
    /// the load generator about half again as much CPU per request). Both read every answer
    /// whole and check its framing.
    #[arg(long, value_enum, default_value_t = Client::Raw)]
    pub client: Client,
}

/// Which HTTP/1.1 client the workers use (see `--client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Client {
    Raw,
    Hyper,
}

impl BenchArgs {
    /// Checks the flags and resolves the defaults that depend on each other.
    pub fn to_config(&self, url: &str) -> Result<Config> {
        let stop = match (self.requests, self.duration) {
            (Some(n), _) => Stop::Requests(n),
            (None, Some(d)) => Stop::Duration(d),
            (None, None) => Stop::Duration(Duration::from_secs(10)),
        };
        let warmup = if self.warmup {
            true
        } else if self.no_warmup {
            false
        } else {
            self.read_ratio > 0.0
        };
        if self.threads == Some(0) {
            return Err(Error::Config("--threads must be at least 1".into()));
        }
        let config = Config {
            url: url.to_owned(),
            connections: self.connections,
            stop,
            keys: self.keys,
            value_size: self.value_size,
            read_ratio: self.read_ratio,
            key_prefix: self.key_prefix.clone(),
            warmup,
            timeout: self.timeout,
            rate: self.rate,
            client: self.client,
        };
        config.validate()?;
        Ok(config)
    }
}

/// When the measured phase ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// Stop sending new requests after this long (requests in flight are finished).
    #[serde(serialize_with = "secs")]
    Duration(Duration),
    /// Send exactly this many requests.
    Requests(u64),
}

/// A checked bench configuration: what [`crate::bench::run`] takes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Base URL of the gateway or server, `http://host:port` with an optional path prefix.
    pub url: String,
    pub connections: usize,
    pub stop: Stop,
    pub keys: usize,
    pub value_size: usize,
    pub read_ratio: f64,
    pub key_prefix: String,
    pub warmup: bool,
    #[serde(serialize_with = "secs")]
    pub timeout: Duration,
    /// Requests per second over all connections (open loop), or `None`: each connection sends
    /// its next request as soon as the last answer came (closed loop).
    pub rate: Option<f64>,
    pub client: Client,
}

impl Config {
    /// A configuration with the command's defaults, for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connections: 32,
            stop: Stop::Duration(Duration::from_secs(10)),
            keys: 1000,
            value_size: 100,
            read_ratio: 0.5,
            key_prefix: "bench-".into(),
            warmup: true,
            timeout: Duration::from_secs(10),
            rate: None,
            client: Client::Raw,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |msg: &str| Err(Error::Config(msg.into()));
        if self.connections == 0 {
            return fail("--connections must be at least 1");
        }
        if self.keys == 0 {
            return fail("--keys must be at least 1");
        }
        if u32::try_from(self.keys).is_err() {
            return fail("--keys must be below 2^32");
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return fail("--read-ratio must be between 0.0 and 1.0");
        }
        match self.stop {
            Stop::Duration(d) if d.is_zero() => return fail("--duration must be positive"),
            Stop::Requests(0) => return fail("--requests must be at least 1"),
            _ => {}
        }
        if self.timeout.is_zero() {
            return fail("--timeout must be positive");
        }
        if self.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return fail("--rate must be a positive number of requests per second");
        }
        Ok(())
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Parses `10s`, `500ms`, `250us`, `2m`, `1h`, `1m30s`, `1.5s`, or plain (fractional) seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 2m, 1m30s or 2.5");
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let unit_len = rest[num_len..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len() - num_len);
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        let scale = match &rest[num_len..num_len + unit_len] {
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(value * scale).map_err(|_| bad())?;
        rest = &rest[num_len + unit_len..];
    }
    if s.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    match s.trim().replace('_', "").parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate: expected requests per second, e.g. 20000"
        )),
    }
}

fn parse_ratio(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a number between 0.0 and 1.0")),
    }
}

/// Checks that `url` is `http://host[:port][/prefix]` and splits it for the runner.
pub(crate) fn parse_url(url: &str) -> Result<(String, u16, String)> {
    let bad = |why: &str| Error::Url {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(bad("only http:// is supported")),
        None => return Err(bad("expected http://host:port")),
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    let prefix = uri.path().trim_end_matches('/').to_owned();
    Ok((host, port, prefix))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn config(args: &[&str]) -> Result<Config> {
        let cmd = Cmd::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map_err(|e| Error::Config(e.to_string()))?;
        cmd.bench.to_config("http://127.0.0.1:8000")
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("10s"), Ok(ms(10_000)));
        assert_eq!(parse_duration("10"), Ok(ms(10_000)));
        assert_eq!(parse_duration("2.5"), Ok(ms(2_500)));
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(ms(120_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        for bad in ["", "s", "10x", "-1", "1s2", "ten", "1..5s", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c, Config::new("http://127.0.0.1:8000"));
        assert_eq!(c.stop, Stop::Duration(Duration::from_secs(10)));
        assert!(c.warmup);
    }

    #[test]
    fn all_flags() {
        let c = config(&[
            "--connections=4",
            "--requests=1000",
            "--keys=50",
            "--value-size=7",
            "--read-ratio=0.9",
            "--key-prefix=x/",
            "--timeout=250ms",
            "--threads=2",
            "--rate=20_000",
        ])
        .unwrap();
        assert_eq!(c.rate, Some(20_000.0));
        assert_eq!(config(&["-R", "1.5"]).unwrap().rate, Some(1.5));
        assert_eq!(c.connections, 4);
        assert_eq!(c.stop, Stop::Requests(1000));
        assert_eq!((c.keys, c.value_size, c.read_ratio), (50, 7, 0.9));
        assert_eq!(c.key_prefix, "x/");
        assert_eq!(c.timeout, Duration::from_millis(250));
    }

    #[test]
    fn warmup_defaults_to_on_only_when_there_are_reads() {
        assert!(config(&["-r", "0.1"]).unwrap().warmup);
        assert!(!config(&["-r", "0"]).unwrap().warmup);
        assert!(config(&["-r", "0", "--warmup"]).unwrap().warmup);
        assert!(!config(&["-r", "1", "--no-warmup"]).unwrap().warmup);
        // The last of the two flags wins.
        assert!(config(&["--no-warmup", "--warmup"]).unwrap().warmup);
    }

    #[test]
    fn rejected_flags() {
        for args in [
            &["--duration=5s", "--requests=10"][..],
            &["--read-ratio=1.5"],
            &["--read-ratio=-0.1"],
            &["--connections=0"],
            &["--keys=0"],
            &["--requests=0"],
            &["--duration=0s"],
            &["--duration=soon"],
            &["--threads=0"],
            &["--timeout=0"],
            &["--rate=0"],
            &["--rate=-5"],
            &["--rate=inf"],
            &["--rate=NaN"],
            &["--rate=fast"],
        ] {
            assert!(config(args).is_err(), "{args:?} should be rejected");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8000").unwrap(),
            ("127.0.0.1".into(), 8000, String::new())
        );
        assert_eq!(
            parse_url("http://localhost/kv/").unwrap(),
            ("localhost".into(), 80, "/kv".into())
        );
        assert_eq!(
            parse_url("http://[::1]:9/").unwrap(),
            ("::1".into(), 9, String::new())
        );
        for bad in ["https://x", "127.0.0.1:8000", "http://x/?a=b", "not a url"] {
            assert!(parse_url(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
