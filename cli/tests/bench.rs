//! `kvstore bench` against a tiny in-process axum store on 127.0.0.1:0: the library function and
//! the binary, on a healthy server, a failing one and no server at all.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use kvstore::bench::stats::Summary;
use kvstore::bench::{self, Client, Config, Report, Stop};
use tokio::net::TcpListener;

/// What the test server saw, for checking the bench against it.
#[derive(Default)]
struct Store {
    values: Mutex<HashMap<String, Bytes>>,
    puts: AtomicU64,
    gets: AtomicU64,
    /// Hold the first PUT this long before answering (a stall).
    stall_first_put: Option<Duration>,
    /// Answer every PUT with 500 (a broken server): every other one with a JSON error body
    /// naming a code, as kvstore's are, the rest with an empty body.
    fail_puts: bool,
}

async fn put_key(
    State(store): State<Arc<Store>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let n = store.puts.fetch_add(1, Ordering::Relaxed);
    if let Some(stall) = store.stall_first_put.filter(|_| n == 0) {
        tokio::time::sleep(stall).await;
    }
    if store.fail_puts {
        let body = if n % 2 == 0 {
            r#"{"detail":"the disk is full","code":"storage_error"}"#
        } else {
            ""
        };
        return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
    }
    let json: serde_json::Value = serde_json::from_slice(&body).expect("PUT body is JSON");
    assert!(
        json["value"].is_string(),
        "PUT body is {{\"value\": \"...\"}}"
    );
    store.values.lock().unwrap().insert(key, body);
    StatusCode::CREATED.into_response()
}

async fn get_key(
    State(store): State<Arc<Store>>,
    Path(key): Path<String>,
) -> Result<Bytes, StatusCode> {
    store.gets.fetch_add(1, Ordering::Relaxed);
    store
        .values
        .lock()
        .unwrap()
        .get(&key)
        .cloned()
        .ok_or(StatusCode::NOT_FOUND)
}

