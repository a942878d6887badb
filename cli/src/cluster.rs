//! `kvstore up` as a library: N storage servers and a gateway in this process, on one tokio
//! runtime, each through its crate's `run(listener, config, shutdown)`.
//!
//! [`start`] returns once every member and the gateway answer `/ready`, with the bound
//! addresses; [`Cluster::wait`] returns once the shutdown future has fired and everything has
//! stopped: the gateway first (no new requests), then the servers, which finish their queued
//! writes and close their databases.
//!
//! Members are named `server-1` ... `server-N` and keep their data in `DATA_DIR/server-i`. The
//! gateway places keys by member *name* (not address), so the same `--servers` and
//! `--data-dir` find every key again on the next start, whatever ports the servers get.
//!
//! With more than one server they replicate (docs/replication.md): every server is given
//! every other as a peer (`server-i` at its `127.0.0.1` URL, known since the listeners are
//! bound before any server starts), and the servers and the gateway the same R, and W when
//! given (without it each takes a majority of the R in force, which a stored ring may set).
//!
//! More servers than last time: while no ring was ever applied, each server's ring comes
//! from its flags and the servers catch up offline (a database that last caught up under
//! another ring re-reads its peers before serving), then [`start`] pins that ring and has
//! the servers delete the keys they no longer hold. Once a ring is stored (`kvstore ring
//! apply`, or an earlier start that moved keys), it wins over the flags and the new servers
//! would join owning nothing, so [`start`] moves keys to them with the rebalancing
//! coordinator, online, before it returns (see [`move_to_servers`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kv_server::store::SyncMode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::client::Client;
use crate::{Error, Result};

/// Most servers `kvstore up` starts: it is a development cluster on one machine.
pub const MAX_SERVERS: usize = 64;

/// How to start a local cluster. Flags of `kvstore up`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterConfig {
    /// Number of storage servers (`server-1` ... `server-N`). Keys are placed by server name:
    /// starting again with more servers moves the keys that change hands to their new
    /// servers before serving; fewer servers than the data directory holds is refused unless
    /// `kvstore ring apply` moved the keys off the servers left out.
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Directory holding each server's data, in `DIR/server-1`, `DIR/server-2`, ...
    #[arg(long, env = "KV_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Address of the gateway, the cluster's entry point (`127.0.0.1:0`: any free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// First port of the servers, on 127.0.0.1 (server-i gets PORT+i-1); default: free ports
    /// chosen by the system, printed at start.
    #[arg(long, value_name = "PORT")]
    pub server_port: Option<u16>,
    /// Keys in each server's LRU cache (0 disables it).
    #[arg(long, default_value_t = 100)]
    pub cache_size: usize,
    /// Memory each server's cache may hold (`64Mi`, `1Gi`, or bytes; 0 disables it).
    #[arg(long, default_value = kv_server::config::DEFAULT_CACHE_MAX_BYTES,
        value_parser = kv_common::bytesize::parse)]
    pub cache_max_bytes: u64,
    /// `full`: fsync every commit; `normal`: no fsync on commit (faster, may lose the last
    /// commits on power loss, never on a crash of this process).
    #[arg(long, value_enum, default_value_t = SyncMode::Full)]
    pub sync: SyncMode,
    /// Largest value a put may store, in bytes or with a suffix (`64Mi`, at most); the
    /// gateway takes bodies large enough to carry it.
    #[arg(long, default_value_t = kv_server::config::DEFAULT_MAX_VALUE_BYTES,
        value_parser = kv_common::bytesize::parse_usize)]
    pub max_value_bytes: usize,
    /// Servers holding each key (capped at --servers; 1 = no replication). Default 3; once a
    /// ring is stored in the data directory, the stored ring's, and a different value moves
    /// keys to the new replicas before `kvstore up` reports the cluster up.
    #[arg(long)]
    pub replication_factor: Option<usize>,
    /// Servers that must hold a version before a put is answered (default: a majority of the
    /// replication factor in force).
    #[arg(long)]
    pub write_quorum: Option<usize>,
    /// How long a put waits for its write quorum, in milliseconds (a longer wait suits large
    /// values or slow disks); the gateway waits 8 s longer, and at least 10 s.
    #[arg(long, default_value_t = kv_common::replication::DEFAULT_REPLICATION_TIMEOUT_MS)]
    pub replication_timeout_ms: u64,
}

/// `--replication-factor` of `kvstore up`: the servers' and the gateway's default.
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;

