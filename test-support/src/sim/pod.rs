//! One simulated server pod: a real `kv-server` in this process, on `127.0.0.1` and an
//! ephemeral port, over a data directory that belongs to the pod's ordinal (its claim), so a
//! restart finds its data. A restart gets a new port, as a real pod gets a new IP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Notices a server that ended on its own (it failed to start, or crashed).
    pub fn reap(&mut self) {
        if self.running.as_ref().is_some_and(|r| r.task.is_finished()) {
            let running = self.running.take().expect("checked");
            self.ready = false;
            if let Some(Ok(Err(error))) = futures::FutureExt::now_or_never(running.task) {
                tracing::warn!(pod = %self.name, %error, "simulated server exited");
            }
        }
    }

    /// Starts the server with the container's settings (`KV_CACHE_SIZE` is honoured; flags
    /// are not: the listen address and data directory are the simulator's).
    pub async fn start(&mut self, revision: &str, cache_size: Option<usize>) -> Result<(), String> {
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
        if let Some(size) = cache_size {
            config.cache_size = size;
        }
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
        tracing::info!(pod = %self.name, %addr, data_dir = %self.data_dir.display(), "simulated server started");
        Ok(())
    }

    /// Stops the server gracefully (SIGTERM: in-flight requests and queued writes finish) and
    /// waits until it has released its database.
    pub async fn stop(&mut self) {
        self.ready = false;
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
