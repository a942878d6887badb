//! The simulator: what the StatefulSet controller, the kubelet and the EndpointSlice
//! controller would do for the StatefulSets stored in a [`FakeApiServer`].
//!
//! Every 100 ms, and at once after any change in the store, for every StatefulSet:
//! - pods `<name>-0 .. <name>-(replicas-1)` run as in-process `kv-server`s (all at once, like
//!   `podManagementPolicy: Parallel`); the data directory of pod `i` is
//!   `<root>/<namespace>/<claim>-<name>-<i>` and survives restarts and scale-downs, like a
//!   retained PVC; a pod above `replicas` is stopped;
//! - a template change restarts pods one at a time, each only when all are ready (a
//!   `RollingUpdate` with `maxUnavailable: 1`);
//! - readiness is a `GET /ready` on the server; a server that exits on its own is restarted
//!   (the kubelet's restart policy), unless the test killed it with [`Simulator::kill_pod`];
//! - published: a Pod object per pod (owned by the StatefulSet), a PVC per pod, one
//!   EndpointSlice per pod for the Service named by `spec.serviceName`, labelled
//!   `kubernetes.io/service-name` with `hostname` = pod name (not-ready pods stay listed only
//!   if the Service sets `publishNotReadyAddresses`), and the StatefulSet's status
//!   (`replicas`, `readyReplicas`, revisions, `observedGeneration`).
//!
//! Deployments are not run: a test runs their pods itself (the gateway, in-process) and
//! attaches them with [`Simulator::attach_deployment`]; the simulator then keeps that
//! Deployment's status in step with their `/ready`.
//!
//! Server settings: the template's `KV_CACHE_SIZE`, `KV_VNODES`, `KV_REPLICATION_FACTOR`,
//! `KV_WRITE_QUORUM` and `KV_PEERS` are honoured; a peer named by a pod's DNS name
//! (`<pod>.<service>.<namespace>.svc`) is reached through a stable `127.0.0.1` address per
//! pod that forwards to the pod's server of the moment, as DNS follows a pod to its new IP.
//! Clients outside the pods (the operator) resolve such URLs with [`Simulator::url_resolver`].
//!
//! Not simulated: scheduling, images (the template's image is ignored: the server is this
//! crate's `kv-server`), probes other than readiness, resource limits, network policies
//! (every pod reaches every port), disruption budgets, and the server's other flags.

mod objects;
mod pod;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;

use crate::path::ResourceType;
use crate::query::Params;
use crate::server::FakeApiServer;
use crate::store::Store;
use pod::PodRun;

pub use pod::probe_ready;

type Key = (String, String);

#[derive(Default)]
struct State {
    /// (namespace, pod name) -> the pod.
    pods: BTreeMap<Key, PodRun>,
    /// (namespace, deployment) -> base URLs of the pods the test runs for it.
    deployments: BTreeMap<Key, Vec<String>>,
}

struct Shared {
    store: Arc<Store>,
    root: PathBuf,
    state: Mutex<State>,
    /// The pods' DNS addresses as of the last pass, for [`Simulator::url_resolver`] (a std
    /// Mutex: held for a copy or a lookup, never across an await).
    dns: Arc<std::sync::Mutex<pod::Resolver>>,
}

