//! One simulated server pod: a real `kv-server` in this process, on `127.0.0.1` and an
//! ephemeral port, over a data directory that belongs to the pod's ordinal (its claim), so a
//! restart finds its data. A restart gets a new port, as a real pod gets a new IP.
//!
//! What stays put is the pod's DNS name (`<pod>.<service>.<namespace>.svc`, by which servers
//! name their peers in `KV_PEERS`): each pod has a [`Dns`] address that is fixed for the
//! pod's life and forwards every connection to wherever its server listens now.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The server settings the simulator takes from the pod template's environment; the listen
/// address, data directory and node name are always the simulator's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub cache_size: Option<usize>,
    /// `KV_CACHE_MAX_BYTES` as written (`64Mi`): the server's own parser reads it.
    pub cache_max_bytes: Option<String>,
    pub max_value_bytes: Option<usize>,
    pub vnodes: Option<usize>,
    pub replication_factor: Option<usize>,
    pub write_quorum: Option<usize>,
    pub replication_timeout_ms: Option<u64>,
    /// `KV_PEERS` entries as written (`NAME=URL`), resolved at each start.
    pub peers: Vec<String>,
}

/// Stable addresses of the pods' DNS names: (namespace, pod) -> [`Dns`] address.
pub type Resolver = BTreeMap<(String, String), SocketAddr>;

