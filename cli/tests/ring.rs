//! `kvstore ring apply|show` against a running local cluster: a fourth server started as a
//! joiner is brought into the ring, every key keeps every version, the ring goes back to
//! three servers, and nothing is lost either way.

mod common;

use std::path::Path;

use common::{TestCluster, assert_code, json, kvstore_at, stderr, stdout};
use kv_server::ServerConfig;
use kv_server::config::parse_peer;
use tokio::sync::oneshot;

/// A kv-server on its own runtime, named `server-4`, whose `--peers` are the cluster's
/// servers but not itself: it joins owning nothing.
struct Joiner {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<kv_server::Result<()>>>,
    runtime: tokio::runtime::Runtime,
}

impl Joiner {
    fn start(dir: &Path, peers: &[String]) -> Joiner {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut config = ServerConfig::new(dir);
        config.node_name = "server-4".into();
        config.replication.peers = peers.iter().map(|p| parse_peer(p).unwrap()).collect();
        config.replication.catch_up_interval_ms = 100;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(kv_server::run(listener, config, async {
            let _ = stopped.await;
        }));
        Joiner {
            url,
            stop: Some(stop),
            task: Some(task),
            runtime,
        }
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        self.runtime.block_on(task).unwrap().unwrap();
    }
}

fn apply(cluster: &TestCluster, members: &[String]) -> String {
    let mut args = vec!["ring", "apply", "--timeout", "60s"];
    for m in members {
        args.extend(["--member", m.as_str()]);
    }
    let out = kvstore_at(&cluster.url, &args, None);
    assert_code(&out, 0);
    // Progress goes to stderr, one line per phase, the result to stdout.
    assert!(stderr(&out).contains("Copying"), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn apply_moves_a_running_cluster_to_four_servers_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(&dir.path().join("cluster"));
    let three: Vec<String> = cluster
        .servers
        .iter()
        .map(|s| format!("{}={}", s.name, s.url()))
        .collect();
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        for version in 1..=2 {
            assert_code(
                &cluster.kvstore(&["put", key, &format!("{key}@{version}")]),
                0,
            );
        }
    }
    let joiner = Joiner::start(&dir.path().join("server-4"), &three);
    let mut four = three.clone();
    four.push(format!("server-4={}", joiner.url));

    let done = apply(&cluster, &four);
    assert!(done.starts_with("ring epoch 1 in force"), "{done}");
    let show = kvstore_at(
        &cluster.url,
        &["ring", "show", "--server", &joiner.url],
        None,
    );
    assert_code(&show, 0);
    assert!(
        stdout(&show).starts_with("server-4: ring epoch 1, 4 members"),
        "{}",
        stdout(&show)
    );

    // Every version through the gateway, which learned the new ring; server-4 serves some.
    let mut on_four = 0;
    for key in &keys {
        let got = json(&cluster.kvstore(&["--json", "get", key]));
        assert_eq!(got["version"], 2, "{key}");
        assert_eq!(got["value"], format!("{key}@2"));
        on_four += usize::from(got["server_used"] == "server-4");
        let first = json(&cluster.kvstore(&["--json", "get", key, "--version", "1"]));
        assert_eq!(first["value"], format!("{key}@1"));
    }
    assert!(on_four > 0, "server-4 is the primary of no key");
    // Writes go on, with the next version.
    let put = json(&cluster.kvstore(&["--json", "put", &keys[0], "after"]));
    assert_eq!(put["version"], 3);

    // Back to three: server-4's keys move back, then it can go.
    let done = apply(&cluster, &three);
    assert!(done.starts_with("ring epoch 2 in force"), "{done}");
    joiner.stop();
    for key in &keys {
        let got = json(&cluster.kvstore(&["--json", "get", key]));
        assert_ne!(got["server_used"], "server-4");
        let listing = json(&cluster.kvstore(&["--json", "versions", key, "--all"]));
        let count = listing["versions"].as_array().map_or(0, Vec::len);
        assert_eq!(
            count,
            if key == &keys[0] { 3 } else { 2 },
            "{key}: {listing}"
        );
    }
    cluster.stop();
}
