//! One reconcile pass over a KvCluster, and what happens when it fails.
//!
//! A pass: read the servers' StatefulSet -> plan (what to keep, what to refuse) -> grow claims
//! if asked -> render and apply every child -> publish an Event for each new refusal -> one
//! round of moving keys if the ring is not the one the spec asks for (`ring`) -> write the
//! status. Everything is idempotent, so a failed pass is simply retried; while keys move the
//! next pass comes after `Rebalancing::poll`.

mod apply;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use kv_crds::{KvCluster, condition_types};
use tracing::{info, instrument, warn};

use crate::config::RenderConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::names::{FIELD_MANAGER, Names};
use crate::plan::Plan;
use crate::render::render;
use crate::ring::{self, Rebalancing};

/// Steady-state resync: children changes trigger a pass anyway (`owns`), this only bounds
/// how long a missed watch event could go unnoticed.
pub const RESYNC: Duration = Duration::from_secs(300);
/// First retry after a failure; doubled per consecutive failure up to `BACKOFF_MAX`.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What every reconcile pass shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub render: RenderConfig,
    pub rebalancing: Rebalancing,
    /// Consecutive failures per cluster, for the backoff. A std Mutex: held for a map lookup,
    /// never across an await.
    failures: Mutex<HashMap<ObjectRef<KvCluster>, u32>>,
}

impl Context {
    /// A context that moves keys with the coordinator over HTTP, by pod DNS names.
    pub fn new(
        client: Client,
        metrics: Metrics,
        render: RenderConfig,
        instance: Option<String>,
    ) -> Arc<Self> {
        Context::with_rebalancing(client, metrics, render, instance, Rebalancing::default())
    }

    pub fn with_rebalancing(
        client: Client,
        metrics: Metrics,
        render: RenderConfig,
        instance: Option<String>,
        rebalancing: Rebalancing,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            render,
            rebalancing,
            failures: Mutex::default(),
        })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<KvCluster>, u32>> {
        // A panic elsewhere cannot leave the counters inconsistent: keep using them.
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The reconciler handed to `Controller::run`.
#[instrument(skip_all, fields(cluster = %cluster.name_any(), namespace = cluster.namespace().unwrap_or_default()))]
pub async fn reconcile(cluster: Arc<KvCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = cluster
        .namespace()
        .ok_or(Error::InvalidObject("namespace"))?;
    let names = Names::new(&cluster.name_any());

    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = sts_api
        .get_opt(&names.server())
        .await
        .map_err(Error::Kube)?;
    let mut plan = Plan::new(&cluster, existing.as_ref());
    if let Some(size) = plan.expand_to.clone() {
        let outcome =
            apply::expand_claims(&ctx.client, &namespace, &names, plan.replicas, &size).await?;
        if let Err(detail) = outcome {
            plan.expansion_failed(&detail);
        }
    }

    let children = render(&cluster, &plan, &ctx.render)?;
    let applied = apply::apply_all(&ctx.client, &namespace, &children).await?;
    report_refusals(&cluster, &plan, &ctx).await?;
    let ring = ring::drive(&ctx.rebalancing, &cluster, &plan, &applied.stateful_set).await;

    let status = status::build(
        &cluster,
        &plan,
        &applied.stateful_set,
        &applied.deployment,
        &ring,
        k8s_openapi::jiff::Timestamp::now(),
    );
    info!(phase = ?status.phase, ready = status.ready_replicas, "reconciled");
    status::patch(&ctx.client, &cluster, status).await?;

    ctx.failures().remove(&ObjectRef::from(cluster.as_ref()));
    // A move goes on at the next round; one that just finished lets the next pass shrink the
    // StatefulSet (or record the ring) without waiting for the resync.
    let finished_move = !ring.moving() && plan.ring.moving;
    Ok(if ring.moving() || finished_move || ring.pin_pending {
        Action::requeue(ctx.rebalancing.poll)
    } else {
        Action::requeue(RESYNC)
    })
}

/// One Warning Event per refusal, unless the last status already reported the same thing
/// (so a refused spec does not produce an Event every pass).
async fn report_refusals(cluster: &KvCluster, plan: &Plan, ctx: &Context) -> Result<()> {
    let already = cluster
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == condition_types::DEGRADED)
        })
        .filter(|c| c.status == "True")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let reference = cluster.object_ref(&());
    for refusal in &plan.refusals {
        if already.contains(&refusal.message) {
            continue;
        }
        warn!(reason = refusal.reason, "{}", refusal.message);
        let event = Event {
            type_: EventType::Warning,
            reason: refusal.reason.into(),
            note: Some(refusal.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        ctx.recorder
            .publish(&event, &reference)
            .await
            .map_err(Error::Kube)?;
    }
    Ok(())
}

/// Counts the failure by reason and retries with exponential backoff per cluster.
pub fn error_policy(cluster: Arc<KvCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.metric_label());
    let consecutive = {
        let mut failures = ctx.failures();
        let n = failures
            .entry(ObjectRef::from(cluster.as_ref()))
            .or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(consecutive);
    warn!(cluster = %cluster.name_any(), %error, consecutive, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// `BACKOFF_BASE * 2^(n-1)`, capped at `BACKOFF_MAX`.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let exponent = consecutive_failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX)
}