impl ClusterConfig {
    /// The defaults of `kvstore up`, with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> ClusterConfig {
        ClusterConfig {
            servers: 3,
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            server_port: None,
            cache_size: 100,
            cache_max_bytes: kv_server::config::default_cache_max_bytes(),
            sync: SyncMode::Full,
            max_value_bytes: kv_server::config::DEFAULT_MAX_VALUE_BYTES,
            replication_factor: None,
            write_quorum: None,
            replication_timeout_ms: kv_common::replication::DEFAULT_REPLICATION_TIMEOUT_MS,
        }
    }

    /// `--replication-factor`; without it the stored ring's (configured) factor if the data
    /// directory has one, else the default.
    fn asked_factor(&self) -> usize {
        self.replication_factor
            .or_else(|| {
                let db = self
                    .data_dir
                    .join("server-1")
                    .join(kv_server::store::DB_FILE);
                stored_ring(&db)
                    .filter(|s| s.current.epoch > 0)
                    .map(|s| s.current.replication_factor)
            })
            .unwrap_or(DEFAULT_REPLICATION_FACTOR)
    }

    /// The replication factor asked for (`--replication-factor`, else a stored ring's, else
    /// 3; capped at the number of servers) and the write quorum (the flag, or a majority of
    /// that factor).
    pub fn replication(&self) -> (usize, usize) {
        let factor = self.asked_factor().min(self.servers).max(1);
        (factor, self.write_quorum.unwrap_or(factor / 2 + 1))
    }

    /// Refuses to start fewer servers than `--data-dir` holds databases for: their keys would
    /// be unreachable. Unless a ring was moved off them (`kvstore ring apply` without them):
    /// a database left out that the stored ring in force no longer names holds nothing the
    /// cluster needs.
    pub fn check_no_server_left_out(&self) -> Result<()> {
        let db = |i: usize| {
            self.data_dir
                .join(format!("server-{i}"))
                .join(kv_server::store::DB_FILE)
        };
        let ring = stored_ring(&db(1));
        let moved_off = |i: usize| {
            ring.as_ref().is_some_and(|state| {
                let name = format!("server-{i}");
                state.next.is_none() && state.current.epoch > 0 && !state.current.contains(&name)
            })
        };
        let left_out: Vec<usize> = (self.servers + 1..=MAX_SERVERS)
            .filter(|&i| db(i).exists() && !moved_off(i))
            .collect();
        let Some(&last) = left_out.last() else {
            return Ok(());
        };
        let left_out: Vec<String> = left_out.iter().map(|i| format!("server-{i}")).collect();
        Err(Error::Config(format!(
            "{} holds data of {} as well: starting only {} server(s) would leave their keys \
             behind. Start with --servers {} or more and move the keys off them first with \
             `kvstore ring apply`, or use another --data-dir",
            self.data_dir.display(),
            left_out.join(", "),
            self.servers,
            last
        )))
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_SERVERS).contains(&self.servers) {
            return Err(Error::Config(format!(
                "--servers must be from 1 to {MAX_SERVERS}, got {}",
                self.servers
            )));
        }
        if let Some(port) = self.server_port
            && (port == 0 || usize::from(port) + self.servers - 1 > usize::from(u16::MAX))
        {
            return Err(Error::Config(format!(
                "--server-port {port} leaves no room for {} servers",
                self.servers
            )));
        }
        kv_server::config::check_max_value_bytes(self.max_value_bytes).map_err(Error::Config)?;
        if self.replication_timeout_ms == 0 {
            return Err(Error::Config(
                "--replication-timeout-ms must be at least 1".into(),
            ));
        }
        if self.replication_factor == Some(0) {
            return Err(Error::Config(
                "--replication-factor must be at least 1 (1 = no replication)".into(),
            ));
        }
        let (factor, quorum) = self.replication();
        if quorum == 0 || quorum > factor {
            let capped = if factor < self.asked_factor() {
                format!(
                    " (--replication-factor {} capped at --servers)",
                    self.asked_factor()
                )
            } else {
                String::new()
            };
            return Err(Error::Config(format!(
                "--write-quorum must be from 1 to the replication factor, {factor}{capped}; got \
                 {quorum}"
            )));
        }
        Ok(())
    }
}

/// One storage server of a running cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerInfo {
    /// Its name on the gateway's ring: `server-i`.
    pub name: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl ServerInfo {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A running cluster: where it listens, and the task that stops it.
#[derive(Debug)]
pub struct Cluster {
    pub gateway: SocketAddr,
    pub servers: Vec<ServerInfo>,
    /// Servers holding each key, and servers that acknowledge each put.
    pub replication_factor: usize,
    pub write_quorum: usize,
    supervisor: JoinHandle<Result<()>>,
}

impl Cluster {
    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.gateway)
    }

    /// The gateway's Swagger UI.
    pub fn docs_url(&self) -> String {
        format!("{}/docs", self.gateway_url())
    }

    /// Waits until the shutdown future given to [`start`] has fired and every part has
    /// stopped (or one part failed, which stops the others too).
    pub async fn wait(self) -> Result<()> {
        self.supervisor
            .await
            .map_err(|e| Error::Internal(format!("cluster task failed: {e}")))?
    }
}