/// Serves `store` on a free loopback port; returns its base URL.
async fn serve(store: Arc<Store>) -> String {
    let app = Router::new()
        .route("/put/{key}", put(put_key))
        .route("/get/{key}", get(get_key))
        .with_state(store);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Both HTTP clients of the bench must count the same things.
const CLIENTS: [Client; 2] = [Client::Raw, Client::Hyper];

fn config(url: &str, stop: Stop) -> Config {
    Config {
        connections: 4,
        stop,
        keys: 100,
        value_size: 32,
        key_prefix: "t/é ".into(),
        ..Config::new(url)
    }
}

/// PUTs only, no warm-up, at `rate` requests a second over `connections` (`--rate`).
fn paced_puts(url: &str, rate: f64, connections: usize, stop: Stop) -> Config {
    Config {
        rate: Some(rate),
        connections,
        read_ratio: 0.0,
        warmup: false,
        ..config(url, stop)
    }
}

fn assert_percentiles_ordered(s: &Summary) {
    let p = s.latency_us;
    assert!(p.min >= 1, "{p:?}");
    assert!(p.min <= p.p50 && p.p50 <= p.p90 && p.p90 <= p.p99, "{p:?}");
    assert!(p.p99 <= p.p99_9 && p.p99_9 <= p.max, "{p:?}");
    assert!(p.mean >= p.min as f64 && p.mean <= p.max as f64, "{p:?}");
}

fn assert_healthy(report: &Report) {
    let t = &report.total;
    assert!(t.requests > 0);
    assert_eq!(t.errors.total, 0, "{:?}", t.errors);
    assert_eq!(t.ok, t.requests);
    assert_eq!(t.requests, report.get.requests + report.put.requests);
    for s in [&report.total, &report.get, &report.put] {
        if s.requests == 0 {
            assert_eq!(s.latency_us, Default::default());
            continue;
        }
        assert_percentiles_ordered(s);
    }
    let expected = t.requests as f64 / report.elapsed_secs;
    assert!(
        (report.throughput - expected).abs() < 1e-6 * expected,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_run_reports_sane_numbers() {
    for client in CLIENTS {
        one_second_run(client).await;
    }
}

async fn one_second_run(client: Client) {
    let store = Arc::new(Store::default());
    let url = serve(store.clone()).await;
    let one_second = Config {
        client,
        ..config(&url, Stop::Duration(Duration::from_secs(1)))
    };
    let report = bench::run(&one_second).await.unwrap();
    assert_eq!(report.config.client, client);

    assert_healthy(&report);
    assert!(
        report.get.requests > 0 && report.put.requests > 0,
        "{report:?}"
    );
    // Reads hit only written keys: the warm-up wrote all of them, each once.
    let warmup = report.warmup.expect("warm-up is on when there are reads");
    assert_eq!(warmup.keys, 100);
    assert_eq!(store.values.lock().unwrap().len(), 100);
    assert!(
        store.values.lock().unwrap().contains_key("t/é 99"),
        "keys are percent-encoded"
    );
    assert_eq!(
        store.puts.load(Ordering::Relaxed),
        100 + report.put.requests
    );
    assert_eq!(store.gets.load(Ordering::Relaxed), report.get.requests);
    // Ends soon after the duration: requests in flight finish, nothing more.
    assert!(
        (1.0..3.0).contains(&report.elapsed_secs),
        "{}",
        report.elapsed_secs
    );
    assert!(report.threads >= 1);
    assert!(!report.interrupted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_comes_every_second_and_a_stop_signal_ends_the_run_early() {
    let url = serve(Arc::new(Store::default())).await;
    let mut progress = Vec::new();
    let stop = tokio::time::sleep(Duration::from_millis(1600));
    let long = Config {
        read_ratio: 0.0,
        warmup: false,
        ..config(&url, Stop::Duration(Duration::from_secs(60)))
    };
    let report = bench::run_with(&long, |p| progress.push(*p), stop)
        .await
        .unwrap();

    assert!(report.interrupted);
    assert_healthy(&report);
    assert!(report.elapsed_secs < 5.0, "{}", report.elapsed_secs);
    // The stop came 1.6 s after the start: one tick (two on a very slow machine).
    assert!(matches!(progress.len(), 1 | 2), "{progress:?}");
    let p = progress[0];
    assert!(
        p.requests > 0 && p.requests <= report.total.requests,
        "{p:?}"
    );
    assert!(p.rate > 0.0 && p.p99_us > 0 && p.errors == 0, "{p:?}");
    assert!(p.elapsed >= Duration::from_secs(1), "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_count_is_exact_and_the_mix_follows_the_read_ratio() {
    for client in CLIENTS {
        request_count(client).await;
    }
}

async fn request_count(client: Client) {
    let store = Arc::new(Store::default());
    let url = serve(store.clone()).await;

    let reads_only = Config {
        read_ratio: 1.0,
        client,
        ..config(&url, Stop::Requests(500))
    };
    let report = bench::run(&reads_only).await.unwrap();
    assert_healthy(&report);
    assert_eq!((report.total.requests, report.get.requests), (500, 500));

    let writes_only = Config {
        read_ratio: 0.0,
        warmup: false,
        client,
        ..config(&url, Stop::Requests(300))
    };
    let puts_before = store.puts.load(Ordering::Relaxed);
    let report = bench::run(&writes_only).await.unwrap();
    assert_healthy(&report);
    assert!(report.warmup.is_none());
    assert_eq!((report.total.requests, report.put.requests), (300, 300));
    assert_eq!(store.puts.load(Ordering::Relaxed) - puts_before, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_2xx_answers_are_counted_by_status_and_code_and_not_timed() {
    for client in CLIENTS {
        non_2xx(client).await;
    }
}

async fn non_2xx(client: Client) {
    let store = Arc::new(Store {
        fail_puts: true,
        ..Store::default()
    });
    let url = serve(store).await;

    let writes = Config {
        read_ratio: 0.0,
        warmup: false,
        client,
        ..config(&url, Stop::Requests(200))
    };
    let report = bench::run(&writes).await.unwrap();
    assert_eq!(report.total.requests, 200);
    assert_eq!(report.total.ok, 0);
    assert_eq!(report.total.errors.status["500"], 200);
    // Half of them named their code in a JSON body; the empty ones are counted by status only.
    assert_eq!(report.put.errors.codes["500"]["storage_error"], 100);
    assert_eq!(report.total.errors.codes["500"].len(), 1);
    assert!(report.all_failed());
    assert_eq!(report.total.latency_us.max, 0, "failures are not timed");

    // With reads, the warm-up fails first: measuring 404s would be meaningless.
    let reads = Config {
        client,
        ..config(&url, Stop::Requests(10))
    };
    let err = bench::run(&reads).await.unwrap_err();
    assert!(
        matches!(err, kvstore::Error::Warmup { failed: 100, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("HTTP 500: 100 (storage_error 50, no code 50)"),
        "{err}"
    );
}

/// `--rate`: exactly the requests due before the end are sent, none before it is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_sends_the_requests_due_in_the_run_and_no_sooner() {
    let store = Arc::new(Store::default());
    let url = serve(store.clone()).await;
    let paced = paced_puts(&url, 300.0, 4, Stop::Duration(Duration::from_secs(1)));
    let report = bench::run(&paced).await.unwrap();
    assert_healthy(&report);
    // Due at 0, 1/300 s, ... 299/300 s: 300 in the second, however fast the server.
    assert_eq!(report.total.requests, 300);
    assert_eq!(store.puts.load(Ordering::Relaxed), 300);
    assert!(report.elapsed_secs >= 299.0 / 300.0, "{report:?}");
    assert!(report.total.service_us.is_some());
    assert_eq!(
        serde_json::to_value(&report).unwrap()["config"]["rate"],
        300.0
    );
    assert!(report.human().contains("rate: 300 req/s asked"));
    assert!(!report.human().contains("NOT REACHED"));

    // Without a rate there is no separate service time.
    let closed = bench::run(&config(&url, Stop::Requests(50))).await.unwrap();
    assert!(closed.total.service_us.is_none());
    assert!(
        serde_json::to_value(&closed).unwrap()["total"]
            .get("service_us")
            .is_none()
    );
}

/// A stall of 300 ms: under `--rate` every request it held back counts the wait (latency from
/// when it was due), while the service time shows one slow answer only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_rate_a_stall_counts_for_every_request_it_held_back() {
    let store = Arc::new(Store {
        stall_first_put: Some(Duration::from_millis(300)),
        ..Store::default()
    });
    let url = serve(store.clone()).await;
    let paced = paced_puts(&url, 400.0, 2, Stop::Requests(200));
    let report = bench::run(&paced).await.unwrap();
    assert_healthy(&report);
    let latency = report.put.latency_us;
    let service = report.put.service_us.unwrap();
    // The stalled connection had a request due every 5 ms: about 60 waited behind the stall,
    // from 300 ms down to nothing, so a tenth of the 200 waited 150 ms or more.
    assert!(latency.max >= 290_000, "{latency:?}");
    assert!(latency.p90 >= 100_000, "{latency:?}");
    // Sent to an idle fake server, all but the stalled one are answered at once.
    assert!(service.max >= 290_000, "{service:?}");
    assert!(service.p90 < 100_000, "{service:?}");
}

/// At a slow rate a worker sleeps long between requests; a stop still ends the run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_a_slow_paced_run_at_once() {
    let url = serve(Arc::new(Store::default())).await;
    let slow = paced_puts(&url, 0.2, 2, Stop::Duration(Duration::from_secs(60)));
    let stop = tokio::time::sleep(Duration::from_millis(300));
    let report = bench::run_with(&slow, |_| {}, stop).await.unwrap();
    assert!(report.interrupted);
    // One request due at once; the next at 5 s, never sent.
    assert_eq!(report.total.requests, 1);
    assert!(report.elapsed_secs < 2.0, "{}", report.elapsed_secs);
}

/// A rate the connections cannot carry is reported as not reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_out_of_reach_is_reported() {
    let store = Arc::new(Store {
        stall_first_put: Some(Duration::from_millis(500)),
        ..Store::default()
    });
    let url = serve(store).await;
    let paced = paced_puts(&url, 1000.0, 1, Stop::Duration(Duration::from_millis(400)));
    let report = bench::run(&paced).await.unwrap();
    // One connection, stalled past the run's end: it sent one request of the 400 due.
    assert_eq!(report.total.requests, 1);
    let table = report.human();
    assert!(table.contains("NOT REACHED"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_gives_connect_errors() {
    // A port that was free a moment ago: nothing listens there.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);

    for client in CLIENTS {
        let writes = Config {
            read_ratio: 0.0,
            warmup: false,
            client,
            ..config(&url, Stop::Requests(20))
        };
        let report = bench::run(&writes).await.unwrap();
        assert_eq!(report.total.requests, 20);
        assert_eq!(report.total.errors.connect, 20, "{client:?}");
        assert!(report.all_failed());
    }
}

/// The binary: `--json` prints one parsable object on stdout, exit code 0; and a run where every
/// request fails exits non-zero.
#[test]
fn the_binary_prints_json_and_fails_when_every_request_fails() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = Arc::new(Store::default());
    let url = runtime.block_on(serve(store));
    let bin = env!("CARGO_BIN_EXE_kvstore");

    let out = Command::new(bin)
        .args([
            "bench", "--json", "--url", &url, "-n", "200", "-c", "2", "-k", "10",
        ])
        .args(["--threads", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total"]["requests"], 200);
    assert_eq!(json["total"]["ok"], 200);
    assert_eq!(json["threads"], 1);
    assert_eq!(json["config"]["client"], "raw");

    let out = Command::new(bin)
        .args(["bench", "--json", "--url", &url, "-n", "100", "-c", "2"])
        .args(["-k", "10", "--client", "hyper"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["config"]["client"], "hyper");
    assert_eq!(json["total"]["ok"], 100);

    let out = Command::new(bin)
        .args(["bench", "-n", "50", "-c", "2", "-k", "10", "--url", &url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("measured: 50 requests"), "{table}");

    let out = Command::new(bin)
        .env("KVSTORE_URL", "http://127.0.0.1:1")
        .args(["bench", "-n", "5", "-c", "1", "--read-ratio", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("every request failed (connect: 5)"),
        "{stderr}"
    );
}
