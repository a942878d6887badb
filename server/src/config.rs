//! Server configuration: every flag is also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kv_common::api::MAX_VALUE_BYTES_LIMIT;

use crate::store::{StoreConfig, SyncMode};

/// Default `--max-value-bytes`: 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = kv_common::api::DEFAULT_MAX_VALUE_BYTES;

/// Checks a `--max-value-bytes`; also for whatever starts servers and wants to refuse a bad
/// value before starting anything (`kvstore up`).
pub fn check_max_value_bytes(max_value_bytes: usize) -> Result<(), String> {
    if max_value_bytes == 0 || max_value_bytes > MAX_VALUE_BYTES_LIMIT {
        return Err(format!(
            "--max-value-bytes must be from 1 to {MAX_VALUE_BYTES_LIMIT} ({} MiB), got {}",
            MAX_VALUE_BYTES_LIMIT >> 20,
            max_value_bytes
        ));
    }
    Ok(())
}

/// Default `--cache-max-bytes`, as flags and the operator write it.
pub const DEFAULT_CACHE_MAX_BYTES: &str = "64Mi";

/// [`DEFAULT_CACHE_MAX_BYTES`] in bytes, for configurations built in code.
/// `--max-inflight-body-bytes` when not given.
pub const DEFAULT_MAX_INFLIGHT_BODY_BYTES: &str = "256Mi";

pub fn default_cache_max_bytes() -> u64 {
    kv_common::bytesize::parse(DEFAULT_CACHE_MAX_BYTES).expect("the default size parses")
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(long, env = "KV_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Also serve `/metrics` (and `/health`) on this address, and nothing else, so that a
    /// network policy can let Prometheus in without letting it reach the data. `/metrics`
    /// stays on `--listen` too.
    #[arg(long, env = "KV_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory holding `kv_store.db` (created if missing).
    #[arg(long, env = "KV_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Name shown in stats and logs (in Kubernetes, the pod name).
    #[arg(long, env = "KV_NODE_NAME", default_value = "kv-server")]
    pub node_name: String,
    /// Keys kept in the LRU cache (0 disables it).
    #[arg(long, env = "KV_CACHE_SIZE", default_value_t = 100)]
    pub cache_size: usize,
    /// Memory the cache may hold: keys, values and bookkeeping, in bytes or with a suffix
    /// (`64Mi`, `1Gi`, `500M`); 0 disables it. Whichever of this and `--cache-size` is
    /// reached first evicts the least recently used keys.
    #[arg(long, env = "KV_CACHE_MAX_BYTES", default_value = DEFAULT_CACHE_MAX_BYTES,
        value_parser = kv_common::bytesize::parse)]
    pub cache_max_bytes: u64,
    /// Minutes after which a cached key is dropped (the seed's expiry).
    #[arg(long, env = "KV_CACHE_TTL_MINUTES", default_value_t = 30.0)]
    pub cache_ttl_minutes: f64,
    /// Largest value accepted, in bytes of JSON text (`1048576`, `1Mi`, `64Mi`); larger puts
    /// get 413.
    #[arg(long, env = "KV_MAX_VALUE_BYTES", default_value_t = DEFAULT_MAX_VALUE_BYTES,
        value_parser = kv_common::bytesize::parse_usize)]
    pub max_value_bytes: usize,
    /// Put bodies held in memory at once, in bytes or with a suffix (`256Mi`): a put is read
    /// once its `Content-Length` fits beside the others' (a body without one counts as the
    /// largest allowed), and waits, unread, until then. At least one put of the largest size.
    #[arg(long, env = "KV_MAX_INFLIGHT_BODY_BYTES", default_value = DEFAULT_MAX_INFLIGHT_BODY_BYTES,
        value_parser = kv_common::bytesize::parse_usize)]
    pub max_inflight_body_bytes: usize,
    /// `full`: fsync every commit (survives power loss). `normal`: no fsync on commit
    /// (survives a crash of kv-server, may lose the last commits on power loss).
    #[arg(long, env = "KV_SYNC", value_enum, default_value_t = SyncMode::Full)]
    pub sync: SyncMode,
    /// Idle read-only SQLite connections kept open.
    #[arg(long, env = "KV_READERS", default_value_t = 8)]
    pub readers: usize,
    /// Puts that may queue for the writer before new ones wait (back-pressure).
    #[arg(long, env = "KV_WRITE_QUEUE", default_value_t = 4096)]
    pub write_queue: usize,
    /// Seconds an HTTP client (a gateway, a peer, a tool) may take to send its first byte or
    /// a request head (from the opening, or from the last answer on a kept-alive
    /// connection), or to read an answer: past it the connection is closed. Ends the
    /// connections a peer left half-open (it died, or a partition cut it); the gateway's
    /// pipelined links are not HTTP and are not affected. Keep it above the client pools' 60 s.
    #[arg(long, env = "KV_CLIENT_TIMEOUT_SECS",
          default_value_t = kv_common::serve::DEFAULT_CLIENT_TIMEOUT_SECS)]
    pub client_timeout_secs: u64,

    #[command(flatten)]
    pub replication: ReplicationConfig,
}

