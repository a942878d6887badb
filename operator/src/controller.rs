//! Start-up and wiring: the CRD check, leader election, the `/health` + `/metrics` server,
//! and the kube-runtime `Controller` over KvClusters and the children it owns.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use kv_crds::KvCluster;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::OperatorConfig;
use crate::error::{Error, Result};
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::reconcile::{Context, error_policy, reconcile};
use crate::ring::Rebalancing;

/// Fails with a message saying how to install the CRD when the API server does not serve it.
/// Lists in the watched namespace only (when there is one), so a namespaced install needs no
/// cluster-wide permission for the check.
pub async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<()> {
    let api: Api<KvCluster> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Err(Error::CrdMissing(format!(
            "the API server answered 404 ({})",
            status.message
        ))),
        Err(err) => Err(Error::Kube(err)),
    }
}

/// Runs the operator until `shutdown` resolves (Ok) or leadership is lost (Err).
pub async fn run(
    listener: TcpListener,
    config: OperatorConfig,
    client: Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    run_with(listener, config, client, Rebalancing::default(), shutdown).await
}

/// [`run`], moving keys with `rebalancing` (tests reach servers through their own URLs).
pub async fn run_with(
    listener: TcpListener,
    config: OperatorConfig,
    client: Client,
    rebalancing: Rebalancing,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let app = crate::http::app(Arc::new(registry));
    info!(addr = %listener.local_addr().map_err(Error::Io)?, "serving /health and /metrics");
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped())
            .into_future(),
    );

    check_crd(&client, config.watch_namespace.as_deref()).await?;

    let mut leadership = None;
    if config.leader.no_leader_election {
        metrics.set_leader(true);
    } else {
        let mut lease = Leadership::start(client.clone(), &config.leader).await?;
        info!(lease = %config.leader.lease_name, "waiting for the leader Lease");
        tokio::select! {
            acquired = lease.acquired(&metrics) => acquired?,
            () = stopped() => return Ok(()),
        }
        leadership = Some(lease);
    }

    let clusters: Api<KvCluster> = match &config.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let owned = |client: &Client| -> (Api<StatefulSet>, Api<Deployment>, Api<Service>) {
        match &config.watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        }
    };
    let (sts, deployments, services) = owned(&client);
    // Only our children matter: watch objects carrying our managed-by label.
    let children = watcher::Config::default().labels("app.kubernetes.io/managed-by=kv-operator");
    let ctx = Context::with_rebalancing(
        client,
        metrics.clone(),
        config.render.clone(),
        config.leader.identity.clone(),
        rebalancing,
    );
    let controller = Controller::new(clusters, watcher::Config::default().any_semantic())
        .owns(sts, children.clone())
        .owns(deployments, children.clone())
        .owns(services, children)
        .graceful_shutdown_on(stopped())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                warn!(error = %err, "controller event");
            }
        });

    let outcome = match leadership.as_mut() {
        Some(lease) => tokio::select! {
            () = controller => Ok(()),
            () = lease.lost(&metrics) => Err(Error::LostLeadership),
        },
        None => {
            controller.await;
            Ok(())
        }
    };
    drop(leadership);
    let _ = server.await;
    outcome
}
