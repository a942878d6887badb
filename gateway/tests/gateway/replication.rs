//! Replication under SIGKILL and SIGSTOP (docs/replication.md), with real server processes:
//! - one dead server of three loses no key: reads fall back to replicas, and the server
//!   catches up on what it missed when it returns;
//! - the fault test: clients put and get through the gateway while a nemesis kills and
//!   restarts servers, or stalls and resumes them; the recorded history and the final state
//!   must pass the checker of `kv_test_support::history`.
//!
//! Run them alone with `cargo test -p kv-gateway --test gateway replication`. The fault test
//! takes `KV_HISTORY_SEED` (printed at start and on failure) and `KV_HISTORY_SECS` (default
//! 12; a long run is `KV_HISTORY_SECS=300`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kv_common::replication::PRIMARY_UNAVAILABLE_HEADER;
use kv_test_support::history::{
    self, CheckOptions, Event, FinalState, Get, GetOutcome, Put, PutOutcome, Recorder,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::wait_until;
use crate::procs::{ProcCluster, value_text};

/// Keeps the first few failures of a phase and counts the rest.
#[derive(Default)]
pub struct Failures(pub BTreeMap<&'static str, Vec<String>>);

impl Failures {
    pub fn add(&mut self, phase: &'static str, what: String) {
        self.0.entry(phase).or_default().push(what);
    }

    pub fn assert_none(&self) {
        let mut text = String::new();
        for (phase, all) in &self.0 {
            let _ = writeln!(text, "{phase}: {} failure(s)", all.len());
            for what in all.iter().take(8) {
                let _ = writeln!(text, "    {what}");
            }
        }
        assert!(self.0.is_empty(), "\n{text}");
    }
}

pub async fn wait_health(cluster: &ProcCluster, name: &str, health: &str) {
    let gw = &cluster.gateway;
    wait_until(&format!("the gateway sees {name} {health}"), || async {
        let servers = gw.servers_with_token().await;
        servers["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == name && m["health"] == health)
    })
    .await;
}

/// `503` codes of a put its primary refused before storing it (`admit_put`).
const REFUSED_UNSTORED: [&str; 4] = [
    "quorum_unavailable",
    "syncing",
    "rebalancing",
    "ring_behind",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_server_keeps_every_key_readable() {
    let cluster = ProcCluster::start(3).await;
    let gw = &cluster.gateway;
    let keys: Vec<String> = (0..150).map(|i| format!("key-{i}")).collect();
    let value = |key: &str, v: u64| format!("{key}-v{v}");
    let mut failures = Failures::default();
    let mut latest: BTreeMap<&str, u64> = BTreeMap::new();
    for v in 1..=2 {
        for key in &keys {
            let r = gw
                .put(&format!("/put/{key}"), json!(value(key, v)))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "put {key} v{v}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["version"], v, "put {key}");
            latest.insert(key, v);
        }
    }

    let dead = 1;
    let dead_name = cluster.names[dead].clone();
    cluster.kill(dead);
    wait_health(&cluster, &dead_name, "down").await;
    let orphans: BTreeSet<&str> = keys
        .iter()
        .filter(|k| cluster.replicas(k)[0] == dead)
        .map(String::as_str)
        .collect();
    assert!(!orphans.is_empty() && orphans.len() < keys.len());

    // Every key reads its latest value; the dead primary's keys say who answered instead.
    for key in &keys {
        let r = gw.get(&format!("/get/{key}")).send().await.unwrap();
        let (status, headers) = (r.status(), r.headers().clone());
        let body: Value = r.json().await.unwrap_or_default();
        if status != 200 || body["version"] != 2 || body["value"] != value(key, 2) {
            failures.add(
                "read with one server dead",
                format!("{key}: {status} {body}"),
            );
            continue;
        }
        let named = headers
            .get(PRIMARY_UNAVAILABLE_HEADER)
            .map(|h| h.to_str().unwrap().to_owned());
        let expected = orphans.contains(key.as_str()).then(|| dead_name.clone());
        if named != expected {
            failures.add(
                "x-kv-primary-unavailable",
                format!("{key}: {named:?}, expected {expected:?}"),
            );
        }
    }

    // Writes: the dead primary's keys wait for it (503), the others get version 3.
    for key in &keys {
        let r = gw
            .put(&format!("/put/{key}"), json!(value(key, 3)))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        if orphans.contains(key.as_str()) {
            if status != 503 {
                failures.add(
                    "put with its primary dead",
                    format!("{key}: {status} {body}"),
                );
            }
        } else if status != 200 || body["version"] != 3 {
            failures.add(
                "put with its primary alive",
                format!("{key}: {status} {body}"),
            );
        } else {
            latest.insert(key, 3);
        }
    }

    // Back on its data: it catches up and holds every version of every key it replicates.
    cluster.restart(dead).await;
    if let Err(e) = cluster.wait_caught_up(Duration::from_secs(30)).await {
        failures.add("catch-up", e);
    }
    let url = cluster.url(dead);
    let mut checked = 0;
    for key in keys.iter().filter(|k| cluster.replicas(k).contains(&dead)) {
        for v in 1..=latest[key.as_str()] {
            checked += 1;
            let r = cluster
                .http
                .get(format!("{url}/get/{key}?version={v}"))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap_or_default();
            if status != 200 || body["value"] != value(key, v) {
                failures.add(
                    "restarted server holds every version",
                    format!("{key} v{v}: {status} {body}"),
                );
            }
        }
    }
    assert!(checked > 150, "{checked}");
    match cluster.status(dead).await {
        Ok(s) if s.lag == 0 && s.synced => {}
        Ok(s) => failures.add("lag", format!("{s:?}")),
        Err(e) => failures.add("lag", e),
    }
    failures.assert_none();
}

/// Settings of the fault test.
pub const CLIENTS: usize = 5;
pub const KEYS: usize = 16;
const DEFAULT_SEED: u64 = 0x6b76_7374_6f72_6531;
const DEFAULT_SECS: u64 = 12;

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// One client: random puts, latest reads and exact reads until `stop`, one at a time.
pub async fn client(
    id: usize,
    url: String,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(id as u64 + 1));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut highest = [0u64; KEYS];
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let k = rng.random_range(0..KEYS);
        let key = format!("h{k}");
        let roll = rng.random_range(0..100);
        let invoked = recorder.now();
        let event = if roll < 45 {
            let value = format!("c{id}-{n}");
            let sent = http
                .put(format!("{url}/put/{key}"))
                .json(&json!({ "value": value }))
                .send()
                .await;
            let outcome = match sent {
                Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                    Ok(body) => match body["version"].as_u64() {
                        Some(version) => PutOutcome::Acked { version },
                        None => PutOutcome::Indeterminate,
                    },
                    Err(_) => PutOutcome::Indeterminate,
                },
                Ok(r) if r.status().is_client_error() => PutOutcome::Failed,
                // Refusals the primary makes before storing anything: the checker holds
                // it to them (the value must never be seen).
                Ok(r) if r.status() == 503 => match r.json::<Value>().await {
                    Ok(body) if REFUSED_UNSTORED.contains(&body["code"].as_str().unwrap_or("")) => {
                        PutOutcome::Failed
                    }
                    _ => PutOutcome::Indeterminate,
                },
                _ => PutOutcome::Indeterminate,
            };
            if let PutOutcome::Acked { version } = outcome {
                highest[k] = highest[k].max(version);
            }
            Event::Put(Put {
                client: id,
                key,
                value,
                invoked,
                completed: recorder.now(),
                outcome,
            })
        } else {
            let version = (roll >= 80).then(|| rng.random_range(1..=highest[k].max(1)));
            let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
            let outcome = match http.get(format!("{url}/get/{key}{query}")).send().await {
                Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                    Ok(body) => match body["version"].as_u64() {
                        Some(version) => GetOutcome::Found {
                            version,
                            value: value_text(&body["value"]),
                        },
                        None => GetOutcome::Unavailable,
                    },
                    Err(_) => GetOutcome::Unavailable,
                },
                Ok(r) if r.status() == 404 => GetOutcome::NotFound,
                _ => GetOutcome::Unavailable,
            };
            if let GetOutcome::Found { version, .. } = outcome {
                highest[k] = highest[k].max(version);
            }
            Event::Get(Get {
                client: id,
                key,
                version,
                invoked,
                completed: recorder.now(),
                outcome,
            })
        };
        recorder.record(event);
        let pause = rng.random_range(0..3);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Every 1-3 s takes a random server down for 0.5-2 s, alternating the two ways: `kill -9`
/// then a restart, and SIGSTOP then SIGCONT (a stalled server: connections open, no
/// answers). Never two down at once (R - W = 1). At least one of each, however short the run.
async fn nemesis(
    cluster: Arc<ProcCluster>,
    deadline: Instant,
    seed: u64,
    faults: Arc<AtomicUsize>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7300);
    while until_next_fault(&mut rng, deadline, &faults).await {
        let done = faults.load(Ordering::SeqCst);
        let victim = rng.random_range(0..cluster.len());
        let name = &cluster.names[victim];
        let down = Duration::from_millis(rng.random_range(500..2_000));
        if done.is_multiple_of(2) {
            println!("nemesis: kill -9 {name}");
            cluster.kill(victim);
            tokio::time::sleep(down).await;
            cluster.restart(victim).await;
        } else {
            println!("nemesis: SIGSTOP {name}");
            cluster.pause(victim);
            tokio::time::sleep(down).await;
            cluster.resume(victim);
        }
        faults.fetch_add(1, Ordering::SeqCst);
        println!("nemesis: {name} is back");
    }
}

/// A nemesis's pause before its next fault, 1-3 s; false when the run is over (the next
/// fault would not end before the deadline and two have happened).
pub async fn until_next_fault(rng: &mut StdRng, deadline: Instant, faults: &AtomicUsize) -> bool {
    let pause = Duration::from_millis(rng.random_range(1_000..3_000));
    let left = deadline.saturating_duration_since(Instant::now());
    if faults.load(Ordering::SeqCst) >= 2 && pause >= left {
        return false;
    }
    tokio::time::sleep(pause.min(left / 2)).await;
    true
}

/// Every member's versions of `keys`, read directly, the primaries, and the final read
/// through the gateway of every acknowledged version.
pub async fn final_state(
    cluster: &ProcCluster,
    keys: &[String],
    events: &[Event],
    failures: &mut Failures,
) -> FinalState {
    let mut state = FinalState::default();
    for i in cluster.members() {
        let name = &cluster.names[i];
        let mut held = BTreeMap::new();
        for key in keys {
            match cluster.versions(i, key).await {
                Ok(listing) if listing.is_empty() => {}
                Ok(listing) => {
                    held.insert(key.clone(), listing);
                }
                Err(e) => failures.add("final state", e),
            }
        }
        state.servers.insert(name.clone(), held);
    }
    for key in keys {
        let list = cluster.replicas(key);
        let primary = cluster.names[list[0]].clone();
        state.primaries.insert(key.clone(), primary);
        let others = list[1..]
            .iter()
            .map(|&i| cluster.names[i].clone())
            .collect();
        state.replicas.insert(key.clone(), others);
    }
    let acked: BTreeSet<(&str, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Put(Put {
                key,
                outcome: PutOutcome::Acked { version },
                ..
            }) => Some((key.as_str(), *version)),
            _ => None,
        })
        .collect();
    for (key, version) in acked {
        let url = format!("{}/get/{key}?version={version}", cluster.gateway.url);
        let read = match cluster.http.get(url).send().await {
            Ok(r) if r.status() == 200 => r
                .json::<Value>()
                .await
                .ok()
                .map(|body| value_text(&body["value"])),
            _ => None,
        };
        state.gateway_reads.insert((key.to_owned(), version), read);
    }
    state
}