/// Replication (see docs/replication.md). Without `--peers` the server is standalone.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicationConfig {
    /// Every server of the ring as NAME=URL (`kv-1=http://10.0.0.2:8080`), names matching the
    /// gateway's. Name this server too: one left out is a joiner that owns nothing until a
    /// ring naming it is applied (rebalancing). Only this server: a one-member ring. Repeat
    /// the flag or give a comma-separated list. Turns replication on. A ring state stored in
    /// the database (from rebalancing) wins over this flag.
    #[arg(long = "peers", env = "KV_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<Peer>,
    /// Servers holding each key (default: 3, or every server when there are fewer).
    #[arg(long, env = "KV_REPLICATION_FACTOR")]
    pub replication_factor: Option<usize>,
    /// Servers that must hold a version before a put is answered, when the put does not say
    /// (the gateway does); default: a majority of the replication factor.
    #[arg(long, env = "KV_WRITE_QUORUM")]
    pub write_quorum: Option<usize>,
    /// Virtual nodes per server on the ring; must be the gateway's.
    #[arg(long, env = "KV_VNODES", default_value_t = kv_common::ring::DEFAULT_VNODES)]
    pub vnodes: usize,
    /// How long a put waits for its write quorum, in milliseconds. A gateway in front must
    /// wait longer: `kvstore up` and the operator give its `--request-timeout-ms` this plus
    /// 8 s, and at least its default 10 s.
    #[arg(long, env = "KV_REPLICATION_TIMEOUT_MS",
          default_value_t = kv_common::replication::DEFAULT_REPLICATION_TIMEOUT_MS)]
    pub replication_timeout_ms: u64,
    /// Pause between two catch-up pulls from a peer that had nothing new, in milliseconds.
    #[arg(long, env = "KV_CATCH_UP_INTERVAL_MS", default_value_t = 500)]
    pub catch_up_interval_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> ReplicationConfig {
        ReplicationConfig {
            peers: Vec::new(),
            replication_factor: None,
            write_quorum: None,
            vnodes: kv_common::ring::DEFAULT_VNODES,
            replication_timeout_ms: kv_common::replication::DEFAULT_REPLICATION_TIMEOUT_MS,
            catch_up_interval_ms: 500,
        }
    }
}

/// Default replication factor where there are enough servers.
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;

/// A member of the cluster as `--peers` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// `http://host:port`, no trailing slash.
    pub url: String,
}

/// Parses `NAME=http://host:port`.
pub fn parse_peer(raw: &str) -> Result<Peer, String> {
    let (name, url) = raw
        .split_once('=')
        .ok_or_else(|| format!("'{raw}' is not NAME=URL"))?;
    let name = name.trim();
    let url = url.trim().trim_end_matches('/');
    if name.is_empty() {
        return Err(format!("'{raw}' has an empty name"));
    }
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("'{url}' must start with http://"))?;
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(format!("'{url}' must be http://host:port, nothing more"));
    }
    Ok(Peer {
        name: name.to_owned(),
        url: url.to_owned(),
    })
}

