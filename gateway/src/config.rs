//! The gateway's configuration: command-line flags with environment fallbacks, or built in
//! code by whoever starts the gateway in-process (the `kvstore` CLI, tests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::membership::static_list::parse_backend;
use crate::membership::{BackendUrl, Member};
use crate::ring::DEFAULT_VNODES;

const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Longer than the servers' default replication timeout, so a put that misses its quorum gets
/// the server's answer (`kv_common::replication::gateway_request_timeout_ms`).
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = kv_common::replication::DEFAULT_GATEWAY_REQUEST_TIMEOUT_MS;
const DEFAULT_HEALTH_INTERVAL_MS: u64 = 1_000;
const DEFAULT_CLIENT_TIMEOUT_SECS: u64 = kv_common::serve::DEFAULT_CLIENT_TIMEOUT_SECS;
/// Above the server's largest accepted value, so the server, not the gateway, says what is
/// too large.
const DEFAULT_MAX_BODY_BYTES: usize = kv_common::api::DEFAULT_GATEWAY_MAX_BODY_BYTES;
/// `--max-inflight-body-bytes` when not given: 16 bodies of the largest default size.
const DEFAULT_MAX_INFLIGHT_BODY_BYTES: usize = 256 << 20;
/// The largest value a server may hold, and room for the JSON around it (a `/versions` page
/// stops at `VERSIONS_PAGE_BYTES` of values unless its one value is larger).
const DEFAULT_MAX_RESPONSE_BYTES: usize = kv_common::api::MAX_VALUE_BYTES_LIMIT + (1 << 20);
const DEFAULT_REMOVAL_GRACE_SECS: u64 = 60;
const DEFAULT_LINKS_PER_SERVER: usize = 1;
/// More links than this per server buy nothing but sockets: no server has that many cores
/// left for one gateway.
const MAX_LINKS_PER_SERVER: usize = 64;
/// Replicas per key where there are that many servers.
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;

/// Replication as configured. What is in force also depends on how many members there are
/// (see [`Replication::in_force`]), which Kubernetes discovery changes at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    pub factor: usize,
    pub write_quorum: Option<usize>,
}

impl Replication {
    /// `(R, W)` with `members` servers: R is capped at the member count (at least 1), W at R,
    /// and W defaults to a majority of R.
    pub fn in_force(self, members: usize) -> (usize, usize) {
        let r = self.factor.min(members).max(1);
        let w = self.write_quorum.unwrap_or(r / 2 + 1).clamp(1, r);
        (r, w)
    }
}

/// How the gateway carries requests to servers (`--backend-transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// The pipelined link of `kv_common::mux`.
    Link,
    /// One HTTP/1.1 exchange per request, over pooled keep-alive connections.
    Http,
}