/// Runs StatefulSets' servers for a [`FakeApiServer`]. Dropping it stops its loop; call
/// [`Simulator::shutdown`] to stop the servers and wait for them.
pub struct Simulator {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Starts simulating the StatefulSets of `api`, with pod data under `root`.
    pub fn start(api: &FakeApiServer, root: impl Into<PathBuf>) -> Simulator {
        let shared = Arc::new(Shared {
            store: api.store(),
            root: root.into(),
            state: Mutex::default(),
            dns: Arc::default(),
        });
        let looping = shared.clone();
        let task = tokio::spawn(async move {
            let mut revisions = looping.store.revisions();
            loop {
                step(&looping, &mut *looping.state.lock().await).await;
                tokio::select! {
                    _ = revisions.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        Simulator { shared, task }
    }

    /// Kills a server pod: stops its server gracefully, marks it not ready (EndpointSlice,
    /// Pod, StatefulSet status) and keeps it down until [`Simulator::restart_pod`].
    pub async fn kill_pod(&self, namespace: &str, pod: &str) {
        let mut state = self.shared.state.lock().await;
        let run = state
            .pods
            .get_mut(&(namespace.to_owned(), pod.to_owned()))
            .unwrap_or_else(|| panic!("no simulated pod {namespace}/{pod}"));
        run.held_down = true;
        run.stop().await;
        step(&self.shared, &mut state).await;
    }

    /// Starts a killed pod again, on its data directory (and a new port).
    pub async fn restart_pod(&self, namespace: &str, pod: &str) {
        let mut state = self.shared.state.lock().await;
        let run = state
            .pods
            .get_mut(&(namespace.to_owned(), pod.to_owned()))
            .unwrap_or_else(|| panic!("no simulated pod {namespace}/{pod}"));
        run.held_down = false;
        step(&self.shared, &mut state).await;
    }

    /// Where a pod's server listens now (or listened last).
    pub async fn pod_address(&self, namespace: &str, pod: &str) -> Option<SocketAddr> {
        let state = self.shared.state.lock().await;
        state
            .pods
            .get(&(namespace.to_owned(), pod.to_owned()))
            .and_then(|p| p.addr)
    }

    /// Maps a URL naming a simulated pod by its DNS name
    /// (`http://<pod>.<service>.<namespace>.svc:<port>`) to the stable local address that
    /// forwards to the pod's server, as the servers' own peer URLs are; any other URL is
    /// returned unchanged. For a client that reaches servers as pods do (the operator).
    pub fn url_resolver(&self) -> impl Fn(&str) -> String + Send + Sync + 'static {
        let dns = self.shared.dns.clone();
        move |url: &str| {
            let dns = dns.lock().unwrap_or_else(|p| p.into_inner());
            pod::resolve_url(url, None, &dns).unwrap_or_else(|| url.to_owned())
        }
    }

    /// Names of the simulated pods of `namespace` whose server is running.
    pub async fn running_pods(&self, namespace: &str) -> Vec<String> {
        let state = self.shared.state.lock().await;
        state
            .pods
            .values()
            .filter(|p| p.namespace == namespace && p.is_running())
            .map(|p| p.name.clone())
            .collect()
    }

    /// Declares a pod of Deployment `namespace/name` that the test runs itself at `base_url`:
    /// the Deployment's status follows its `GET /ready`.
    pub async fn attach_deployment(&self, namespace: &str, name: &str, base_url: &str) {
        let mut state = self.shared.state.lock().await;
        state
            .deployments
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default()
            .push(base_url.trim_end_matches('/').to_owned());
    }

    /// Stops the loop and every server, waiting until they released their databases.
    pub async fn shutdown(self) {
        self.task.abort();
        // If the loop was in a pass, the lock is free once the aborted task is dropped.
        let mut state = self.shared.state.lock().await;
        for run in state.pods.values_mut() {
            run.stop().await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn stateful_sets() -> ResourceType {
    ResourceType::new("/apis/apps/v1", "statefulsets")
}

/// One pass: run what should run, then publish what runs.
async fn step(shared: &Shared, state: &mut State) {
    let store = &shared.store;
    let all = Params::default();
    let (sets, _) = store.list(&stateful_sets(), None, &all);
    let mut wanted: BTreeSet<Key> = BTreeSet::new();
    for sts in &sets {
        let ns = sts["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = sts["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
        let claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
            .as_str()
            .unwrap_or("data");
        for ordinal in 0..replicas {
            let run = state
                .pods
                .entry((ns.clone(), format!("{name}-{ordinal}")))
                .or_insert_with(|| {
                    let dir = shared
                        .root
                        .join(&ns)
                        .join(format!("{claim}-{name}-{ordinal}"));
                    PodRun::new(&ns, &name, ordinal, dir)
                });
            wanted.insert((run.namespace.clone(), run.name.clone()));
        }
    }

    // Pods nobody wants any more: stop them and take them out of the API.
    let gone: Vec<Key> = state
        .pods
        .keys()
        .filter(|k| !wanted.contains(*k))
        .cloned()
        .collect();
    for key in gone {
        let mut run = state.pods.remove(&key).expect("listed");
        run.stop().await;
        remove_published(store, &run);
    }

    // Where every pod's DNS name points, for the servers' peer lists.
    let dns: pod::Resolver = state
        .pods
        .iter()
        .map(|(key, run)| (key.clone(), run.dns_addr()))
        .collect();
    *shared.dns.lock().unwrap_or_else(|p| p.into_inner()) = dns.clone();
    for sts in &sets {
        let revision = objects::revision(sts);
        let settings = objects::settings(sts);
        let name = sts["metadata"]["name"].as_str().unwrap_or("");
        let ns = sts["metadata"]["namespace"].as_str().unwrap_or("");
        let mine = |p: &PodRun| p.namespace == ns && p.stateful_set == name;
        // A rolling update moves at most one pod per pass, and only when all are ready.
        let all_ready = state.pods.values().filter(|p| mine(p)).all(|p| p.ready);
        let mut rolled = false;
        for run in state.pods.values_mut().filter(|p| mine(p)) {
            run.reap();
            let outdated = run.is_running() && run.revision != revision;
            if outdated && all_ready && !rolled {
                run.stop().await;
                rolled = true;
            }
            if !run.is_running()
                && !run.held_down
                && let Err(error) = run.start(&revision, &settings, &dns).await
            {
                tracing::warn!(pod = %run.name, %error, "cannot start simulated server");
            }
            run.probe().await;
        }
        publish(
            store,
            sts,
            state.pods.values().filter(|p| mine(p)).collect(),
            &revision,
        );
    }

    update_deployments(store, &state.deployments).await;
}

/// Pods, claims, slices and the StatefulSet status for one StatefulSet.
fn publish(store: &Store, sts: &Value, pods: Vec<&PodRun>, revision: &str) {
    let ns = sts["metadata"]["namespace"].as_str().unwrap_or("");
    let namespace = Some(ns);
    let service_name = sts["spec"]["serviceName"].as_str().unwrap_or("");
    let service = store
        .get(
            &ResourceType::new("/api/v1", "services"),
            &(ns.to_owned(), service_name.to_owned()),
        )
        .ok();
    let claims = ResourceType::new("/api/v1", "persistentvolumeclaims");
    for run in &pods {
        let result = store
            .upsert(
                &ResourceType::new("/api/v1", "pods"),
                namespace,
                objects::pod(sts, run),
            )
            .map(drop);
        if let Err(error) = result {
            tracing::warn!(pod = %run.name, %error, "cannot publish the pod");
        }
        if let Some(claim) = objects::claim(sts, run) {
            // Created once; after that the claim is the operator's to expand.
            let _ = store.create(&claims, namespace, claim);
        }
        if let Some(slice) = service
            .as_ref()
            .and_then(|s| objects::endpoint_slice(s, run))
        {
            let _ = store.upsert(&slices(), namespace, slice);
        }
    }
    let name = sts["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let mut next = sts.clone();
    next["status"] = objects::stateful_set_status(sts, &pods, revision);
    let mut inner = store.lock();
    let key = (ns.to_owned(), name);
    if let Err(error) = store.update(&mut inner, &stateful_sets(), &key, next, true) {
        tracing::debug!(%error, "StatefulSet status not written");
    }
}

fn slices() -> ResourceType {
    ResourceType::new("/apis/discovery.k8s.io/v1", "endpointslices")
}

/// Takes a stopped pod's Pod object and slices out of the API (the owner cascade may have
/// done it already).
fn remove_published(store: &Store, run: &PodRun) {
    let pods = ResourceType::new("/api/v1", "pods");
    let key = (run.namespace.clone(), run.name.clone());
    let _ = crate::gc::delete(store, &pods, &key, false);
    let (own, _) = store.list(&slices(), Some(&run.namespace), &Params::default());
    for slice in own {
        let listed = slice["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["hostname"] == run.name.as_str()));
        let mine = slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
            == objects::MANAGED_BY;
        let ours_by_name = slice["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with(&format!("-{}", run.name)));
        if mine && (listed || ours_by_name) {
            let name = slice["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let _ = crate::gc::delete(store, &slices(), &(run.namespace.clone(), name), false);
        }
    }
}

async fn update_deployments(store: &Store, attached: &BTreeMap<Key, Vec<String>>) {
    let deployments = ResourceType::new("/apis/apps/v1", "deployments");
    for ((ns, name), urls) in attached {
        let key = (ns.clone(), name.clone());
        let Ok(deployment) = store.get(&deployments, &key) else {
            continue;
        };
        let mut ready = 0;
        for url in urls {
            if probe_ready(url).await {
                ready += 1;
            }
        }
        let mut next = deployment.clone();
        next["status"] = objects::deployment_status(&deployment, urls.len(), ready);
        let mut inner = store.lock();
        if let Err(error) = store.update(&mut inner, &deployments, &key, next, true) {
            tracing::debug!(%error, "Deployment status not written");
        }
    }
}
