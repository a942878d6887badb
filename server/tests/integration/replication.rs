//! Replication between real servers on 127.0.0.1 (in-process, each on its own listener):
//! quorum writes, idempotent and conflicting replica writes, the change feed, catch-up after
//! a restart, and the "syncing" gate of a server whose database is new.

use std::time::{Duration, Instant};

use kv_common::replication::{ChangesResponse, ReplicationStatus};
use kv_common::ring::Ring;
use kv_server::ServerConfig;
use kv_server::config::Peer;
use kv_server::store::SyncMode;
use serde_json::{Value, json};

use crate::support::Node;

const NAMES: [&str; 3] = ["r0", "r1", "r2"];

struct Cluster {
    nodes: Vec<Node>,
    /// The ring: the first `members` nodes.
    peers: Vec<Peer>,
    factor: usize,
    http: reqwest::Client,
    _root: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = NAMES
            .iter()
            .map(|name| Node::new(root.path().join(name)))
            .collect();
        let mut cluster = Cluster {
            nodes,
            peers: Vec::new(),
            factor: 3,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _root: root,
        };
        cluster.set_members(NAMES.len());
        cluster
    }

    /// The ring is made of the first `n` servers from their next start on.
    fn set_members(&mut self, n: usize) {
        self.peers = self.nodes[..n]
            .iter()
            .zip(NAMES)
            .map(|(n, name)| Peer {
                name: name.into(),
                url: format!("http://127.0.0.1:{}", n.port),
            })
            .collect();
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    fn index(&self, name: &str) -> usize {
        NAMES.iter().position(|n| *n == name).unwrap()
    }

    async fn start(&mut self, i: usize) {
        self.nodes[i]
            .start(NAMES[i], self.peers.clone(), self.factor, &self.http)
            .await;
    }

    /// Starts every server and waits until they have seen each other: a new cluster serves
    /// once each new database has caught up with every peer (there is nothing to fetch).
    async fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i).await;
        }
        self.wait_caught_up(&[0, 1, 2]).await;
    }

    async fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }

    async fn stop(&mut self, i: usize) {
        self.nodes[i].stop().await;
    }

    async fn put(&self, i: usize, key: &str, value: Value) -> reqwest::Response {
        self.http
            .put(format!("{}/put/{key}", self.url(i)))
            .json(&json!({ "value": value }))
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, i: usize, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url(i)))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// The body of `GET path` on server `i`, as text.
    async fn text(&self, i: usize, path: &str) -> String {
        let r = self.http.get(format!("{}{path}", self.url(i))).send();
        r.await.unwrap().text().await.unwrap()
    }

    /// Every server's count of commits, from its metrics.
    async fn commits(&self) -> Vec<u64> {
        let mut counts = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let text = self.text(i, "/metrics").await;
            let count = text
                .lines()
                .find_map(|l| l.strip_prefix("kv_server_sqlite_commit_seconds_count "))
                .unwrap_or_else(|| panic!("no commit count in the metrics of {name}"));
            counts.push(count.trim().parse::<f64>().unwrap() as u64);
        }
        counts
    }

    async fn status(&self, i: usize) -> ReplicationStatus {
        let (code, body) = self.get(i, "/internal/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// Waits until every running server is synced and has pulled everything every other
    /// running server holds (its cursor towards each reached that peer's own head).
    async fn wait_caught_up(&self, running: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut seen = Vec::new();
            for &i in running {
                seen.push(self.status(i).await);
            }
            let done = seen.iter().all(|s| {
                s.synced
                    && s.lag == 0
                    && s.peers.iter().all(|p| {
                        p.last_error.is_none()
                            && seen
                                .iter()
                                .find(|other| other.name == p.name)
                                .is_none_or(|other| p.cursor >= other.head)
                    })
            });
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replication did not catch up: {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ring() -> Ring {
    Ring::new(NAMES, kv_common::ring::DEFAULT_VNODES)
}

#[tokio::test]
async fn growing_the_ring_moves_every_version_to_the_new_owners() {
    // R = 1: each key lives on its primary alone, so a key whose primary changes is only
    // readable at its new owner if its versions were moved there.
    let mut c = Cluster::new();
    c.factor = 1;
    c.set_members(2);
    c.start(0).await;
    c.start(1).await;
    c.wait_caught_up(&[0, 1]).await;
    let before = Ring::new(NAMES[..2].iter().copied(), kv_common::ring::DEFAULT_VNODES);
    let keys: Vec<String> = (0..60).map(|i| format!("grow-{i}")).collect();
    for key in &keys {
        let owner = c.index(before.owner(key).unwrap());
        for v in 1..=2 {
            let r = c.put(owner, key, json!(format!("{key}/{v}"))).await;
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    }
    c.stop(0).await;
    c.stop(1).await;
    // Restart as a ring of three: every server re-reads its peers before serving.
    c.set_members(3);
    c.start_all().await;
    let after = ring();
    let mut moved = 0;
    for key in &keys {
        let owner = after.owner(key).unwrap();
        moved += usize::from(owner != before.owner(key).unwrap());
        let i = c.index(owner);
        for v in 1..=2u64 {
            let (code, body) = c.get(i, &format!("/get/{key}?version={v}")).await;
            assert_eq!(
                (code, &body["value"]),
                (200, &json!(format!("{key}/{v}"))),
                "{key} on {owner}"
            );
        }
        // The new owner continues the history: no second version 1.
        let r = c.put(i, key, json!("next")).await;
        assert_eq!(r.json::<Value>().await.unwrap()["version"], 3, "{key}");
    }
    assert!(moved > 5, "only {moved} keys changed owner");
    c.stop_all().await;
}

/// A key whose primary is `primary`.
fn key_of(primary: &str, n: usize) -> String {
    let ring = ring();
    (0..)
        .map(|i| format!("k{n}-{i}"))
        .find(|k| ring.owner(k) == Some(primary))
        .unwrap()
}

#[tokio::test]
async fn a_put_is_confirmed_by_a_quorum_and_reaches_every_replica() {
    let mut c = Cluster::new();
    c.start_all().await;
    let key = key_of("r0", 0);
    let r = c.put(0, &key, json!({"n": 1})).await;
    assert_eq!(r.status(), 200);
    let acked: Vec<String> = r.headers()["x-kv-acked-by"]
        .to_str()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(acked[0], "r0");
    assert!(acked.len() >= 2, "{acked:?}");
    // Beyond the quorum, the third copy arrives shortly after.
    c.wait_caught_up(&[0, 1, 2]).await;
    for i in 0..3 {
        let (code, body) = c.get(i, &format!("/get/{key}")).await;
        assert_eq!(
            (code, &body["value"], &body["version"]),
            (200, &json!({"n": 1}), &json!(1))
        );
    }
    // Only the primary takes client writes: the ring says who that is.
    let r = c.put(1, &key, json!(2)).await;
    assert_eq!(r.status(), 421);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_primary");
    assert!(
        body["detail"].as_str().unwrap().contains("'r0' is"),
        "{body}"
    );
    // The gateway's quorum header is honoured, and checked.
    let r = c
        .http
        .put(format!("{}/put/{key}", c.url(0)))
        .header("x-kv-write-quorum", "3")
        .json(&json!({"value": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-kv-acked-by"]
            .to_str()
            .unwrap()
            .split(',')
            .count(),
        3
    );
    let r = c
        .http
        .put(format!("{}/put/{key}", c.url(0)))
        .header("x-kv-write-quorum", "zero")
        .json(&json!({"value": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    c.stop_all().await;
}

#[tokio::test]
async fn a_key_request_meant_for_another_server_is_refused_and_stores_nothing() {
    let mut c = Cluster::new();
    c.start_all().await;
    let key = key_of("r0", 0);
    let request = |method: reqwest::Method, path: String, to: &str| {
        c.http
            .request(method, format!("{}{path}", c.url(0)))
            .header("x-kv-to", to)
    };
    // Meant for r1 (whose old address r0 now has): refused before anything is read or stored.
    let r = request(reqwest::Method::PUT, format!("/put/{key}"), "r1")
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "wrong_server", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("r0"), "{body}");
    // Nor are its statistics shown as r1's.
    let paths = [
        format!("/get/{key}"),
        format!("/versions/{key}"),
        "/cache/stats".to_owned(),
        "/db/stats".to_owned(),
    ];
    for path in &paths {
        let r = request(reqwest::Method::GET, path.clone(), "r1");
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 421, "{path}");
    }
    assert_eq!(c.get(0, &format!("/get/{key}")).await.0, 404);

    // Meant for r0 itself, or naming no one (a client straight to the server): served.
    let r = request(reqwest::Method::PUT, format!("/put/{key}"), "r0")
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in &paths[..] {
        let r = request(reqwest::Method::GET, path.clone(), "r0");
        assert_eq!(r.send().await.unwrap().status(), 200, "{path}");
    }
    assert_eq!(c.get(0, &format!("/get/{key}")).await.0, 200);
    c.stop_all().await;
}

#[tokio::test]
async fn replica_writes_are_idempotent_and_a_different_value_is_refused() {
    let mut c = Cluster::new();
    c.start_all().await;
    let record = json!({"from": "r0", "records": [
        {"key": "k", "version": 1, "value": {"a": 1}, "timestamp": 1700000000.5},
        {"key": "k", "version": 2, "value": [1, 2], "timestamp": 1700000001.0},
    ]});
    let send = |body: Value| {
        c.http
            .post(format!("{}/internal/replicate", c.url(1)))
            .json(&body)
            .send()
    };
    let r = send(record.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"stored": 2, "duplicates": 0})
    );
    let r = send(record).await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"stored": 0, "duplicates": 2})
    );
    // Version 2 with another value: refused and reported; version 3 in the same batch is kept.
    let r = send(json!({"from": "r0", "records": [
        {"key": "k", "version": 2, "value": "other", "timestamp": 1.0},
        {"key": "k", "version": 3, "value": 3, "timestamp": 1700000002.0},
    ]}))
    .await
    .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "replica_conflict");
    assert_eq!(body["conflicts"], json!([{"key": "k", "version": 2}]));
    assert_eq!(body["stored"], 1);
    // The replica serves exactly what the primary assigned, timestamps included.
    let (_, v2) = c.get(1, "/get/k?version=2").await;
    assert_eq!(v2["value"], json!([1, 2]));
    assert_eq!(v2["timestamp"].as_f64(), Some(1700000001.0));
    let (_, latest) = c.get(1, "/get/k").await;
    assert_eq!(latest["version"], 3);
    let (code, metrics) = (
        200,
        c.http
            .get(format!("{}/metrics", c.url(1)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(code, 200);
    assert!(
        metrics.contains("kv_server_replica_conflicts_total 1"),
        "{metrics}"
    );
    // Bad records are a 400, not a 500.
    let r = send(
        json!({"from": "r0", "records": [{"key": "", "version": 1, "value": 1, "timestamp": 1.0}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let r = send(json!({"from": "r0", "records": [{"key": "k", "version": 0, "value": 1, "timestamp": 1.0}]}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    c.stop_all().await;
}

#[tokio::test]
async fn the_change_feed_gives_each_peer_only_its_keys() {
    let mut c = Cluster::new();
    c.start_all().await;
    let ring = ring();
    let mut keys = Vec::new();
    for n in 0..30 {
        let key = key_of("r0", n);
        assert_eq!(c.put(0, &key, json!(n)).await.status(), 200);
        keys.push(key);
    }
    // With R = 3 on 3 servers every peer holds every key; with R = 2 only some.
    let text = c
        .text(0, "/internal/changes?after=0&for=r1&limit=1000")
        .await;
    let page: ChangesResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(page.records.len(), 30);
    assert_eq!((page.next, page.head), (30, 30));
    assert!(page.records.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(keys.iter().all(|k| ring.replicates("r1", k, 3)));
    let (code, body) = c.get(0, "/internal/changes?after=10&for=r1&limit=5").await;
    assert_eq!(code, 200);
    assert_eq!(body["records"][0]["seq"], 11);
    assert_eq!(body["next"], 15);
    let (code, body) = c.get(0, "/internal/changes?after=0").await;
    assert_eq!(
        (code, body["code"].as_str()),
        (400, Some("missing_parameter"))
    );
    c.stop_all().await;
}

#[tokio::test]
async fn a_restarted_replica_catches_up_and_lag_returns_to_zero() {
    let mut c = Cluster::new();
    c.start_all().await;
    c.stop(2).await;
    // r2 is down: keys of r0 still reach their quorum (r0 + r1).
    let mut written = Vec::new();
    for n in 0..40 {
        let key = key_of("r0", n);
        for v in 0..3 {
            let r = c.put(0, &key, json!(format!("{n}-{v}"))).await;
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
        written.push(key);
    }
    let behind = c.status(0).await;
    assert!(
        behind
            .peers
            .iter()
            .any(|p| p.name == "r2" && p.last_error.is_some())
    );
    c.start(2).await;
    c.wait_caught_up(&[0, 1, 2]).await;
    for key in &written {
        for v in 1..=3u64 {
            let (code, body) = c.get(2, &format!("/get/{key}?version={v}")).await;
            assert_eq!(code, 200, "{key} v{v}: {body}");
        }
        let (_, latest) = c.get(2, &format!("/get/{key}")).await;
        assert_eq!(latest["version"], 3, "{key}");
    }
    let status = c.status(2).await;
    assert_eq!(status.lag, 0);
    assert!(status.synced);

    // Caught up and idle: the pullers keep asking (every 50 ms here) and find nothing, and
    // no server commits for it (each used to store its unchanged cursors, with an fsync).
    let before = c.commits().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.commits().await, before, "idle servers committed");
    c.stop_all().await;
}

/// A cluster where r2's key (returned) has versions 0, 1, 2 (as values) on every server,
/// then r2 and r1 are stopped.
async fn three_versions_then_r2_and_r1_down() -> (Cluster, String) {
    let mut c = Cluster::new();
    c.start_all().await;
    let key = key_of("r2", 0);
    for v in 0..3 {
        assert_eq!(c.put(2, &key, json!(v)).await.status(), 200);
    }
    c.wait_caught_up(&[0, 1, 2]).await;
    c.stop(2).await;
    c.stop(1).await;
    (c, key)
}

#[tokio::test]
async fn a_server_with_a_new_database_serves_nothing_until_it_caught_up() {
    // r2 loses its disk; r1 is down while it comes back, so r2 cannot know what r1 holds.
    let (mut c, key) = three_versions_then_r2_and_r1_down().await;
    std::fs::remove_dir_all(&c.nodes[2].dir).unwrap();
    c.start(2).await;
    let (code, body) = c.get(2, &format!("/get/{key}")).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (503, Some("syncing")),
        "{body}"
    );
    let r = c.put(2, &key, json!("forked?")).await;
    assert_eq!(
        r.status(),
        503,
        "a new database must not assign version 1 again"
    );
    let health: Value = c.get(2, "/health").await.1;
    assert_eq!(health["replication"]["synced"], false);
    // What an alert watches (`KvstoreServerNotSynced`): the gauge says what /health says.
    let metrics = c.text(2, "/metrics").await;
    assert!(
        metrics.contains("\nkv_server_replication_synced 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nkv_server_ring_transition 0\n"),
        "{metrics}"
    );
    // r1 returns: r2 pulls from both and serves again, with the history intact.
    c.start(1).await;
    c.wait_caught_up(&[0, 1, 2]).await;
    let metrics = c.text(2, "/metrics").await;
    assert!(
        metrics.contains("\nkv_server_replication_synced 1\n"),
        "{metrics}"
    );
    let (code, body) = c.get(2, &format!("/get/{key}")).await;
    assert_eq!((code, &body["version"]), (200, &json!(3)));
    let r = c.put(2, &key, json!("next")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 4);
    assert_eq!(c.index("r2"), 2);
    c.stop_all().await;
}

/// The instance id the database in `dir` carries.
fn instance_of(dir: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open(dir.join(kv_server::store::DB_FILE)).unwrap();
    conn.query_row(
        "SELECT value FROM kv_meta WHERE name = 'instance'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn a_cleaned_server_is_a_new_database_to_its_peers_and_forks_nothing() {
    // `kv-server clean` on r2 alone, with r1 down while r2 comes back: r2 must not serve
    // (its peers hold versions 1 to 3 of its key) and must not give out version 1 again.
    let (mut c, key) = three_versions_then_r2_and_r1_down().await;
    let old_instance = instance_of(&c.nodes[2].dir);
    let args = kv_server::clean::CleanArgs {
        data_dir: c.nodes[2].dir.clone(),
        dry_run: false,
        yes: true,
    };
    let outcome = kv_server::clean::run(&args, &mut std::io::empty(), &mut std::io::sink());
    assert!(
        matches!(
            outcome,
            Ok(kv_server::clean::CleanOutcome::Cleaned {
                cleaned: 1,
                failed: 0
            })
        ),
        "{outcome:?}"
    );
    c.start(2).await;
    let r = c.put(2, &key, json!("forked?")).await;
    assert_eq!(
        r.status(),
        503,
        "a cleaned database must not assign version 1 again"
    );
    let (code, body) = c.get(2, &format!("/get/{key}")).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (503, Some("syncing")),
        "{body}"
    );
    // r1 returns: r2 reads both peers from the start and has the whole history again; the
    // peers read r2's new sequence from the start too (a new instance id, new cursors).
    c.start(1).await;
    c.wait_caught_up(&[0, 1, 2]).await;
    assert_ne!(instance_of(&c.nodes[2].dir), old_instance);
    let (code, body) = c.get(2, &format!("/get/{key}?version=3")).await;
    assert_eq!((code, &body["value"]), (200, &json!(2)), "{body}");
    c.stop(0).await;
    let r = c.put(2, &key, json!("next")).await;
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 4);
    c.start(0).await;
    c.wait_caught_up(&[0, 1, 2]).await;
    let (code, body) = c.get(0, &format!("/get/{key}?version=4")).await;
    assert_eq!((code, &body["value"]), (200, &json!("next")), "{body}");
    c.stop_all().await;
}

#[tokio::test]
async fn without_peers_the_internal_routes_do_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path());
    config.sync = SyncMode::Normal;
    let state = kv_server::http::AppState::start(config).await.unwrap();
    assert!(state.replication.is_none());
    let app = kv_server::http::app(state);
    use tower::ServiceExt;
    let request = axum::http::Request::get("/internal/status")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 404);
}
