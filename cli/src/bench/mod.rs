//! `kvstore bench`: a load generator for the gateway (or a single server).
//!
//! [`run`] takes a checked [`Config`] and returns a [`Report`]: `connections` workers, each with
//! one HTTP/1.1 connection and one request in flight, send `GET {url}/get/{key}` and
//! `PUT {url}/put/{key}` on uniformly random keys, for a duration or a request count: as fast as
//! the answers come (closed loop), or at a given rate (`--rate`, open loop). A warm-up first
//! writes every key once, so that a GET of a missing key (a 404) is a real error.
//!
//! Modules: [`config`] (flags), [`workload`] (what to send), `runner` (the workers), `wire` (the
//! default HTTP/1.1 client), [`stats`]
//! (histograms and counters), [`report`] (progress line, table, JSON).

pub mod config;
pub mod report;
mod runner;
pub mod stats;
mod wire;
pub mod workload;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::time::MissedTickBehavior;

pub use config::{BenchArgs, Client, Config, Stop};
pub use report::{Progress, Report};

use crate::{Error, Result};
use runner::{Conn, Phase, Shared, lock};
use stats::WorkerStats;
use workload::Workload;

const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the bench described by `config` and reports what it measured. Prints nothing.
///
/// Must be called inside a tokio runtime; a multi-threaded one lets the workers use every core.
pub async fn run(config: &Config) -> Result<Report> {
    run_with(config, |_| {}, std::future::pending()).await
}

/// [`run`], calling `on_progress` once a second during the measured phase, and stopping early
/// (finishing the requests in flight, then reporting) when `stop` completes, e.g. on Ctrl-C.
pub async fn run_with(
    config: &Config,
    mut on_progress: impl FnMut(&Progress),
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Report> {
    config.validate()?;
    let (host, port, path_prefix) = config::parse_url(&config.url)?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|source| Error::Resolve {
            host: host.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| Error::Resolve {
            host: host.clone(),
            source: std::io::Error::other("no address"),
        })?;
    let shared = Arc::new(Shared {
        addr,
        workload: Workload::new(config, &host, port, &path_prefix),
        timeout: config.timeout,
        client: config.client,
        stop: AtomicBool::new(false),
    });
    let stop_task = tokio::spawn({
        let shared = shared.clone();
        async move {
            stop.await;
            shared.stop.store(true, Relaxed);
        }
    });
    let result = phases(config, shared, &mut on_progress).await;
    stop_task.abort();
    result
}

async fn phases(
    config: &Config,
    shared: Arc<Shared>,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Report> {
    let mut conns: Vec<Conn> = (0..config.connections).map(|_| Conn::default()).collect();

    let warmup = if config.warmup {
        let phase = Phase::Warmup {
            next_key: AtomicUsize::new(0),
        };
        let (back, elapsed, stats) =
            run_phase(&shared, phase, Instant::now(), conns, &mut |_| {}).await;
        conns = back;
        let written = stats.put;
        // Interrupted (Ctrl-C) is not a failure: the measured phase then ends at once.
        if written.errors() > 0 {
            return Err(Error::Warmup {
                failed: written.errors(),
                keys: config.keys,
                causes: report::describe_errors(&written.summary().errors),
            });
        }
        Some(report::Warmup {
            keys: config.keys,
            elapsed_secs: elapsed.as_secs_f64(),
        })
    } else {
        None
    };

    let started = Instant::now();
    let phase = Phase::measure(config.stop, started, config.rate, config.connections);
    let (_, elapsed, stats) = run_phase(&shared, phase, started, conns, on_progress).await;
    let elapsed_secs = elapsed.as_secs_f64();
    let total = stats.total().summary();
    Ok(Report {
        config: config.clone(),
        threads: tokio::runtime::Handle::current().metrics().num_workers(),
        warmup,
        interrupted: shared.stop.load(Relaxed),
        elapsed_secs,
        throughput: total.requests as f64 / elapsed_secs,
        total,
        get: stats.get.summary(),
        put: stats.put.summary(),
    })
}

/// Runs one phase on every connection and waits for its end, reporting progress meanwhile.
/// Returns the connections (for the next phase), the phase's length since `started` and what it
/// counted.
async fn run_phase(
    shared: &Arc<Shared>,
    phase: Phase,
    started: Instant,
    conns: Vec<Conn>,
    on_progress: &mut dyn FnMut(&Progress),
) -> (Vec<Conn>, Duration, WorkerStats) {
    let phase = Arc::new(phase);
    let stats: Vec<Arc<Mutex<WorkerStats>>> = conns
        .iter()
        .map(|_| Arc::new(Mutex::new(WorkerStats::default())))
        .collect();
    let workers = conns
        .into_iter()
        .zip(&stats)
        .enumerate()
        .map(|(index, (conn, stats))| {
            tokio::spawn(runner::work(
                shared.clone(),
                phase.clone(),
                index,
                conn,
                stats.clone(),
            ))
        });
    let mut all_done = join_all(workers);
    let mut ticks =
        tokio::time::interval_at((started + PROGRESS_INTERVAL).into(), PROGRESS_INTERVAL);
    // A late tick (a busy machine) measures its real interval rather than bursting.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut previous = (started, 0);
    let conns = loop {
        tokio::select! {
            done = &mut all_done => break done,
            _ = ticks.tick() => {
                let total = snapshot(&stats).total();
                let requests = total.requests();
                let now = Instant::now();
                let interval = now.duration_since(previous.0).as_secs_f64();
                on_progress(&Progress {
                    elapsed: now.duration_since(started),
                    requests,
                    errors: total.errors(),
                    rate: (requests - previous.1) as f64 / interval,
                    p99_us: total.summary().latency_us.p99,
                });
                previous = (now, requests);
            }
        }
    };
    let elapsed = started.elapsed();
    let conns = conns
        .into_iter()
        // A worker only fails by panicking: a bug, surfaced as such.
        .map(|joined| joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
        .collect();
    (conns, elapsed, snapshot(&stats))
}

/// The workers' stats merged, each worker locked only for its own merge.
fn snapshot(stats: &[Arc<Mutex<WorkerStats>>]) -> WorkerStats {
    let mut all = WorkerStats::default();
    for worker in stats {
        all.merge(&lock(worker));
    }
    all
}