type ServerTasks = JoinSet<(String, std::result::Result<(), kv_server::Error>)>;

/// Starts the cluster and returns once it serves; `shutdown` stops it (see [`Cluster::wait`]).
///
/// Every listener is bound before any database is opened, so a busy port fails fast. A data
/// directory held by another process gives [`Error::DataDirInUse`], and whatever had started
/// is stopped again before this returns.
pub async fn start(
    config: &ClusterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Cluster> {
    config.validate()?;
    config.check_no_server_left_out()?;
    let gateway_listener = bind(config.listen).await?;
    let gateway = local_addr(&gateway_listener)?;
    let mut listeners = Vec::new();
    for i in 0..config.servers {
        let port = config.server_port.map_or(0, |p| p + i as u16);
        listeners.push(bind(SocketAddr::from(([127, 0, 0, 1], port))).await?);
    }

    let mut shutdown = Box::pin(shutdown);
    let (servers_stop, servers_stopped) = watch::channel(false);
    let mut tasks = ServerTasks::new();
    let mut servers = Vec::new();
    for (i, listener) in listeners.iter().enumerate() {
        servers.push(ServerInfo {
            name: format!("server-{}", i + 1),
            addr: local_addr(listener)?,
            data_dir: config.data_dir.join(format!("server-{}", i + 1)),
        });
    }
    let (factor, quorum) = config.replication();
    // Every server, itself included (a lone server has no peers: it is standalone).
    let peers: Vec<kv_server::config::Peer> = if servers.len() > 1 {
        servers
            .iter()
            .map(|s| kv_server::config::Peer {
                name: s.name.clone(),
                url: s.url(),
            })
            .collect()
    } else {
        Vec::new()
    };
    for (listener, info) in listeners.into_iter().zip(&servers) {
        let mut server = kv_server::ServerConfig::new(&info.data_dir);
        server.listen = info.addr;
        server.node_name = info.name.clone();
        server.cache_size = config.cache_size;
        server.cache_max_bytes = config.cache_max_bytes;
        server.sync = config.sync;
        server.max_value_bytes = config.max_value_bytes;
        server.replication.peers = peers.clone();
        server.replication.replication_factor = Some(factor);
        // Only the flag: without one each server takes a majority of the factor in force,
        // which a stored ring may set to another value than the flags.
        server.replication.write_quorum = config.write_quorum;
        server.replication.replication_timeout_ms = config.replication_timeout_ms;
        let name = info.name.clone();
        let stop = stopped(servers_stopped.clone());
        tasks.spawn(async move { (name, kv_server::run(listener, server, stop).await) });
    }
    // Wait for every server to open its database; give up on the first failure.
    for server in &servers {
        tokio::select! {
            () = wait_ready(server.url()) => {}
            Some(joined) = tasks.join_next() => {
                let error = server_error(joined, &servers)
                    .unwrap_or_else(|| Error::Internal("a server stopped while starting".into()));
                stop_servers(&servers_stop, tasks).await;
                return Err(error);
            }
            () = &mut shutdown => {
                stop_servers(&servers_stop, tasks).await;
                return Err(Error::Interrupted);
            }
        }
    }

    let backends = servers.iter().map(|s| (s.name.clone(), s.url()));
    let mut gateway_config = match kv_gateway::GatewayConfig::with_backends(backends) {
        Ok(config) => config,
        Err(e) => {
            stop_servers(&servers_stop, tasks).await;
            return Err(Error::Gateway(e));
        }
    };
    gateway_config.listen = gateway;
    gateway_config.replication_factor = factor;
    gateway_config.write_quorum = config.write_quorum;
    gateway_config.max_body_bytes = kv_common::api::gateway_max_body_bytes(config.max_value_bytes);
    gateway_config.request_timeout_ms =
        kv_common::replication::gateway_request_timeout_ms(config.replication_timeout_ms);
    let (gateway_stop, gateway_stopped) = watch::channel(false);
    let mut gateway_task = tokio::spawn(kv_gateway::run(
        gateway_listener,
        gateway_config,
        stopped(gateway_stopped),
    ));
    // Ready = the gateway's first health checks have found the servers.
    let early = tokio::select! {
        () = wait_ready(format!("http://{gateway}")) => None,
        joined = &mut gateway_task => Some(gateway_result(joined).err().unwrap_or_else(|| {
            Error::Internal("the gateway stopped while starting".into())
        })),
        () = &mut shutdown => Some(Error::Interrupted),
    };
    if let Some(error) = early {
        let _ = gateway_stop.send(true);
        if !gateway_task.is_finished() {
            let _ = gateway_task.await;
        }
        stop_servers(&servers_stop, tasks).await;
        return Err(error);
    }
    // Under a stored ring, its factor is the one in force (and W a majority of it, unless
    // given).
    let stored = if servers.len() > 1 {
        // A move may take minutes: Ctrl-C stops it (it goes on at the next start).
        tokio::select! {
            stored = move_to_servers(&servers, config.replication_factor) => stored,
            () = &mut shutdown => {
                let _ = gateway_stop.send(true);
                let _ = gateway_task.await;
                stop_servers(&servers_stop, tasks).await;
                return Err(Error::Interrupted);
            }
        }
    } else {
        None
    };
    let (factor, quorum) = match stored {
        Some(ring) => {
            let factor = ring.factor();
            let quorum = config
                .write_quorum
                .unwrap_or(factor / 2 + 1)
                .clamp(1, factor);
            (factor, quorum)
        }
        None => (factor, quorum),
    };

    let supervisor = tokio::spawn({
        let servers = servers.clone();
        async move {
            let mut failure = None;
            let mut gateway_done = false;
            tokio::select! {
                () = shutdown => {}
                joined = &mut gateway_task => {
                    gateway_done = true;
                    failure = gateway_result(joined).err();
                }
                Some(joined) = tasks.join_next() => failure = server_error(joined, &servers),
            }
            // The gateway first, so no request reaches a server that is closing.
            let _ = gateway_stop.send(true);
            if !gateway_done {
                let result = gateway_result(gateway_task.await);
                failure = failure.or(result.err());
            }
            let _ = servers_stop.send(true);
            while let Some(joined) = tasks.join_next().await {
                failure = failure.or(server_error(joined, &servers));
            }
            failure.map_or(Ok(()), Err)
        }
    });
    Ok(Cluster {
        gateway,
        servers,
        replication_factor: factor,
        write_quorum: quorum,
        supervisor,
    })
}

/// The ring state stored in a server's database, if any (read-only: the server may run).
fn stored_ring(db: &std::path::Path) -> Option<kv_common::ring_config::RingState> {
    if !db.exists() {
        return None;
    }
    let conn = kv_server::store::db::open_reader(db).ok()?;
    let json =
        kv_server::store::db::meta(&conn, kv_server::replication::ring_state::RING_STATE_META)
            .ok()??;
    serde_json::from_str(&json).ok()
}

/// When the servers run under a stored ring (epoch 1 or more) that does not name them all,
/// or `replication_factor` (the flag, when given) is not the stored ring's, moves keys to the
/// ring of every server with that factor with kv-rebalance's coordinator (as `kvstore ring
/// apply` does) and returns once it is in force. The vnodes stay the ring's: changing them
/// is `kvstore ring apply`'s job. A move that does not finish is logged and left to the next
/// start (every step is idempotent); the cluster serves anyway.
///
/// Without a stored ring, when servers started under another ring than last time (they
/// report a clean-up pending), pins the flags' ring as epoch 1 and cleans them up.
///
/// Returns the stored ring configuration in force at the end, `None` without one (the
/// servers' rings come from their flags).
pub async fn move_to_servers(
    servers: &[ServerInfo],
    replication_factor: Option<usize>,
) -> Option<kv_common::ring_config::RingConfig> {
    use kv_common::ring_config::RingMember;
    use kv_rebalance::{Coordinator, Target};

    let members: Vec<RingMember> = servers
        .iter()
        .map(|s| RingMember {
            name: s.name.clone(),
            url: s.url(),
        })
        .collect();
    let target = Target {
        members: members.clone(),
        vnodes: None,
        replication_factor,
    };
    let coordinator = Coordinator::new(Duration::from_secs(5));
    let in_force = async || {
        let observed = coordinator.observe(&members, &target).await;
        observed
            .cluster_state()
            .filter(|s| s.current.epoch > 0)
            .cloned()
    };
    let Some(state) = in_force().await else {
        // Epoch 0 everywhere: no ring was stored, the servers' flags are the ring. Servers
        // that started under another ring than last time (more of them: keys changed hands)
        // have copied what they hold now and still hold what they no longer do. Every server
        // answered ready, so each has caught up: the coordinator pins the ring (epoch 1)
        // and has them delete their leftovers, as a move's last step does.
        let same = Target {
            replication_factor: None,
            ..target.clone()
        };
        let observed = coordinator.observe(&members, &same).await;
        let pending = observed
            .views
            .values()
            .filter_map(|v| v.as_ref().ok())
            .any(|v| v.cleanup_pending);
        if !pending {
            return None;
        }
        tracing::info!(
            servers = servers.len(),
            "the servers started under a new ring: deleting the keys they no longer hold"
        );
        run_coordinator(&coordinator, &members, &same).await;
        return in_force().await.map(|s| s.current);
    };
    let named = |n: &ServerInfo| state.current.contains(&n.name);
    let new_factor = replication_factor.filter(|&r| r != state.current.replication_factor);
    if state.next.is_none() && servers.iter().all(named) && new_factor.is_none() {
        return Some(state.current);
    }
    tracing::info!(
        epoch = state.current.epoch,
        from = state.current.members.len(),
        to = servers.len(),
        replication_factor_from = state.current.replication_factor,
        replication_factor_to = replication_factor.unwrap_or(state.current.replication_factor),
        "the stored ring is not the one asked for: moving keys"
    );
    run_coordinator(&coordinator, &members, &target).await;
    Some(in_force().await.map_or(state.current, |s| s.current))
}

/// Runs the coordinator towards `target` with progress in the log; a move that does not
/// finish within 10 minutes is logged and left to the next start (every step is idempotent).
async fn run_coordinator(
    coordinator: &kv_rebalance::Coordinator,
    members: &[kv_common::ring_config::RingMember],
    target: &kv_rebalance::Target,
) {
    let mut last = String::new();
    let mut report = |p: &kv_rebalance::Progress| {
        let line = format!("{} {}", p.phase.as_str(), p.message);
        if line != last {
            tracing::info!(phase = p.phase.as_str(), "{}", p.message);
            last = line;
        }
    };
    let poll = Duration::from_millis(200);
    match coordinator
        .run(members, target, poll, Duration::from_secs(600), &mut report)
        .await
    {
        Ok(done) => tracing::info!(epoch = done.epoch, servers = members.len(), "ring in force"),
        Err(error) => tracing::warn!(%error,
            "the move to every server did not finish; serving anyway, the next start goes on"),
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr> {
    listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("cannot read a listener's address: {e}")))
}

/// Resolves once `true` is sent, or the sender is gone (nobody can stop us any more).
async fn stopped(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}

/// Polls `GET {url}/ready` until it answers 200. Callers race it against the task it probes,
/// so a server that fails to start is noticed at once rather than by a timeout.
async fn wait_ready(url: String) {
    let Ok(client) = Client::new(&url, Duration::from_secs(2)) else {
        return std::future::pending().await;
    };
    loop {
        if let Ok(answer) = client.get("/ready").await
            && answer.status.is_success()
            && synced(&client).await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A replicated server with a new database answers keys only once it has caught up with its
/// peers (they all start together here, so that takes a moment): the cluster is announced
/// when every server is past that.
async fn synced(client: &Client) -> bool {
    let Ok(answer) = client.get("/health").await else {
        return false;
    };
    serde_json::from_slice::<kv_common::replication::HealthBody>(&answer.body)
        .map(|h| h.replication.is_none_or(|r| r.synced))
        .unwrap_or(false)
}

async fn stop_servers(stop: &watch::Sender<bool>, mut tasks: ServerTasks) {
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
}

/// The error of a server task that ended, if it failed; a locked database gets its own error.
fn server_error(
    joined: std::result::Result<(String, kv_server::Result<()>), tokio::task::JoinError>,
    servers: &[ServerInfo],
) -> Option<Error> {
    match joined {
        Ok((_, Ok(()))) => None,
        Ok((_, Err(kv_server::Error::DatabaseInUse { path }))) => {
            // Name the server's directory, which is what the user gave (via --data-dir).
            let dir = servers
                .iter()
                .find(|s| path.starts_with(&s.data_dir))
                .map_or(path, |s| s.data_dir.clone());
            Some(Error::DataDirInUse { path: dir })
        }
        Ok((name, Err(source))) => Some(Error::Server { name, source }),
        Err(e) => Some(Error::Internal(format!("a server task failed: {e}"))),
    }
}

fn gateway_result(
    joined: std::result::Result<kv_gateway::Result<()>, tokio::task::JoinError>,
) -> Result<()> {
    match joined {
        Ok(result) => result.map_err(Error::Gateway),
        Err(e) => Err(Error::Internal(format!("the gateway task failed: {e}"))),
    }
}