/// A pod's DNS name as a stable `127.0.0.1` address: a TCP forwarder to the pod's server of
/// the moment. While the server is down a connection is accepted and closed at once (a real
/// name would resolve to an address that refuses it). Stops when dropped.
struct Dns {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Dns {
    fn start() -> Dns {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a simulated DNS address");
        std_listener.set_nonblocking(true).expect("non-blocking");
        let addr = std_listener.local_addr().expect("a local address");
        let listener = TcpListener::from_std(std_listener).expect("inside a tokio runtime");
        let target = Arc::new(Mutex::new(None::<SocketAddr>));
        let current = target.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut inbound = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let to = *current.lock().expect("not poisoned");
                tokio::spawn(async move {
                    let Some(to) = to else { return };
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Dns { addr, target, task }
    }

    fn point_at(&self, to: Option<SocketAddr>) {
        *self.target.lock().expect("not poisoned") = to;
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `NAME=URL` with the URL's host, when it names a simulated pod
/// (`<pod>.<service>.<namespace>.svc[.cluster.local]`), replaced by that pod's DNS address.
fn resolve_peer(entry: &str, namespace: &str, dns: &Resolver) -> String {
    let Some((name, url)) = entry.split_once('=') else {
        return entry.to_owned();
    };
    match resolve_url(url.trim(), Some(namespace), dns) {
        Some(url) => format!("{}={url}", name.trim()),
        None => entry.to_owned(),
    }
}

/// `http://<pod>.<service>.<namespace>.svc[...]:<port>` as `http://<the pod's DNS address>`;
/// a host without a namespace label is looked up in `namespace` (`None`: not resolved).
/// `None` when the URL names no simulated pod.
pub fn resolve_url(url: &str, namespace: Option<&str>, dns: &Resolver) -> Option<String> {
    let authority = url.strip_prefix("http://")?;
    let host = authority.split([':', '/']).next().unwrap_or("");
    let labels: Vec<&str> = host.split('.').collect();
    let ns = labels.get(2).copied().or(namespace)?;
    dns.get(&(ns.to_owned(), labels[0].to_owned()))
        .map(|addr| format!("http://{addr}"))
}

/// A running server: fire `stop` and await `task` to stop it gracefully.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<kv_server::Result<()>>,
}

pub struct PodRun {
    pub namespace: String,
    pub name: String,
    pub stateful_set: String,
    pub ordinal: i32,
    pub data_dir: PathBuf,
    /// Where it listens, or listened last (a stopped pod keeps its address in the slices).
    pub addr: Option<SocketAddr>,
    pub ready: bool,
    /// The controller revision (template hash) it was started with.
    pub revision: String,
    pub restarts: u32,
    /// Set by `kill`: the pod stays down until the test restarts it.
    pub held_down: bool,
    running: Option<Running>,
    dns: Dns,
}

impl PodRun {
    pub fn new(namespace: &str, stateful_set: &str, ordinal: i32, data_dir: PathBuf) -> PodRun {
        PodRun {
            namespace: namespace.to_owned(),
            name: format!("{stateful_set}-{ordinal}"),
            stateful_set: stateful_set.to_owned(),
            ordinal,
            data_dir,
            addr: None,
            ready: false,
            revision: String::new(),
            restarts: 0,
            held_down: false,
            running: None,
            dns: Dns::start(),
        }
    }

    /// The stable address its DNS name resolves to (see [`Dns`]).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns.addr
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Notices a server that ended on its own (it failed to start, or crashed).
    pub fn reap(&mut self) {
        if self.running.as_ref().is_some_and(|r| r.task.is_finished()) {
            let running = self.running.take().expect("checked");
            self.ready = false;
            self.dns.point_at(None);
            self.dns.point_at(None);
            if let Some(Ok(Err(error))) = futures::FutureExt::now_or_never(running.task) {
                tracing::warn!(pod = %self.name, %error, "simulated server exited");
            }
        }
    }

    /// Starts the server with the container's [`Settings`]; peers named by a simulated pod's
    /// DNS name are reached through that pod's [`Dns`] address, found in `dns`.
    pub async fn start(
        &mut self,
        revision: &str,
        settings: &Settings,
        dns: &Resolver,
    ) -> Result<(), String> {
        if self.running.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| format!("create {}: {e}", self.data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut config = kv_server::ServerConfig::new(&self.data_dir);
        config.listen = addr;
        config.node_name = self.name.clone();
        if let Some(size) = settings.cache_size {
            config.cache_size = size;
        }
        if let Some(raw) = &settings.cache_max_bytes {
            config.cache_max_bytes =
                kv_common::bytesize::parse(raw).map_err(|e| format!("KV_CACHE_MAX_BYTES: {e}"))?;
        }
        if let Some(limit) = settings.max_value_bytes {
            config.max_value_bytes = limit;
        }
        if let Some(vnodes) = settings.vnodes {
            config.replication.vnodes = vnodes;
        }
        config.replication.replication_factor = settings.replication_factor;
        config.replication.write_quorum = settings.write_quorum;
        if let Some(ms) = settings.replication_timeout_ms {
            config.replication.replication_timeout_ms = ms;
        }
        config.replication.peers = settings
            .peers
            .iter()
            .map(|entry| {
                kv_server::config::parse_peer(&resolve_peer(entry, &self.namespace, dns))
                    .map_err(|e| format!("KV_PEERS: {e}"))
            })
            .collect::<Result<_, _>>()?;
        config.validate()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(kv_server::run(listener, config, async move {
            let _ = stopped.await;
        }));
        if self.addr.is_some() {
            self.restarts += 1;
        }
        self.addr = Some(addr);
        self.ready = false;
        self.revision = revision.to_owned();
        self.running = Some(Running { stop, task });
        self.dns.point_at(Some(addr));
        tracing::info!(pod = %self.name, %addr, data_dir = %self.data_dir.display(), "simulated server started");
        Ok(())
    }

    /// Stops the server gracefully (SIGTERM: in-flight requests and queued writes finish) and
    /// waits until it has released its database.
    pub async fn stop(&mut self) {
        self.ready = false;
        self.dns.point_at(None);
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            match tokio::time::timeout(Duration::from_secs(10), running.task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::warn!(pod = %self.name, %error, "server stopped"),
                Ok(Err(error)) => tracing::warn!(pod = %self.name, %error, "server task failed"),
                Err(_) => tracing::warn!(pod = %self.name, "server did not stop within 10 s"),
            }
            tracing::info!(pod = %self.name, "simulated server stopped");
        }
    }

    /// The readiness probe: `GET /ready` answers 200 within half a second.
    pub async fn probe(&mut self) {
        self.ready = match (self.running.is_some(), self.addr) {
            (true, Some(addr)) => probe_ready(&format!("http://{addr}")).await,
            _ => false,
        };
    }
}

/// `GET {base}/ready` over a fresh HTTP/1.0 connection: true on a 2xx within 500 ms.
pub async fn probe_ready(base: &str) -> bool {
    let Some(authority) = base.strip_prefix("http://") else {
        return false;
    };
    let authority = authority.trim_end_matches('/').to_owned();
    let attempt = async move {
        let mut stream = tokio::net::TcpStream::connect(&authority).await.ok()?;
        let request = format!("GET /ready HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        // "HTTP/1.x 200"
        Some(head[9] == b'2')
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_named_by_a_pod_dns_name_are_resolved() {
        let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let dns = Resolver::from([(("kv".to_owned(), "demo-server-1".to_owned()), addr)]);
        for (entry, want) in [
            (
                "demo-server-1=http://demo-server-1.demo-server.kv.svc:8080",
                "demo-server-1=http://127.0.0.1:4242",
            ),
            (
                "demo-server-1=http://demo-server-1.demo-server.kv.svc.cluster.local:8080",
                "demo-server-1=http://127.0.0.1:4242",
            ),
            (
                "demo-server-1=http://demo-server-1:8080",
                "demo-server-1=http://127.0.0.1:4242",
            ),
            (
                "demo-server-1=http://demo-server-1.demo-server.other.svc:8080",
                "demo-server-1=http://demo-server-1.demo-server.other.svc:8080",
            ),
            ("x=http://10.0.0.1:8080", "x=http://10.0.0.1:8080"),
        ] {
            assert_eq!(resolve_peer(entry, "kv", &dns), want, "{entry}");
        }
    }
}
