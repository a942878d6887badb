//! Real kv-server **processes** behind an in-process gateway, for the replication tests: a
//! process can be killed with SIGKILL (no shutdown code runs, unlike `harness::Server::stop`)
//! and restarted on the same port and data directory, or stalled with SIGSTOP and resumed.
//!
//! Every server is started as a member of a replicated cluster (`--peers` listing all,
//! R = 3, W = 2, catch-up every 200 ms); the gateway is told the same. For the rebalancing
//! tests, spare servers can be started beside them as joiners (`--peers` not naming them:
//! they own nothing until a ring configuration does).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kv_common::replication::ReplicationStatus;
use kv_common::ring::{DEFAULT_VNODES, Ring};
use kv_gateway::GatewayConfig;

use crate::harness::{Gateway, TOKEN, wait_until};
use crate::netsplit::Link;

pub const REPLICATION_FACTOR: usize = 3;
pub const WRITE_QUORUM: usize = 2;

/// The kv-server binary of this build, beside kv-gateway's. It is not a binary of this
/// package, so `cargo test -p kv-gateway` neither builds nor refreshes it: build it once per
/// test run (a no-op when it is fresh), so these tests never run a stale server.
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let gateway = Path::new(env!("CARGO_BIN_EXE_kv-gateway"));
        let binary = gateway.with_file_name(format!("kv-server{}", std::env::consts::EXE_SUFFIX));
        if std::env::var_os("KV_TEST_NO_SERVER_BUILD").is_none() {
            let mut build = Command::new(env!("CARGO"));
            build.args(["build", "-p", "kv-server", "--bin", "kv-server"]);
            if !cfg!(debug_assertions) {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "cargo build -p kv-server failed");
        }
        assert!(binary.exists(), "no kv-server at {}", binary.display());
        binary
    })
}

/// One server process; its port and directory outlive restarts.
struct Proc {
    name: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The server suite's allocator: ports below the kernel's ephemeral range, each handed out
/// once (see there for the collision it avoids).
#[path = "../../../server/tests/integration/ports.rs"]
mod ports;
pub use ports::free_port;

/// N server processes and a gateway in front of them.
pub struct ProcCluster {
    /// `s0`, `s1`, ...: ring names, in index order.
    pub names: Vec<String>,
    pub gateway: Gateway,
    /// The ring the test expects in force: the first members, until [`ProcCluster::set_ring`].
    ring: Mutex<Arc<Ring>>,
    /// For direct requests to servers.
    pub http: reqwest::Client,
    /// Locked only for spawning and killing, never across an await.
    procs: Mutex<Vec<Proc>>,
    /// Each server's `--peers`: the same list for all, unless links are in between.
    peers: Vec<String>,
    /// `links[from][to]`: the proxy `from` dials `to` through (`start_with_links`); empty
    /// otherwise.
    links: Vec<Vec<Option<Link>>>,
    _dir: tempfile::TempDir,
}

impl ProcCluster {
    pub async fn start(n: usize) -> ProcCluster {
        ProcCluster::start_with_spares(n, 0).await
    }

    /// `n` members and `spares` more servers started as joiners (`s{n}`, ...), which the
    /// gateway does not know of: a ring configuration brings them in.
    pub async fn start_with_spares(n: usize, spares: usize) -> ProcCluster {
        ProcCluster::start_inner(n, spares, false).await
    }

    /// `n` members that dial each other through a [`Link`] per ordered pair, so a test can
    /// partition them ([`ProcCluster::isolate`]); the gateway dials each directly.
    pub async fn start_with_links(n: usize) -> ProcCluster {
        ProcCluster::start_inner(n, 0, true).await
    }