/// Flatten it into a binary's own parser (`#[command(flatten)]`), as `kv-gateway` does.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// Address to listen on.
    #[arg(long, env = "KV_GATEWAY_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// A server, as NAME=URL (`kv-1=http://10.0.0.1:8080`) or, like the seed's
    /// BACKEND_SERVERS, as host:port (named `host:port`, reached over http). The name places
    /// keys on the ring: keep names stable. Repeat the flag, or give a comma-separated list.
    #[arg(long = "backend", env = "KV_BACKENDS", value_delimiter = ',', value_parser = parse_backend)]
    pub backends: Vec<Member>,

    /// Virtual nodes per server. 150 is the seed's placement.
    #[arg(long, env = "KV_VNODES", default_value_t = DEFAULT_VNODES)]
    pub vnodes: usize,

    /// Servers holding each key; capped at the number of servers. Must match the servers'
    /// `--replication-factor` (1 = no replication).
    #[arg(long, env = "KV_REPLICATION_FACTOR", default_value_t = DEFAULT_REPLICATION_FACTOR)]
    pub replication_factor: usize,

    /// Servers that must hold a version before a put is answered (default: a majority of the
    /// replication factor in force).
    #[arg(long, env = "KV_WRITE_QUORUM")]
    pub write_quorum: Option<usize>,

    #[command(flatten)]
    pub kubernetes: KubernetesConfig,

    /// Connect timeout towards servers, in milliseconds.
    #[arg(long, env = "KV_CONNECT_TIMEOUT_MS", default_value_t = DEFAULT_CONNECT_TIMEOUT_MS)]
    pub connect_timeout_ms: u64,

    /// Time a server has to answer a request completely, in milliseconds. Keep it well above
    /// the servers' `--replication-timeout-ms` (the defaults: 10 s over 2 s), or a put that
    /// misses its quorum ends in this gateway's 504 instead of the server's answer.
    #[arg(long, env = "KV_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,

    /// Seconds a client connection may take to send a request head (from its opening, or
    /// from the last answer on a kept-alive connection), and a request body after its head.
    /// A connection that sends no request for this long is closed, a body that does not
    /// arrive in time is answered `408 body_timeout`, and a client that reads nothing of its
    /// answers for this long is disconnected: a client that stalls, by accident or to hold
    /// connections open, cannot keep the gateway's sockets. Keep it above the idle
    /// timeout of any load balancer in front of the gateway (60 s on most).
    #[arg(long, env = "KV_CLIENT_TIMEOUT_SECS", default_value_t = DEFAULT_CLIENT_TIMEOUT_SECS)]
    pub client_timeout_secs: u64,

    /// Most client connections open at once; at the limit, new ones wait in the listen
    /// backlog until one closes. Default: the open files limit less a quarter of it (at most
    /// 1024 kept), which leaves descriptors for the links, client pools and log files.
    #[arg(long, env = "KV_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Interval of the active health checks, in milliseconds (also the `Retry-After` hint).
    #[arg(long, env = "KV_HEALTH_INTERVAL_MS", default_value_t = DEFAULT_HEALTH_INTERVAL_MS)]
    pub health_interval_ms: u64,

    /// Largest request body forwarded, in bytes or with a suffix (`16Mi`).
    #[arg(long, env = "KV_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES,
        value_parser = kv_common::bytesize::parse_usize)]
    pub max_body_bytes: usize,

    /// Put bodies held in memory at once, in bytes or with a suffix (`256Mi`): a put is
    /// read once its `Content-Length` fits beside the others' (a body without one counts as
    /// `--max-body-bytes`), and waits, unread, until then. At least one put of the largest size.
    #[arg(long, env = "KV_MAX_INFLIGHT_BODY_BYTES", default_value_t = DEFAULT_MAX_INFLIGHT_BODY_BYTES,
        value_parser = kv_common::bytesize::parse_usize)]
    pub max_inflight_body_bytes: usize,

    /// Largest server answer forwarded, in bytes or with a suffix (`64Mi`).
    #[arg(long, env = "KV_MAX_RESPONSE_BYTES", default_value_t = DEFAULT_MAX_RESPONSE_BYTES,
        value_parser = kv_common::bytesize::parse_usize)]
    pub max_response_bytes: usize,

    /// How requests travel to servers: `link`, the pipelined link (many requests per
    /// connection and socket call; a server that does not speak it gets HTTP), or `http`,
    /// one pooled HTTP/1.1 exchange per request.
    #[arg(long, env = "KV_BACKEND_TRANSPORT", value_enum, default_value_t = Transport::Link)]
    pub backend_transport: Transport,

    /// Links opened to each server with `--backend-transport link`, requests taken in turn
    /// (1 to 64). A server handles one link's requests on one core at a time: raise this when
    /// servers have more cores than there are gateways in front of them.
    #[arg(long, env = "KV_LINKS_PER_SERVER", default_value_t = DEFAULT_LINKS_PER_SERVER)]
    pub links_per_server: usize,

    /// File holding the API token clients must send as `Authorization: Bearer TOKEN`.
    /// Without it (nor --api-token) authentication is off.
    #[arg(long, env = "KV_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// The API token itself (prefer the file: environments leak).
    #[arg(long, env = "KV_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

