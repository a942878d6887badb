//! Leader election on a `coordination.k8s.io` Lease (kube-runtime 5 has none; the
//! `kube-lease-manager` crate does it with server-side apply on the Lease). Only the holder
//! reconciles; a replica that loses the Lease stops, and its restart makes it a candidate again.

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::LeaderConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// A held (or awaited) Lease. Dropping it releases the Lease.
pub struct Leadership {
    state: watch::Receiver<bool>,
    _task: JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl Leadership {
    /// Starts competing for the Lease; does not wait to win it.
    pub async fn start(client: Client, config: &LeaderConfig) -> Result<Leadership> {
        let seconds = config.lease_seconds.max(3);
        let mut builder = LeaseManagerBuilder::new(client, &config.lease_name)
            .with_namespace(&config.lease_namespace)
            .with_duration(seconds)
            // Renew a third of the duration before expiry.
            .with_grace((seconds / 3).max(1));
        if let Some(identity) = &config.identity {
            builder = builder.with_identity(identity);
        }
        let manager = builder.build().await.map_err(Error::Lease)?;
        let (state, task) = manager.watch().await;
        Ok(Leadership { state, _task: task })
    }

    /// Resolves once this replica holds the Lease.
    pub async fn acquired(&mut self, metrics: &Metrics) -> Result<()> {
        self.state
            .wait_for(|leading| *leading)
            .await
            .map_err(|_| Error::LostLeadership)?;
        metrics.set_leader(true);
        info!("acquired the leader Lease");
        Ok(())
    }

    /// Resolves when the Lease is lost (or the election task ended).
    pub async fn lost(&mut self, metrics: &Metrics) {
        let _ = self.state.wait_for(|leading| !*leading).await;
        metrics.set_leader(false);
    }
}