impl ReplicationConfig {
    /// Whether replication is on.
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty()
    }

    /// Every member name, this server's included, sorted and unique.
    pub fn members(&self, me: &str) -> Vec<String> {
        let mut names: Vec<String> = self.peers.iter().map(|p| p.name.clone()).collect();
        names.push(me.to_owned());
        names.sort();
        names.dedup();
        names
    }

    /// The replication factor in force: the flag, or 3, never more than the members.
    pub fn factor(&self, me: &str) -> usize {
        if !self.enabled() {
            return 1;
        }
        let members = self.members(me).len();
        self.replication_factor
            .unwrap_or(DEFAULT_REPLICATION_FACTOR)
            .min(members)
    }

    /// The default write quorum: the flag, or a majority of the factor.
    pub fn quorum(&self, me: &str) -> usize {
        let factor = self.factor(me);
        self.write_quorum.unwrap_or(factor / 2 + 1).clamp(1, factor)
    }

    /// `--peers` naming only this server is allowed: a one-member replicated ring, which can
    /// grow by rebalancing later. Not naming it at all makes it a joiner.
    fn validate(&self) -> Result<(), String> {
        if self.replication_factor == Some(0) {
            return Err("--replication-factor must be at least 1".into());
        }
        if let Some(w) = self.write_quorum {
            let r = self
                .replication_factor
                .unwrap_or(DEFAULT_REPLICATION_FACTOR);
            if w == 0 || w > r {
                return Err(format!(
                    "--write-quorum must be from 1 to the replication factor ({r}), got {w}"
                ));
            }
        }
        if self.vnodes == 0 {
            return Err("--vnodes must be at least 1".into());
        }
        if self.replication_timeout_ms == 0 {
            return Err("--replication-timeout-ms must be at least 1".into());
        }
        let mut names: Vec<&str> = self.peers.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("--peers names '{}' twice", pair[0]));
        }
        Ok(())
    }
}

