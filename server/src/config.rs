//! Server configuration: every flag is also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::{StoreConfig, SyncMode};

/// Default `--max-value-bytes`: 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(long, env = "KV_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Directory holding `kv_store.db` (created if missing).
    #[arg(long, env = "KV_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Name shown in stats and logs (in Kubernetes, the pod name).
    #[arg(long, env = "KV_NODE_NAME", default_value = "kv-server")]
    pub node_name: String,
    /// Keys kept in the LRU cache (0 disables it).
    #[arg(long, env = "KV_CACHE_SIZE", default_value_t = 100)]
    pub cache_size: usize,
    /// Minutes after which a cached key is dropped (the seed's expiry).
    #[arg(long, env = "KV_CACHE_TTL_MINUTES", default_value_t = 30.0)]
    pub cache_ttl_minutes: f64,
    /// Largest value accepted, in bytes of JSON text; larger puts get 413.
    #[arg(long, env = "KV_MAX_VALUE_BYTES", default_value_t = DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,
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
}

impl ServerConfig {
    /// The defaults, with the given data directory: for tests and for the all-in-one CLI.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            data_dir: data_dir.into(),
            node_name: "kv-server".into(),
            cache_size: 100,
            cache_ttl_minutes: 30.0,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            sync: SyncMode::Full,
            readers: 8,
            write_queue: 4096,
        }
    }

    /// Checks what clap's types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.cache_ttl_minutes.is_finite() && self.cache_ttl_minutes > 0.0) {
            return Err(format!(
                "--cache-ttl-minutes must be a positive number, got {}",
                self.cache_ttl_minutes
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 64 << 20 {
            return Err(format!(
                "--max-value-bytes must be from 1 to {} (64 MiB), got {}",
                64 << 20,
                self.max_value_bytes
            ));
        }
        if self.node_name.trim().is_empty() {
            return Err("--node-name must not be empty".into());
        }
        Ok(())
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            data_dir: self.data_dir.clone(),
            cache_size: self.cache_size,
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
    }
}
