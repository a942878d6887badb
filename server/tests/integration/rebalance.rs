//! Online rebalancing between real servers on 127.0.0.1 (in-process, each on its own
//! listener), driven by plain HTTP calls as the coordinator makes them (docs/rebalancing.md):
//! announce, copy, freeze, drain, commit, clean-up; epoch headers; gossip after a missed
//! commit; a joiner.

use std::time::{Duration, Instant};

use kv_common::replication::ReplicationStatus;
use kv_common::ring::DEFAULT_VNODES;
use kv_common::ring_config::{
    CleanupReport, Placement, RingConfig, RingMember, RingState, RingView,
};
use kv_server::config::Peer;
use serde_json::{Value, json};

use crate::support::Node;

const NAMES: [&str; 4] = ["s0", "s1", "s2", "s3"];

struct Cluster {
    nodes: Vec<Node>,
    factor: usize,
    http: reqwest::Client,
    _root: tempfile::TempDir,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Cluster {
    fn new(factor: usize) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let nodes = NAMES
            .iter()
            .map(|name| Node::new(root.path().join(name)))
            .collect();
        Cluster {
            nodes,
            factor,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _root: root,
        }
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    fn index(name: &str) -> usize {
        NAMES.iter().position(|n| *n == name).unwrap()
    }

    /// The ring configuration of servers `members`.
    fn ring(&self, epoch: u64, members: &[usize]) -> RingConfig {
        let members = members
            .iter()
            .map(|&i| RingMember {
                name: NAMES[i].into(),
                url: self.url(i),
            })
            .collect();
        RingConfig::new(epoch, members, DEFAULT_VNODES, self.factor).unwrap()
    }

    /// Starts server `i` with `--peers` naming `peers`.
    async fn start(&mut self, i: usize, peers: &[usize]) {
        let peers: Vec<Peer> = peers
            .iter()
            .map(|&p| Peer {
                name: NAMES[p].into(),
                url: self.url(p),
            })
            .collect();
        self.nodes[i]
            .start(NAMES[i], peers, self.factor, &self.http)
            .await;
    }

    async fn stop(&mut self, i: usize) {
        self.nodes[i].stop().await;
    }

    async fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn put(&self, i: usize, key: &str, value: Value) -> Reply {
        self.send(
            self.http
                .put(format!("{}/put/{key}", self.url(i)))
                .json(&json!({ "value": value })),
        )
        .await
    }

    async fn get(&self, i: usize, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.url(i))))
            .await
    }

    async fn put_ring(&self, i: usize, state: &RingState) -> Reply {
        self.send(
            self.http
                .put(format!("{}/internal/ring", self.url(i)))
                .json(state),
        )
        .await
    }

    /// Pushes `state` to every server of `to`, each must accept it.
    async fn push(&self, to: &[usize], state: &RingState) {
        for &i in to {
            let r = self.put_ring(i, state).await;
            assert_eq!(r.status, 200, "{} refused {state:?}: {}", NAMES[i], r.body);
        }
    }

    async fn view(&self, i: usize) -> RingView {
        let r = self.get(i, "/internal/ring").await;
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_value(r.body).unwrap()
    }

    async fn status(&self, i: usize) -> ReplicationStatus {
        let r = self.get(i, "/internal/status").await;
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_value(r.body).unwrap()
    }

    async fn metrics(&self, i: usize) -> String {
        let response = self.http.get(format!("{}/metrics", self.url(i))).send();
        response.await.unwrap().text().await.unwrap()
    }

    /// Versions server `i`'s catch-up pulls from `from` stored and those it held already.
    async fn pulled(&self, i: usize, from: &[usize]) -> (u64, u64) {
        let text = self.metrics(i).await;
        let sum = |name: &str| -> u64 {
            text.lines()
                .filter(|l| {
                    from.iter()
                        .any(|&p| l.starts_with(&format!("{name}{{peer=\"{}\"}}", NAMES[p])))
                })
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        (
            sum("kv_server_replication_pulled_versions_total"),
            sum("kv_server_replication_pulled_duplicates_total"),
        )
    }

    /// Waits until `done` holds for the views of every server of `of`.
    async fn wait_views(&self, of: &[usize], what: &str, done: impl Fn(&RingView) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut views = Vec::new();
            for &i in of {
                views.push(self.view(i).await);
            }
            if views.iter().all(&done) {
                return;
            }
            assert!(Instant::now() < deadline, "not {what}: {views:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every server of `of` is synced with no lag towards any peer that is up.
    async fn wait_caught_up(&self, of: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut seen = Vec::new();
            for &i in of {
                seen.push(self.status(i).await);
            }
            let heads: Vec<(String, u64)> = seen.iter().map(|s| (s.name.clone(), s.head)).collect();
            let done = seen.iter().all(|s| {
                s.synced
                    && s.peers.iter().all(|p| {
                        heads
                            .iter()
                            .find(|(name, _)| *name == p.name)
                            .is_none_or(|(_, head)| p.last_error.is_none() && p.cursor >= *head)
                    })
            });
            if done {
                return;
            }
            assert!(Instant::now() < deadline, "not caught up: {seen:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole hand-over from `a` to `b`, as the coordinator drives it. `between` runs
    /// while frozen (before the drain). Returns the clean-up reports of `b`'s servers.
    async fn transition(
        &self,
        a: &RingConfig,
        b: &RingConfig,
        during_copy: impl AsyncFnOnce(&Cluster),
        while_frozen: impl AsyncFnOnce(&Cluster),
    ) -> Vec<CleanupReport> {
        let index = |c: &RingConfig| -> Vec<usize> {
            c.names().iter().map(|n| Cluster::index(n)).collect()
        };
        let (in_a, in_b) = (index(a), index(b));
        let mut all = in_a.clone();
        all.extend(in_b.iter().filter(|i| !in_a.contains(i)));
        // 1. Announce; every server of B copies what it will hold.
        let announced = RingState {
            current: a.clone(),
            next: Some(b.clone()),
            frozen: false,
        };
        self.push(&all, &announced).await;
        during_copy(self).await;
        self.wait_views(&in_b, "copied", |v| v.copied).await;
        // 2. Freeze the keys whose primary moves.
        let frozen = RingState {
            frozen: true,
            ..announced.clone()
        };
        self.push(&all, &frozen).await;
        while_frozen(self).await;
        // 3. Drain: every server of B has pulled each old server up to its frozen head.
        let mut heads = Vec::new();
        for &i in &in_a {
            heads.push((NAMES[i], self.view(i).await.head));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for &i in &in_b {
            loop {
                let status = self.status(i).await;
                let drained =
                    heads
                        .iter()
                        .filter(|(name, _)| *name != NAMES[i])
                        .all(|(name, head)| {
                            status
                                .peers
                                .iter()
                                .any(|p| p.name == *name && p.cursor >= *head)
                        });
                if drained {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} not drained: {status:#?}",
                    NAMES[i]
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // 4. Commit: B first, then the servers leaving.
        let committed = RingState::stable(b.clone());
        self.push(&in_b, &committed).await;
        let leaving: Vec<usize> = in_a.iter().copied().filter(|i| !in_b.contains(i)).collect();
        self.push(&leaving, &committed).await;
        self.wait_views(&in_b, "synced under the new ring", |v| {
            v.synced && v.state == committed && v.cleanup_pending
        })
        .await;
        self.wait_caught_up(&in_b).await;
        // 5. Clean-up.
        let mut reports = Vec::new();
        for &i in &in_b {
            let r = self
                .send(self.http.post(format!("{}/internal/cleanup", self.url(i))))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            reports.push(serde_json::from_value(r.body).unwrap());
        }
        reports
    }
}

/// Writes `versions` versions of each key through its primary under `placement`.
async fn write(c: &Cluster, placement: &Placement, keys: &[String], versions: usize, tag: &str) {
    for key in keys {
        let primary = Cluster::index(placement.primary(key).unwrap());
        for v in 0..versions {
            let r = c.put(primary, key, json!(format!("{key}/{tag}{v}"))).await;
            assert_eq!(r.status, 200, "{key} on {}: {}", NAMES[primary], r.body);
        }
    }
}

/// Every key has `expected` versions at its primary under `placement`, and the next put
/// there gets `expected + 1`; servers holding it not under `placement` no longer have it.
async fn check_moved(
    c: &Cluster,
    placement: &Placement,
    keys: &[String],
    expected: u64,
    servers: &[usize],
) {
    for key in keys {
        let primary = Cluster::index(placement.primary(key).unwrap());
        let r = c.get(primary, &format!("/versions/{key}?limit=1000")).await;
        assert_eq!(r.status, 200, "{key} on {}: {}", NAMES[primary], r.body);
        assert_eq!(r.body["latest_version"], expected, "{key}");
        let versions = r.body["versions"].as_array().unwrap();
        assert_eq!(versions.len() as u64, expected, "{key}: a gap");
        for (n, v) in versions.iter().enumerate() {
            assert_eq!(v["version"], n as u64 + 1, "{key}");
        }
        let r = c.put(primary, key, json!("after")).await;
        assert_eq!(
            (r.status, &r.body["version"]),
            (200, &json!(expected + 1)),
            "{key}: {}",
            r.body
        );
        for &i in servers {
            let held = placement.holds_now(NAMES[i], key);
            let r = c.get(i, &format!("/get/{key}?version=1")).await;
            assert_eq!(r.status == 200, held, "{key} on {}: {}", NAMES[i], r.body);
        }
    }
}

/// Servers s0..s2 in a ring of R = 2 (epoch 0, from their flags) and s3 a joiner (not in
/// their `--peers`: it owns nothing yet), all caught up; the rings before and after s3 joins.
async fn three_and_a_joiner() -> (Cluster, RingConfig, RingConfig) {
    let mut c = Cluster::new(2);
    for i in 0..3 {
        c.start(i, &[0, 1, 2]).await;
    }
    c.start(3, &[0, 1, 2]).await;
    c.wait_caught_up(&[0, 1, 2, 3]).await;
    let (a, b) = (c.ring(0, &[0, 1, 2]), c.ring(1, &[0, 1, 2, 3]));
    (c, a, b)
}

/// Two versions of each key through its primary under `ring`, then every server caught up.
async fn write_settled(c: &Cluster, ring: &RingConfig, keys: &[String]) {
    write(
        c,
        &Placement::new(RingState::stable(ring.clone())),
        keys,
        2,
        "a",
    )
    .await;
    c.wait_caught_up(&[0, 1, 2, 3]).await;
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn a_ring_of_three_grows_to_four_while_serving() {
    let (mut c, a, b) = three_and_a_joiner().await;
    let before = Placement::new(RingState::stable(a.clone()));
    let after = Placement::new(RingState::stable(b.clone()));
    let keys = keys("grow", 60);
    write(&c, &before, &keys, 2, "a").await;
    for key in &keys[..5] {
        let r = c.put(3, key, json!("joiner")).await;
        assert_eq!(
            (r.status, &r.body["code"]),
            (421, &json!("not_primary")),
            "{}",
            r.body
        );
    }
    let view = c.view(3).await;
    assert_eq!(
        (view.state.current.epoch, view.state.current.contains("s3")),
        (0, false)
    );
    let moving = keys
        .iter()
        .find(|k| before.primary(k) != after.primary(k))
        .unwrap()
        .clone();
    let staying = keys
        .iter()
        .find(|k| before.primary(k) == after.primary(k))
        .unwrap()
        .clone();
    let reports = c
        .transition(
            &a,
            &b,
            // Writes while copying reach the new replicas too (dual write).
            async |c| {
                write(c, &before, &keys, 1, "copy").await;
                let metrics = c.metrics(0).await;
                assert!(
                    metrics.contains("\nkv_server_ring_transition 1\n"),
                    "{metrics}"
                );
            },
            async |c| {
                let old = Cluster::index(before.primary(&moving).unwrap());
                let r = c.put(old, &moving, json!("frozen?")).await;
                assert_eq!(
                    (r.status, &r.body["code"]),
                    (503, &json!("rebalancing")),
                    "{}",
                    r.body
                );
                assert_eq!(r.headers["retry-after"], "1");
                let same = Cluster::index(before.primary(&staying).unwrap());
                let r = c.put(same, &staying, json!("not paused")).await;
                assert_eq!(r.status, 200, "{}", r.body);
            },
        )
        .await;
    // `staying` got one more version while frozen.
    let (moved, rest): (Vec<String>, Vec<String>) =
        keys.iter().cloned().partition(|k| *k != staying);
    check_moved(&c, &after, &moved, 3, &[0, 1, 2, 3]).await;
    check_moved(&c, &after, &rest, 4, &[0, 1, 2, 3]).await;
    let deleted: u64 = reports.iter().map(|r| r.versions_deleted).sum();
    assert!(deleted > 0, "{reports:?}");
    assert!(reports.iter().all(|r| r.epoch == 1));
    let view = c.view(0).await;
    assert!(!view.cleanup_pending && view.synced);
    let metrics = c.metrics(0).await;
    assert!(metrics.contains("kv_server_ring_epoch 1"), "{metrics}");
    assert!(
        metrics.contains("\nkv_server_ring_transition 0\n"),
        "{metrics}"
    );
    let health = c.get(3, "/health").await.body;
    assert_eq!(health["ring"]["epoch"], 1);

    // Epoch headers: an older one gets the ring, a newer one a retry.
    let key = &moved[0];
    let primary = Cluster::index(after.primary(key).unwrap());
    let old = c
        .send(
            c.http
                .get(format!("{}/get/{key}", c.url(primary)))
                .header("x-kv-ring-epoch", "0"),
        )
        .await;
    assert_eq!(
        (old.status, &old.body["code"]),
        (409, &json!("stale_ring")),
        "{}",
        old.body
    );
    let ring: RingConfig = serde_json::from_value(old.body["ring"].clone()).unwrap();
    assert_eq!(ring, b);
    for request in [
        c.http.get(format!("{}/versions/{key}", c.url(primary))),
        c.http
            .put(format!("{}/put/{key}?if_version=4", c.url(primary)))
            .json(&json!({"value": 1})),
    ] {
        let r = c.send(request.header("x-kv-ring-epoch", "2")).await;
        assert_eq!(
            (r.status, &r.body["code"]),
            (503, &json!("ring_behind")),
            "{}",
            r.body
        );
        assert_eq!(r.headers["retry-after"], "1");
    }
    let r = c
        .send(
            c.http
                .post(format!("{}/put/{key}", c.url(primary)))
                .header("x-kv-ring-epoch", "1")
                .json(&json!({"value": "current"})),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["version"]),
        (200, &json!(5)),
        "{}",
        r.body
    );
    let r = c
        .send(
            c.http
                .get(format!("{}/get/{key}", c.url(primary)))
                .header("x-kv-ring-epoch", "x"),
        )
        .await;
    assert_eq!(r.status, 400);

    // An older state is refused with the server's view; the same one again is fine.
    let announced = RingState {
        current: a.clone(),
        next: Some(b.clone()),
        frozen: false,
    };
    let r = c.put_ring(1, &announced).await;
    assert_eq!(
        (r.status, &r.body["code"]),
        (409, &json!("stale_ring")),
        "{}",
        r.body
    );
    let view: RingView = serde_json::from_value(r.body).unwrap();
    assert_eq!(view.state, RingState::stable(b.clone()));
    assert_eq!(
        c.put_ring(1, &RingState::stable(b.clone())).await.status,
        200
    );
    let invalid =
        json!({"current": {"epoch": 9, "members": [], "vnodes": 150, "replication_factor": 2}});
    let r = c
        .send(
            c.http
                .put(format!("{}/internal/ring", c.url(1)))
                .json(&invalid),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    c.stop_all().await;
}

/// A server in both rings reads its peers' feeds again for the keys it gains only, up to the
/// cursors it had when `next` was announced, and a joiner's feed for those only until frozen:
/// growing, the old servers receive nothing; then shrinking, each receives the keys it gains,
/// each version from the other holders, and not the versions it kept.
#[tokio::test]
async fn servers_in_both_rings_copy_only_the_keys_they_gain() {
    let (mut c, a, b) = three_and_a_joiner().await;
    let grown = Placement::new(RingState::stable(b.clone()));
    let keys = keys("gain", 60);
    write_settled(&c, &a, &keys).await;
    let old = [0, 1, 2];
    let all = [0, 1, 2, 3];
    let mut was = Vec::new();
    for i in 0..4 {
        was.push(c.pulled(i, &all).await);
    }
    c.transition(
        &a,
        &b,
        // Before the freeze the old servers read the joiner's feed (what it copied) to its
        // end, for gained keys only; once frozen they would read on with the whole filter.
        async |c| {
            c.wait_views(&[3], "copied", |v| v.copied).await;
            let head = c.view(3).await.head;
            let deadline = Instant::now() + Duration::from_secs(30);
            for &i in &old {
                while !c
                    .status(i)
                    .await
                    .peers
                    .iter()
                    .any(|p| p.name == "s3" && p.cursor >= head)
                {
                    assert!(Instant::now() < deadline, "{} never read s3", NAMES[i]);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        },
        async |_| {},
    )
    .await;
    // Counted before `check_moved`, whose puts are pulled too.
    for i in 0..3 {
        assert_eq!(
            c.pulled(i, &all).await,
            was[i],
            "{} gains nothing, yet received versions",
            NAMES[i]
        );
    }
    // The new server got every version of its keys: from both old replicas of each.
    let (stored, duplicates) = c.pulled(3, &old).await;
    let held = keys.iter().filter(|k| grown.holds_now("s3", k)).count() as u64;
    assert_eq!(stored - was[3].0, held * 2);
    assert!(duplicates - was[3].1 <= held * 2);
    check_moved(&c, &grown, &keys, 2, &[0, 1, 2, 3]).await;

    // Back to three: s0..s2 gain what s3 held, and only that.
    c.wait_caught_up(&[0, 1, 2, 3]).await;
    let a2 = c.ring(2, &[0, 1, 2]);
    let shrunk = Placement::new(RingState::stable(a2.clone()));
    let all = [0, 1, 2, 3];
    let mut was = Vec::new();
    for i in 0..3 {
        was.push(c.pulled(i, &all).await);
    }
    c.transition(&b, &a2, async |_| {}, async |_| {}).await;
    // Only the lists that named s3 change: each of its keys is gained by one server, which
    // reads each version from the key's two holders under B (one stored, one duplicate) and
    // whose copy then shows in its own feed to the key's other holder (one more duplicate
    // at most). Reading everything again, as before the copy base, would have brought each
    // server every version it kept from the other holder: 3 of s0..s2 keep about 90 keys'
    // replicas, 270 versions.
    let mut gained_versions = 0;
    let mut duplicates = 0;
    for i in 0..3 {
        let (stored, dups) = c.pulled(i, &all).await;
        let gained = keys
            .iter()
            .filter(|k| shrunk.holds_now(NAMES[i], k) && !grown.holds_now(NAMES[i], k))
            .count() as u64;
        assert!(gained > 0, "{}", NAMES[i]);
        assert_eq!(stored - was[i].0, gained * 3, "{}", NAMES[i]);
        gained_versions += gained * 3;
        duplicates += dups - was[i].1;
    }
    let s3_held = keys.iter().filter(|k| grown.holds_now("s3", k)).count() as u64;
    assert_eq!(gained_versions, s3_held * 3);
    assert!(
        duplicates <= 2 * gained_versions,
        "{duplicates} duplicates for {gained_versions} gained versions"
    );
    check_moved(&c, &shrunk, &keys, 3, &[0, 1, 2]).await;
    c.stop_all().await;
}

/// The copy base is stored with the reset cursors: a server restarted before it copied
/// still reads only the keys it gains below it.
#[tokio::test]
async fn the_copy_base_survives_a_restart() {
    let (mut c, a, b) = three_and_a_joiner().await;
    let keys = keys("restart", 40);
    write_settled(&c, &a, &keys).await;
    let old = [1, 2];
    let was = c.pulled(0, &old).await;
    // s0 alone learns `next` (its peers answer `ring_behind` until they do), and restarts.
    let announced = RingState {
        current: a.clone(),
        next: Some(b.clone()),
        frozen: false,
    };
    c.push(&[0], &announced).await;
    c.stop(0).await;
    c.start(0, &[0, 1, 2]).await;
    assert_eq!(c.view(0).await.state, announced);
    c.transition(&a, &b, async |_| {}, async |_| {}).await;
    // The counters restarted with the process.
    assert_eq!(
        c.pulled(0, &old).await,
        (0, 0),
        "was {was:?} before the restart"
    );
    check_moved(
        &c,
        &Placement::new(RingState::stable(b)),
        &keys,
        2,
        &[0, 1, 2, 3],
    )
    .await;
    c.stop_all().await;
}

#[tokio::test]
async fn a_ring_of_three_shrinks_to_two() {
    let mut c = Cluster::new(2);
    for i in 0..3 {
        c.start(i, &[0, 1, 2]).await;
    }
    c.wait_caught_up(&[0, 1, 2]).await;
    let a = c.ring(0, &[0, 1, 2]);
    let b = c.ring(1, &[0, 1]);
    let before = Placement::new(RingState::stable(a.clone()));
    let after = Placement::new(RingState::stable(b.clone()));
    let keys = keys("shrink", 60);
    write(&c, &before, &keys, 2, "a").await;
    // Clean-up is refused while a transition is under way.
    c.push(
        &[0],
        &RingState {
            current: a.clone(),
            next: Some(b.clone()),
            frozen: false,
        },
    )
    .await;
    let r = c
        .send(c.http.post(format!("{}/internal/cleanup", c.url(0))))
        .await;
    assert_eq!(
        (r.status, &r.body["code"]),
        (409, &json!("rebalancing")),
        "{}",
        r.body
    );
    c.transition(&a, &b, async |_| {}, async |_| {}).await;
    // The removed server owns nothing any more.
    let r = c.put(2, &keys[0], json!("removed?")).await;
    assert_eq!(
        (r.status, &r.body["code"]),
        (421, &json!("not_primary")),
        "{}",
        r.body
    );
    c.stop(2).await;
    check_moved(&c, &after, &keys, 2, &[0, 1]).await;
    c.stop_all().await;
}

#[tokio::test]
async fn a_server_that_missed_a_commit_learns_it_by_gossip_and_resyncs() {
    let mut c = Cluster::new(3);
    for i in 0..3 {
        c.start(i, &[0, 1, 2]).await;
    }
    c.wait_caught_up(&[0, 1, 2]).await;
    let a = c.ring(0, &[0, 1, 2]);
    let placement = Placement::new(RingState::stable(a.clone()));
    let keys = keys("gossip", 20);
    write(&c, &placement, &keys, 2, "a").await;
    c.wait_caught_up(&[0, 1, 2]).await;
    // Pinning the same ring under a new epoch keeps every server serving: nothing to fetch.
    let pinned = RingState::stable(c.ring(1, &[0, 1, 2]));
    c.push(&[0, 1, 2], &pinned).await;
    for i in 0..3 {
        let view = c.view(i).await;
        // Nothing to fetch, nothing to clean up.
        assert!(
            view.synced && view.state == pinned && !view.cleanup_pending,
            "{view:?}"
        );
    }
    c.stop(1).await;
    c.stop(2).await;
    // Epoch 2 reaches s0 only (the same servers with other vnodes, so keys change places:
    // the hand-over itself is beside the point).
    let mut moved = c.ring(2, &[0, 1, 2]);
    moved.vnodes = 100;
    let committed = RingState::stable(moved);
    c.push(&[0], &committed).await;
    // s2 comes back with its epoch-1 state: gossip brings epoch 2, which it did not copy
    // for, so it re-reads every peer before serving; s1 is down, so it stays syncing.
    c.start(2, &[0, 1, 2]).await;
    c.wait_views(&[2], "at epoch 2", |v| v.state == committed)
        .await;
    let view = c.view(2).await;
    assert!(!view.synced && view.cleanup_pending, "{view:?}");
    let r = c.get(2, &format!("/get/{}", keys[0])).await;
    assert_eq!(
        (r.status, &r.body["code"]),
        (503, &json!("syncing")),
        "{}",
        r.body
    );
    c.start(1, &[0, 1, 2]).await;
    c.wait_views(&[0, 1, 2], "synced at epoch 2", |v| {
        v.synced && v.state == committed
    })
    .await;
    c.wait_caught_up(&[0, 1, 2]).await;
    // Every version at the primaries of epoch 2, the next put numbered after them.
    check_moved(&c, &Placement::new(committed), &keys, 2, &[0, 1, 2]).await;
    c.stop_all().await;
}

#[tokio::test]
async fn a_server_named_alone_in_peers_is_a_one_member_ring() {
    let mut c = Cluster::new(3);
    c.start(0, &[0]).await;
    let r = c.put(0, "solo", json!(1)).await;
    assert_eq!(
        (r.status, &r.body["version"]),
        (200, &json!(1)),
        "{}",
        r.body
    );
    assert_eq!(r.headers["x-kv-acked-by"], "s0");
    let view = c.view(0).await;
    assert!(view.synced);
    assert_eq!(view.state.current.names(), ["s0"]);
    c.stop_all().await;
}

#[tokio::test]
async fn servers_back_on_other_ports_reach_each_other_where_peers_says() {
    // A stored ring configuration names every member with the URL it had when the ring was
    // pushed; `kvstore up` picks free ports, so next time the servers listen elsewhere. The
    // ring state (membership) wins over `--peers`, but `--peers` says where a name is now.
    let mut c = Cluster::new(3);
    for i in 0..3 {
        c.start(i, &[0, 1, 2]).await;
    }
    c.wait_caught_up(&[0, 1, 2]).await;
    let pinned = RingState::stable(c.ring(1, &[0, 1, 2]));
    c.push(&[0, 1, 2], &pinned).await;
    c.stop_all().await;
    for node in &mut c.nodes {
        node.port = crate::ports::free_port();
    }
    for i in 0..3 {
        c.start(i, &[0, 1, 2]).await;
    }
    c.wait_caught_up(&[0, 1, 2]).await;
    let placement = Placement::new(pinned.clone());
    let keys = keys("moved", 8);
    write(&c, &placement, &keys, 2, "p").await;
    for key in &keys {
        // R = 3: every server holds both versions, pushed to the peers' new addresses.
        for i in 0..3 {
            let r = c.get(i, &format!("/versions/{key}")).await;
            assert_eq!(
                (r.status, r.body["latest_version"].as_u64()),
                (200, Some(2)),
                "{}",
                r.body
            );
        }
    }
    assert_eq!(
        c.view(0).await.state,
        pinned,
        "the stored state itself is unchanged"
    );
    c.stop_all().await;
}