/// What a history holds, for the summary line and the not-vacuous checks.
pub struct Counts {
    pub acked: usize,
    pub unknown: usize,
    /// Puts certainly not stored (4xx, or a refusal before storing).
    pub refused: usize,
    pub found: usize,
    pub unavailable: usize,
}

impl Counts {
    pub fn of(events: &[Event]) -> Counts {
        let mut counts = Counts {
            acked: 0,
            unknown: 0,
            refused: 0,
            found: 0,
            unavailable: 0,
        };
        for event in events {
            match event {
                Event::Put(Put { outcome, .. }) => match outcome {
                    PutOutcome::Acked { .. } => counts.acked += 1,
                    PutOutcome::Indeterminate => counts.unknown += 1,
                    PutOutcome::Failed => counts.refused += 1,
                },
                Event::Get(Get { outcome, .. }) => match outcome {
                    GetOutcome::Found { .. } => counts.found += 1,
                    GetOutcome::Unavailable => counts.unavailable += 1,
                    GetOutcome::NotFound => {}
                },
            }
        }
        counts
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_kill9_and_stalls_is_consistent() {
    let cluster = ProcCluster::start(3).await;
    run_history(cluster, nemesis, "kill -9 and SIGSTOP in turn").await;
}

/// The fault test: [`CLIENTS`] clients through the gateway against `nemesis`, which runs
/// until the deadline and counts its faults (at least two are required); then every server
/// is brought back, caught up, and the history and final state are checked.
pub async fn run_history<N, F>(cluster: ProcCluster, nemesis: N, faults_are: &str)
where
    N: FnOnce(Arc<ProcCluster>, Instant, u64, Arc<AtomicUsize>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let seed = env_u64("KV_HISTORY_SEED", DEFAULT_SEED);
    let secs = env_u64("KV_HISTORY_SECS", DEFAULT_SECS);
    println!("history: KV_HISTORY_SEED={seed} KV_HISTORY_SECS={secs}");
    let cluster = Arc::new(cluster);
    let keys: Vec<String> = (0..KEYS).map(|k| format!("h{k}")).collect();
    let recorder = Arc::new(Recorder::new());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let fault_count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (url, recorder) = (cluster.gateway.url.clone(), recorder.clone());
            tokio::spawn(client(id, url, recorder, stop.clone(), seed))
        })
        .collect();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        stopper.store(true, Ordering::SeqCst);
    });
    let faults = tokio::spawn(nemesis(
        cluster.clone(),
        deadline,
        seed,
        fault_count.clone(),
    ));
    for c in clients {
        c.await.unwrap();
    }
    faults.await.unwrap();

    // Quiet: everyone back, caught up; then the final state and the check.
    let mut failures = Failures::default();
    for i in 0..cluster.len() {
        if !cluster.is_running(i) {
            cluster.restart(i).await;
        }
    }
    if let Err(e) = cluster.wait_caught_up(Duration::from_secs(30)).await {
        failures.add("catch-up", e);
    }
    let events = recorder.events();
    let state = final_state(&cluster, &keys, &events, &mut failures).await;
    let report = history::check(&events, &state, CheckOptions::default());

    let Counts {
        acked,
        unknown,
        refused,
        found,
        unavailable,
    } = Counts::of(&events);
    let fault_count = fault_count.load(Ordering::SeqCst);
    println!(
        "history: {} events, {acked} puts acknowledged, {unknown} indeterminate, {refused} \
         refused unstored, {found} reads found, {unavailable} unavailable, {fault_count} faults ({faults_are})",
        events.len()
    );
    println!("{report}");

    // Not vacuous: the load ran and the faults happened.
    let min_acked = 20 * secs as usize;
    if acked < min_acked {
        failures.add(
            "load",
            format!("only {acked} acknowledged puts (want {min_acked})"),
        );
    }
    if fault_count < 2 {
        failures.add("nemesis", format!("{fault_count} fault(s): want 2 or more"));
    }
    for v in &report.violations {
        failures.add("checker", v.to_string());
    }
    if !failures.0.is_empty() {
        println!("history: failed with KV_HISTORY_SEED={seed} KV_HISTORY_SECS={secs}");
    }
    failures.assert_none();
}
