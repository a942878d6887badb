//! kvstore storage server: versioned keys over SQLite with a write-through LRU cache.
//!
//! - `store/`: the domain (cache, SQLite schema and reads, the group-commit writer); no HTTP.
//! - `http/`: the axum router over a [`store::Store`] (`/internal/*` for peers).
//! - `replication/`: pushing versions to replicas, write quorums, catch-up from peers.
//! - `clean`: the database clean-up command.
//!
//! [`run`] serves on a listener until `shutdown` resolves, then lets queued writes finish.

pub mod check;
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
/// queued writes complete before it returns. With `--metrics-listen`, `/metrics` is also
/// served on that address (see [`serve`]).
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Io {
                    context: format!("bind the metrics listener {addr}"),
                    source,
                })?,
        ),
        None => None,
    };
    serve(listener, metrics, config, shutdown).await
}

/// [`run`] on listeners the caller bound: the storage API on `listener` and, when given, only
/// `/metrics` and `/health` on `metrics`. A separate metrics port is what lets a NetworkPolicy
/// admit Prometheus without admitting it to the data.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
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
        cache_size = config.cache_size, cache_max_bytes = config.cache_max_bytes,
        "kv-server listening");
    let store = state.store.clone();
    let replication = state.replication.clone();
    // One shutdown signal for both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let links_stop = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let metrics_task = match metrics {
        Some(metrics) => {
            let metrics_addr = metrics.local_addr().ok();
            tracing::info!(addr = ?metrics_addr, "kv-server metrics listening");
            let app = http::metrics_app(state.clone());
            // Open to every scraper: bounded as the main port is (no body to bound there).
            let limits = kv_common::serve::Limits::new(state.config.client_timeout());
            let stop = stopped();
            Some(tokio::spawn(kv_common::serve::serve(
                metrics,
                app,
                limits,
                kv_common::serve::ConnectionMetrics::default(),
                stop,
            )))
        }
        None => None,
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // HTTP and the gateway's pipelined links share the port (`http::mux`).
    let app = http::app(state.clone());
    let client_timeout = state.config.client_timeout();
    let connections = state.metrics.connections.clone();
    let (listener, links) =
        http::mux::split(listener, app.clone(), state, links_stop, client_timeout).map_err(
            |source| Error::Io {
                context: "read listener address".into(),
                source,
            },
        )?;
    let limits = kv_common::serve::Limits {
        body_timeout: Some(client_timeout),
        ..kv_common::serve::Limits::new(client_timeout)
    };
    kv_common::serve::serve(listener, app, limits, connections, stopped()).await;
    // In-flight requests of the links finish before the store closes, as HTTP's do.
    links.closed().await;
    if let Some(task) = metrics_task {
        match task.await {
            Ok(()) => {}
            Err(err) if err.is_cancelled() => {}
            Err(err) => tracing::warn!(%err, "the metrics listener task failed"),
        }
    }
    if let Some(replication) = replication {
        replication.stop();
    }
    store.close().await;
    tracing::info!(%addr, "kv-server stopped");
    Ok(())
}