impl ServerConfig {
    /// The defaults, with the given data directory: for tests and for the all-in-one CLI.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            metrics_listen: None,
            data_dir: data_dir.into(),
            node_name: "kv-server".into(),
            cache_size: 100,
            cache_max_bytes: default_cache_max_bytes(),
            cache_ttl_minutes: 30.0,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_inflight_body_bytes: 256 << 20,
            sync: SyncMode::Full,
            readers: 8,
            write_queue: 4096,
            client_timeout_secs: kv_common::serve::DEFAULT_CLIENT_TIMEOUT_SECS,
            replication: ReplicationConfig::default(),
        }
    }

    pub fn client_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.client_timeout_secs)
    }

    /// Checks what clap's types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.cache_ttl_minutes.is_finite() && self.cache_ttl_minutes > 0.0) {
            return Err(format!(
                "--cache-ttl-minutes must be a positive number, got {}",
                self.cache_ttl_minutes
            ));
        }
        check_max_value_bytes(self.max_value_bytes)?;
        if self.node_name.trim().is_empty() {
            return Err("--node-name must not be empty".into());
        }
        if self.client_timeout_secs == 0 {
            return Err("--client-timeout-secs must be at least 1".into());
        }
        self.replication.validate()
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            data_dir: self.data_dir.clone(),
            cache_size: self.cache_size,
            // A budget beyond the address space is no budget: saturate on 32-bit targets.
            cache_max_bytes: usize::try_from(self.cache_max_bytes).unwrap_or(usize::MAX),
            cache_ttl: Duration::from_secs_f64(self.cache_ttl_minutes * 60.0),
            sync: self.sync,
            readers: self.readers,
            queue_depth: self.write_queue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_explained() {
        let mut c = ServerConfig::new("/tmp/x");
        assert_eq!(c.validate(), Ok(()));
        c.cache_ttl_minutes = 0.0;
        assert!(c.validate().unwrap_err().contains("--cache-ttl-minutes"));
        c.cache_ttl_minutes = 1.0;
        c.max_value_bytes = 0;
        assert!(c.validate().unwrap_err().contains("--max-value-bytes"));
        c.max_value_bytes = DEFAULT_MAX_VALUE_BYTES;
        c.replication.replication_timeout_ms = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .contains("--replication-timeout-ms")
        );
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        config: ServerConfig,
    }

    fn flags(args: &[&str]) -> Result<ServerConfig, String> {
        use clap::Parser;
        let argv = std::iter::once("kv-server").chain(args.iter().copied());
        Flags::try_parse_from(argv)
            .map(|f| f.config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_cache_byte_budget_takes_sizes_with_suffixes() {
        assert_eq!(
            flags(&[]).unwrap().cache_max_bytes,
            ServerConfig::new("/x").cache_max_bytes,
            "the flag's default and ServerConfig::new agree"
        );
        assert_eq!(flags(&[]).unwrap().cache_max_bytes, 64 << 20);
        let c = flags(&["--cache-max-bytes", "1Gi"]).unwrap();
        assert_eq!(c.store_config().cache_max_bytes, 1 << 30);
        assert_eq!(
            flags(&["--cache-max-bytes", "0"]).unwrap().cache_max_bytes,
            0
        );
        let err = flags(&["--cache-max-bytes", "1.5GB"]).unwrap_err();
        assert!(
            err.contains("--cache-max-bytes") && err.contains("64Mi"),
            "{err}"
        );
    }

    #[test]
    fn the_value_limit_takes_sizes_with_suffixes() {
        assert_eq!(flags(&[]).unwrap().max_value_bytes, 1 << 20);
        let c = flags(&["--max-value-bytes", "64Mi"]).unwrap();
        assert_eq!(c.max_value_bytes, 64 << 20);
        c.validate().unwrap();
        let err = flags(&["--max-value-bytes", "2MB"]).unwrap_err();
        assert!(err.contains("--max-value-bytes"), "{err}");
    }

    #[test]
    fn peers_parse_and_replication_defaults_follow_the_member_count() {
        assert_eq!(
            parse_peer("kv-1=http://10.0.0.1:8080/").unwrap(),
            Peer {
                name: "kv-1".into(),
                url: "http://10.0.0.1:8080".into()
            }
        );
        for bad in [
            "kv-1",
            "=http://a:1",
            "kv-1=https://a:1",
            "kv-1=http://a:1/x",
            "k=http://",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
        let mut c = ServerConfig::new("/tmp/x");
        c.node_name = "a".into();
        assert_eq!(
            (c.replication.factor("a"), c.replication.quorum("a")),
            (1, 1)
        );
        c.replication.peers = vec![parse_peer("b=http://b:1").unwrap()];
        assert_eq!(
            (c.replication.factor("a"), c.replication.quorum("a")),
            (2, 2)
        );
        c.replication
            .peers
            .push(parse_peer("a=http://a:1").unwrap());
        c.replication
            .peers
            .push(parse_peer("c=http://c:1").unwrap());
        c.replication
            .peers
            .push(parse_peer("d=http://d:1").unwrap());
        assert_eq!(c.replication.members("a"), ["a", "b", "c", "d"]);
        assert_eq!(
            (c.replication.factor("a"), c.replication.quorum("a")),
            (3, 2)
        );
        assert_eq!(c.validate(), Ok(()));
        c.replication.write_quorum = Some(4);
        assert!(c.validate().unwrap_err().contains("--write-quorum"));
        c.replication.write_quorum = None;
        c.replication
            .peers
            .push(parse_peer("b=http://b:2").unwrap());
        assert!(c.validate().unwrap_err().contains("twice"));
        // Only itself: a one-member replicated ring (it can grow by rebalancing).
        c.replication.peers = vec![parse_peer("a=http://a:1").unwrap()];
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.replication.factor("a"), 1);
    }
}
