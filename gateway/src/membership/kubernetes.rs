//! Members from the EndpointSlices of the servers' headless Service.
//!
//! Members are named by pod hostname (the StatefulSet identity, `kv-server-0`), never by IP:
//! a pod that comes back with a new IP keeps its place on the ring, only its address changes.
//! Readiness is health, not membership: a not-ready endpoint stays a member (its keys answer
//! 503 until it is healthy). An endpoint that vanishes (a pod being replaced) keeps its place
//! for a grace period, so a restart never moves keys to another server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::time::Instant;

use super::{BackendUrl, Member, TopologyHandle};

/// What to watch.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub namespace: String,
    /// The headless Service; its slices carry the label `kubernetes.io/service-name`.
    pub service: String,
    /// The Service port to use; the first port when no port has this name.
    pub port_name: String,
    pub removal_grace: Duration,
}

/// Watches the slices and keeps `topology` in step. Runs until the task is aborted; watch
/// errors are logged and retried with kube-runtime's default backoff.
pub async fn watch(client: kube::Client, discovery: Discovery, topology: Arc<TopologyHandle>) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &discovery.namespace);
    let selector = format!("kubernetes.io/service-name={}", discovery.service);
    let mut events = watcher::watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut state = State::default();
    loop {
        let deadline = state.next_expiry(discovery.removal_grace);
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if !state.apply(event, &discovery.port_name) {
                        continue;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "EndpointSlice watch failed; retrying");
                    continue;
                }
                None => return,
            },
            () = sleep_until(deadline) => {}
        }
        let members = state.members(Instant::now(), discovery.removal_grace);
        topology.update(members);
        let current = topology.load();
        for name in state.absent.keys() {
            if let Some(backend) = current.backends.get(name) {
                backend.health.mark_down();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The slices seen so far and the members that vanished from them.
#[derive(Default)]
struct State {
    /// Slice name -> its members.
    slices: BTreeMap<String, Vec<Member>>,
    /// Slices of a re-list in progress, swapped in whole at `InitDone`.
    relist: Option<BTreeMap<String, Vec<Member>>>,
    /// Members last published.
    published: BTreeMap<String, Member>,
    /// Members no slice lists any more, with when they vanished.
    absent: HashMap<String, (Instant, Member)>,
}

impl State {
    /// Takes in one watch event; returns whether the member list may have changed.
    fn apply(&mut self, event: Event<EndpointSlice>, port_name: &str) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(slice) => {
                let name = slice.metadata.name.clone().unwrap_or_default();
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, slice_members(&slice, port_name));
                false
            }
            Event::InitDone => {
                self.slices = self.relist.take().unwrap_or_default();
                true
            }
            Event::Apply(slice) => {
                let name = slice.metadata.name.clone().unwrap_or_default();
                self.slices.insert(name, slice_members(&slice, port_name));
                true
            }
            Event::Delete(slice) => {
                let name = slice.metadata.name.clone().unwrap_or_default();
                self.slices.remove(&name).is_some()
            }
        }
    }

    /// The members to publish at `now`: every listed member, plus vanished ones still within
    /// their grace period.
    fn members(&mut self, now: Instant, grace: Duration) -> Vec<Member> {
        let mut listed: BTreeMap<String, Member> = BTreeMap::new();
        for member in self.slices.values().flatten() {
            // Dual-stack Services have one slice per address family: the first one wins,
            // in slice-name order, so every gateway replica picks the same address.
            listed
                .entry(member.name.clone())
                .or_insert_with(|| member.clone());
        }
        for (name, member) in &self.published {
            if !listed.contains_key(name) {
                self.absent
                    .entry(name.clone())
                    .or_insert_with(|| (now, member.clone()));
            }
        }
        self.absent.retain(|name, (since, _)| {
            !listed.contains_key(name) && now.saturating_duration_since(*since) < grace
        });
        for (name, (_, member)) in &self.absent {
            listed.insert(name.clone(), member.clone());
        }
        self.published = listed.clone();
        listed.into_values().collect()
    }

    /// When the earliest vanished member's grace ends.
    fn next_expiry(&self, grace: Duration) -> Option<Instant> {
        self.absent.values().map(|(since, _)| *since + grace).min()
    }
}

/// The members one slice lists: one per endpoint with a hostname (or pod name) and an address.
fn slice_members(slice: &EndpointSlice, port_name: &str) -> Vec<Member> {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Vec::new();
    }
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(port_name))
        .or_else(|| ports.first())
        .and_then(|p| p.port);
    let Some(port) = port else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .filter_map(|endpoint| {
            let name = endpoint
                .hostname
                .clone()
                .or_else(|| endpoint.target_ref.as_ref().and_then(|r| r.name.clone()))?;
            let address = endpoint.addresses.first()?;
            let url = if address.contains(':') {
                format!("http://[{address}]:{port}")
            } else {
                format!("http://{address}:{port}")
            };
            match BackendUrl::parse(&url) {
                Ok(url) => Some(Member { name, url }),
                Err(error) => {
                    tracing::warn!(%error, member = %name, "skipping endpoint");
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "kubernetes_tests.rs"]
mod tests;