    async fn start_inner(n: usize, spares: usize, with_links: bool) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let procs: Vec<Proc> = (0..n + spares)
            .map(|i| Proc {
                name: format!("s{i}"),
                port: free_port(),
                dir: dir.path().join(format!("s{i}")),
                child: None,
            })
            .collect();
        let links: Vec<Vec<Option<Link>>> = if with_links {
            (0..procs.len())
                .map(|from| {
                    (0..n)
                        .map(|to| (from != to).then(|| Link::start(procs[to].port)))
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let peers = (0..procs.len())
            .map(|from| {
                procs[..n]
                    .iter()
                    .enumerate()
                    .map(|(to, p)| {
                        let port = match links.get(from).and_then(|l| l[to].as_ref()) {
                            Some(link) => link.port,
                            None => p.port,
                        };
                        format!("{}=http://127.0.0.1:{port}", p.name)
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        let names: Vec<String> = procs.iter().map(|p| p.name.clone()).collect();
        let mut config = GatewayConfig::with_backends(
            procs[..n]
                .iter()
                .map(|p| (p.name.clone(), format!("http://127.0.0.1:{}", p.port))),
        )
        .unwrap();
        config.replication_factor = REPLICATION_FACTOR;
        config.write_quorum = Some(WRITE_QUORUM);
        config.health_interval_ms = 200;
        config.connect_timeout_ms = 500;
        config.request_timeout_ms = 3_000;
        let cluster = ProcCluster {
            ring: Mutex::new(Arc::new(Ring::new(
                names[..n].iter().cloned(),
                DEFAULT_VNODES,
            ))),
            names,
            gateway: Gateway::start(config).await,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            procs: Mutex::new(procs),
            peers,
            links,
            _dir: dir,
        };
        for i in 0..n + spares {
            cluster.restart(i).await;
        }
        let gateway = &cluster.gateway;
        wait_until("the gateway sees every server up", || async {
            let Ok(response) = gateway.get("/servers").bearer_auth(TOKEN).send().await else {
                return false;
            };
            let servers: serde_json::Value = response.json().await.unwrap_or_default();
            // A new replicated cluster serves once every server has seen its peers.
            servers["members"].as_array().is_some_and(|m| {
                m.len() == n && m.iter().all(|m| m["health"] == "up" && m["synced"] == true)
            })
        })
        .await;
        cluster
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// `http://127.0.0.1:PORT` of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.procs.lock().unwrap()[i].port)
    }

    pub fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap()
    }

    /// The ring the test expects in force.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.lock().unwrap().clone()
    }

    /// After a rebalance: the members the ring now has.
    pub fn set_ring(&self, members: &[String]) {
        *self.ring.lock().unwrap() = Arc::new(Ring::new(members.iter().cloned(), DEFAULT_VNODES));
    }

    /// Indices of the members of the expected ring.
    pub fn members(&self) -> Vec<usize> {
        let ring = self.ring();
        (0..self.len())
            .filter(|&i| ring.contains(&self.names[i]))
            .collect()
    }

    /// The key's preference list (primary first), as indices.
    pub fn replicas(&self, key: &str) -> Vec<usize> {
        let ring = self.ring();
        ring.preference_list(key, REPLICATION_FACTOR.min(ring.len()))
            .into_iter()
            .map(|name| self.index(name))
            .collect()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.procs.lock().unwrap()[i].child.is_some()
    }

    /// SIGKILL: no shutdown, no final fsync, sockets reset.
    pub fn kill(&self, i: usize) {
        let child = self.procs.lock().unwrap()[i].child.take();
        let mut child = child.expect("server is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Cuts server `i` off from every other server, both ways; the gateway still reaches
    /// all of them.
    pub fn isolate(&self, i: usize) {
        self.cut_where(|from, to| from == i || to == i);
    }

    /// Cuts every link from one server to another for which `which(from, to)` holds.
    pub fn cut_where(&self, which: impl Fn(usize, usize) -> bool) {
        for (from, to) in self.pairs() {
            if which(from, to) {
                self.link(from, to).cut();
            }
        }
    }

    /// Every link passes again.
    pub fn heal(&self) {
        for (from, to) in self.pairs() {
            self.link(from, to).heal();
        }
    }

    fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + use<'_> {
        let n = self.links.first().map_or(0, Vec::len);
        (0..n).flat_map(move |from| {
            (0..n)
                .filter(move |&to| to != from)
                .map(move |to| (from, to))
        })
    }

    fn link(&self, from: usize, to: usize) -> &Link {
        self.links[from][to]
            .as_ref()
            .expect("started with links (ProcCluster::start_with_links)")
    }

    /// SIGSTOP: the process keeps its sockets, so connections succeed and nothing answers
    /// (a stalled peer, the hardest kind of failure to tell from a slow one).
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// SIGCONT after [`ProcCluster::pause`].
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = {
            let procs = self.procs.lock().unwrap();
            procs[i].child.as_ref().expect("server is running").id()
        };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts server `i` (again) on its port and data directory and waits for its /health.
    pub async fn restart(&self, i: usize) {
        let url = {
            let mut procs = self.procs.lock().unwrap();
            let proc = &mut procs[i];
            assert!(proc.child.is_none(), "{} is running", proc.name);
            std::fs::create_dir_all(&proc.dir).unwrap();
            // One log per server, appended over restarts, beside its data directory.
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(proc.dir.with_extension("log"))
                .unwrap();
            let child = Command::new(server_binary())
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", proc.port))
                .arg("--data-dir")
                .arg(&proc.dir)
                .args(["--node-name", &proc.name])
                .args(["--peers", &self.peers[i]])
                .args(["--replication-factor", &REPLICATION_FACTOR.to_string()])
                .args(["--write-quorum", &WRITE_QUORUM.to_string()])
                .args(["--catch-up-interval-ms", "200"])
                .env("KV_LOG_LEVEL", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start kv-server");
            proc.child = Some(child);
            format!("http://127.0.0.1:{}", proc.port)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{url}/health")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "s{i} did not answer /health; its log:\n{}",
                self.log_tail(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The answer came from this server, not from whatever else holds its port (a server
        // that could not bind it has exited by now or soon will).
        let stats: serde_json::Value = self
            .http
            .get(format!("{url}/db/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        assert_eq!(
            stats["node_name"],
            self.names[i],
            "port of s{i} answered by another server; its log:\n{}",
            self.log_tail(i)
        );
    }

    /// The end of server `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let path = self.procs.lock().unwrap()[i].dir.with_extension("log");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `GET /internal/status` of server `i`.
    pub async fn status(&self, i: usize) -> Result<ReplicationStatus, String> {
        let r = self
            .http
            .get(format!("{}/internal/status", self.url(i)))
            .send()
            .await
            .map_err(|e| format!("{}: {e}", self.names[i]))?;
        let code = r.status();
        if !code.is_success() {
            let body = r.text().await.unwrap_or_default();
            return Err(format!(
                "{}: /internal/status answered {code}: {body}",
                self.names[i]
            ));
        }
        r.json()
            .await
            .map_err(|e| format!("{}: /internal/status: {e}", self.names[i]))
    }

    /// Polls every server's `/internal/status` until each is synced with no lag; the last
    /// statuses seen when the time is up.
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut behind = Vec::new();
            let mut seen = Vec::new();
            for i in self.members() {
                match self.status(i).await {
                    Ok(s) => seen.push(s),
                    Err(e) => behind.push(e),
                }
            }
            // `lag` is as of each server's last pull; a pull that has not happened since the
            // last write shows 0 too. Caught up means every cursor reached that peer's head.
            for s in &seen {
                let cursors_reached = s.peers.iter().all(|p| {
                    seen.iter()
                        .find(|other| other.name == p.name)
                        .is_none_or(|other| p.cursor >= other.head)
                });
                if !(s.synced && s.lag == 0 && cursors_reached) {
                    behind.push(format!(
                        "{}: synced {}, lag {}, head {}, peers {:?}",
                        s.name, s.synced, s.lag, s.head, s.peers
                    ));
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "not caught up after {timeout:?}:\n  {}",
                    behind.join("\n  ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every version of `key` server `i` holds, read directly a page at a time (none when it
    /// answers 404).
    pub async fn versions(&self, i: usize, key: &str) -> Result<Vec<(u64, String)>, String> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let url = format!("{}/versions/{key}?after={after}&limit=1000", self.url(i));
            let r = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| format!("{} /versions/{key}: {e}", self.names[i]))?;
            let code = r.status();
            if code == 404 {
                return Ok(out);
            }
            let page: serde_json::Value = r
                .json()
                .await
                .map_err(|e| format!("{} /versions/{key}: {e}", self.names[i]))?;
            if !code.is_success() {
                return Err(format!("{} /versions/{key}: {code} {page}", self.names[i]));
            }
            for v in page["versions"].as_array().into_iter().flatten() {
                let version = v["version"].as_u64().expect("version");
                out.push((version, value_text(&v["value"])));
            }
            match page["next_after"].as_u64() {
                Some(next) => after = next,
                None => return Ok(out),
            }
        }
    }
}

/// A stored value as the tests write them (JSON strings), or its JSON text otherwise.
pub fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
