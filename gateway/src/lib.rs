//! kvstore gateway: the single entry point, routing every key to its owner on a SHA-256
//! consistent-hash ring of storage servers.
//!
//! Codemap: `ring` (re-exported from kv-common: placement and preference lists),
//! `membership` (static list or Kubernetes EndpointSlices -> the atomically swapped
//! `Topology`, from the member list and, once learned, the servers' ring configuration),
//! `ring_sync` (learning ring configurations from the servers; the epoch key requests
//! carry), `health` (active checks + passive marking, members' replication lag),
//! `client` (pooled HTTP to members), `proxy` (key routes; writes go to the key's primary
//! only), `replicas` (reads from the rest of a key's preference list when its primary cannot
//! answer), `stats` (`/servers`, per-member stats), `admin` (member snapshots, streamed),
//! `auth`, `openapi`, `routes` (the router), `config`, `error`, `metrics`. Clients are
//! served by `kv_common::serve`, which bounds idle and stalled ones.
//!
//! Architecture Invariant: the gateway holds no durable state, and a key is only ever sent to
//! its owner on the current ring, or for a read its primary cannot answer, to the other
//! members of its preference list.

pub mod admin;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod health;
pub mod large_answers;
pub mod membership;
pub mod metrics;
pub mod mux;
pub mod openapi;
pub mod proxy;
pub mod replicas;
pub mod ring_sync;
pub mod routes;
pub mod state;
pub mod stats;

/// The ring lives in `kv-common` because the servers compute the same preference lists.
pub use kv_common::ring;

use std::future::Future;

use axum::serve::ListenerExt;

pub use config::GatewayConfig;
pub use error::{Error, Result};
pub use routes::app;
pub use state::AppState;

use membership::kubernetes::{self, Discovery};

/// Serves the gateway on `listener` until `shutdown` resolves, then drains in-flight requests.
///
/// Starts the configured membership source (a static list, or the EndpointSlice watcher with
/// the in-cluster / kubeconfig credentials) and the health checks; stops them on return.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.validate()?;
    let client = match &config.kubernetes.service {
        Some(_) => Some(
            kube::Client::try_default()
                .await
                .map_err(|e| Error::Kube(Box::new(e)))?,
        ),
        None => None,
    };
    serve(listener, config, client, shutdown).await
}

/// [`run`] with a given Kubernetes client (used only with `--k8s-service`), e.g. one talking
/// to a test's fake API server.
pub async fn run_with_client(
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    client: kube::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.validate()?;
    serve(listener, config, Some(client), shutdown).await
}

async fn serve(
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    client: Option<kube::Client>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = AppState::new(&config)?;
    let mut tasks = tokio::task::JoinSet::new();
    match (&config.kubernetes.service, client) {
        (Some(service), Some(client)) => {
            let discovery = Discovery {
                namespace: config
                    .kubernetes
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned()),
                service: service.clone(),
                port_name: config.kubernetes.port_name.clone(),
                removal_grace: std::time::Duration::from_secs(config.kubernetes.removal_grace_secs),
            };
            tracing::info!(?discovery, "discovering servers from EndpointSlices");
            tasks.spawn(kubernetes::watch(client, discovery, state.topology.clone()));
        }
        _ => {
            state.topology.update(config.backends.clone());
        }
    }
    tasks.spawn(health::run_checks(
        state.topology.clone(),
        state.client.clone(),
        config.health_interval(),
    ));
    let max_connections = config.connection_limit(kv_common::net::open_files_limit());
    state.client.metrics().connection_limit(max_connections);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, auth = state.token.is_some(), ?max_connections,
            "gateway listening");
    }
    // Answers are written whole, one per request: never hold one back for Nagle.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    // No body timeout here: `proxy::put` bounds put bodies itself, to answer `408`.
    let limits = kv_common::serve::Limits {
        max_connections,
        ..kv_common::serve::Limits::new(config.client_timeout())
    };
    let connections = state.client.metrics().client_connections.clone();
    kv_common::serve::serve(listener, app(state), limits, connections, shutdown).await;
    tasks.abort_all();
    Ok(())
}
