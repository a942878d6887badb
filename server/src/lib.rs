//! kvstore storage server: versioned keys over SQLite with a write-through LRU cache.
//!
//! - `store/`: the domain (cache, SQLite schema and reads, the group-commit writer); no HTTP.
//! - `http/`: the axum router over a [`store::Store`] (`/internal/*` for peers).
//! - `replication/`: pushing versions to replicas, write quorums, catch-up from peers.
//! - `clean`: the database clean-up command.
//!
//! [`run`] serves on a listener until `shutdown` resolves, then lets queued writes finish.

pub mod clean;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod replication;
pub mod store;

use std::future::Future;

pub use config::ServerConfig;
pub use error::{Error, Result};

/// Serves the storage API on `listener` until `shutdown` resolves; in-flight requests and
/// queued writes complete before it returns.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = http::AppState::start(config).await?;
    let addr = listener.local_addr().map_err(|source| Error::Io {
        context: "read listener address".into(),
        source,
    })?;
    let config = &state.config;
    tracing::info!(%addr, node = %config.node_name, data_dir = %config.data_dir.display(),
        cache_size = config.cache_size, "kv-server listening");
    let store = state.store.clone();
    let replication = state.replication.clone();
    let served = axum::serve(listener, http::app(state))
        .with_graceful_shutdown(shutdown)
        .await;
    if let Some(replication) = replication {
        replication.stop();
    }
    store.close().await;
    tracing::info!(%addr, "kv-server stopped");
    served.map_err(|source| Error::Io {
        context: "serve HTTP".into(),
        source,
    })
}