/// Discovery of the servers from the EndpointSlices of their headless Service.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubernetesConfig {
    /// Name of the servers' headless Service; turns Kubernetes discovery on.
    #[arg(long = "k8s-service", env = "KV_K8S_SERVICE")]
    pub service: Option<String>,

    /// Namespace of that Service (default: the gateway's own).
    #[arg(long = "k8s-namespace", env = "KV_K8S_NAMESPACE")]
    pub namespace: Option<String>,

    /// Name of the Service port to use (default: `http`, else the first port).
    #[arg(
        long = "k8s-port-name",
        env = "KV_K8S_PORT_NAME",
        default_value = "http"
    )]
    pub port_name: String,

    /// How long a server that vanished from the EndpointSlices keeps its place on the ring
    /// (its keys answer 503 meanwhile), so that a pod being replaced does not move keys.
    #[arg(long = "k8s-removal-grace-secs", env = "KV_K8S_REMOVAL_GRACE_SECS", default_value_t = DEFAULT_REMOVAL_GRACE_SECS)]
    pub removal_grace_secs: u64,
}

impl GatewayConfig {
    /// A configuration with a static server list and every other setting at its default.
    pub fn with_backends<I, N, U>(backends: I) -> Result<GatewayConfig>
    where
        I: IntoIterator<Item = (N, U)>,
        N: Into<String>,
        U: AsRef<str>,
    {
        let backends = backends
            .into_iter()
            .map(|(name, url)| {
                Ok(Member {
                    name: name.into(),
                    url: BackendUrl::parse(url.as_ref()).map_err(Error::Config)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GatewayConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            backends,
            vnodes: DEFAULT_VNODES,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            write_quorum: None,
            kubernetes: KubernetesConfig {
                port_name: "http".into(),
                removal_grace_secs: DEFAULT_REMOVAL_GRACE_SECS,
                ..KubernetesConfig::default()
            },
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            client_timeout_secs: DEFAULT_CLIENT_TIMEOUT_SECS,
            max_connections: None,
            health_interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_inflight_body_bytes: DEFAULT_MAX_INFLIGHT_BODY_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            backend_transport: Transport::Link,
            links_per_server: DEFAULT_LINKS_PER_SERVER,
            api_token_file: None,
            api_token: None,
        })
    }

    /// Checks what clap cannot: one membership source, sane numbers, unique names.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: &str| Err(Error::Config(msg.to_owned()));
        match (self.backends.is_empty(), self.kubernetes.service.is_some()) {
            (true, false) => return fail("no servers: give --backend NAME=URL or --k8s-service"),
            (false, true) => return fail("--backend and --k8s-service are exclusive"),
            _ => {}
        }
        let mut names: Vec<&str> = self.backends.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Config(format!(
                "server '{}' is listed twice",
                pair[0]
            )));
        }
        if self.vnodes == 0 {
            return fail("--vnodes must be at least 1");
        }
        if !(1..=MAX_LINKS_PER_SERVER).contains(&self.links_per_server) {
            return Err(Error::Config(format!(
                "--links-per-server must be from 1 to {MAX_LINKS_PER_SERVER}, got {}",
                self.links_per_server
            )));
        }
        if self.replication_factor == 0 {
            return fail("--replication-factor must be at least 1");
        }
        if let Some(w) = self.write_quorum
            && (w == 0 || w > self.replication_factor)
        {
            return Err(Error::Config(format!(
                "--write-quorum must be from 1 to --replication-factor ({}), got {w}",
                self.replication_factor
            )));
        }
        if self.max_connections == Some(0) {
            return fail("--max-connections must be at least 1");
        }
        if self.connect_timeout_ms == 0
            || self.request_timeout_ms == 0
            || self.client_timeout_secs == 0
            || self.health_interval_ms == 0
        {
            return fail("timeouts and the health interval must be positive");
        }
        Ok(())
    }

    /// The replication factor and write quorum in force with `members` servers: R is capped
    /// at the member count, W at R, and W defaults to a majority of R.
    pub fn replication(&self, members: usize) -> (usize, usize) {
        self.replication_settings().in_force(members)
    }

    /// R and W as configured, for the state to recompute what is in force as members come
    /// and go.
    pub fn replication_settings(&self) -> Replication {
        Replication {
            factor: self.replication_factor,
            write_quorum: self.write_quorum,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn client_timeout(&self) -> Duration {
        Duration::from_secs(self.client_timeout_secs)
    }

    /// The client connection limit in force: `--max-connections`, or what the open files
    /// limit leaves room for (none when it is unlimited).
    pub fn connection_limit(&self, open_files: Option<u64>) -> Option<usize> {
        self.max_connections.or_else(|| {
            let open_files = open_files?;
            let kept = (open_files / 4).min(1024);
            Some(
                usize::try_from(open_files - kept)
                    .unwrap_or(usize::MAX)
                    .max(1),
            )
        })
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: GatewayConfig,
    }

    fn parse(args: &[&str]) -> Result<GatewayConfig, clap::Error> {
        Cli::try_parse_from(args).map(|cli| cli.config)
    }

    #[test]
    fn flags_parse_and_validate() {
        let config = parse(&[
            "kv-gateway",
            "--listen",
            "127.0.0.1:9000",
            "--backend",
            "kv-1=http://127.0.0.1:8081",
            "--backend",
            "server-2:8080,kv-3=http://10.0.0.3:80/",
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        let names: Vec<_> = config.backends.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["kv-1", "server-2:8080", "kv-3"]);
        assert_eq!(config.backends[1].url.to_string(), "http://server-2:8080");
        assert_eq!(config.vnodes, 150);
        config.validate().unwrap();
        let sized = parse(&["kv-gateway", "--max-body-bytes", "32Mi"]).unwrap();
        assert_eq!(sized.max_body_bytes, 32 << 20);
        assert!(parse(&["kv-gateway", "--max-body-bytes", "32MB"]).is_err());
    }

    #[test]
    fn replication_in_force_follows_the_member_count() {
        let mut config = GatewayConfig::with_backends([("a", "http://x:1")]).unwrap();
        assert_eq!(config.replication(0), (1, 1));
        assert_eq!(config.replication(1), (1, 1));
        assert_eq!(config.replication(2), (2, 2));
        assert_eq!(config.replication(5), (3, 2));
        config.replication_factor = 5;
        assert_eq!(config.replication(9), (5, 3));
        config.write_quorum = Some(4);
        assert_eq!(config.replication(9), (5, 4));
        // A quorum above the capped factor is capped too: three members cannot hold four.
        assert_eq!(config.replication(3), (3, 3));
    }

    #[test]
    fn the_connection_limit_leaves_descriptors_for_links_pools_and_files() {
        let mut config = GatewayConfig::with_backends([("a", "http://x:1")]).unwrap();
        // A quarter kept under 4096 files, 1024 above.
        assert_eq!(config.connection_limit(Some(1024)), Some(768));
        assert_eq!(config.connection_limit(Some(20_000)), Some(18_976));
        assert_eq!(
            config.connection_limit(Some(1 << 20)),
            Some((1 << 20) - 1024)
        );
        assert_eq!(config.connection_limit(Some(1)), Some(1));
        assert_eq!(config.connection_limit(None), None);
        config.max_connections = Some(10);
        assert_eq!(config.connection_limit(Some(20_000)), Some(10));
        assert_eq!(config.connection_limit(None), Some(10));
        config.max_connections = Some(0);
        assert!(config.validate().is_err());
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(parse(&["kv-gateway", "--backend", "a=ftp://x"]).is_err());
        let mut config =
            GatewayConfig::with_backends([("a", "http://x:1"), ("a", "http://y:1")]).unwrap();
        assert!(config.validate().is_err());
        config.backends.clear();
        assert!(config.validate().is_err());
        config.kubernetes.service = Some("kv".into());
        config.validate().unwrap();
        assert!(GatewayConfig::with_backends([("a", "not a url")]).is_err());
    }

    #[test]
    fn links_per_server_is_from_1_to_64() {
        let with = |n: &str| {
            parse(&[
                "kv-gateway",
                "--backend",
                "a=http://x:1",
                "--links-per-server",
                n,
            ])
            .unwrap()
            .validate()
        };
        assert!(with("1").is_ok());
        assert!(with("64").is_ok());
        for bad in ["0", "65"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(
                err.contains("--links-per-server must be from 1 to 64"),
                "{err}"
            );
        }
        let default = GatewayConfig::with_backends([("a", "http://x:1")]).unwrap();
        assert_eq!(default.links_per_server, 1);
    }
}
