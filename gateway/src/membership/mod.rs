//! Who the members are, and the [`Topology`] every request reads.
//!
//! Membership sources (a static list in `static_list`, Kubernetes EndpointSlices in
//! `kubernetes`) only ever call [`TopologyHandle::update`] with the full member list. The
//! handle builds a new immutable topology and swaps it in atomically, so a request sees one
//! whole ring; the epoch goes up only when the *set of names* changes, because only names
//! decide placement (an address change, e.g. a pod that came back with a new IP, keeps the
//! ring and its epoch).

pub mod kubernetes;
pub mod static_list;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Uri;
use http::uri::{Authority, Scheme};
use tokio::sync::Notify;

use crate::health::{HealthState, ReplicationState};
use crate::metrics::GatewayMetrics;
use crate::ring::Ring;

/// A member as a membership source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The name placed on the ring (seed: `host:port`; Kubernetes: the pod's hostname).
    pub name: String,
    pub url: BackendUrl,
}

/// The scheme and authority of a server: the only part of an outgoing URL that does not come
/// from the gateway's own fixed paths. Holding no path makes it impossible for a request to
/// steer the gateway elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    authority: Authority,
}

impl BackendUrl {
    /// Parses `http://host:port` (a trailing `/` allowed). Only plain HTTP: servers sit on a
    /// private network beside the gateway.
    pub fn parse(s: &str) -> Result<BackendUrl, String> {
        let uri: Uri = s.parse().map_err(|e| format!("invalid URL '{s}': {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("invalid URL '{s}': only http:// is supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("invalid URL '{s}': no host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(format!("invalid URL '{s}': credentials are not supported"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("invalid URL '{s}': no path or query allowed"));
        }
        Ok(BackendUrl { authority })
    }

    /// The URL of `path_and_query` (which must start with `/`) on this server.
    pub fn join(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// One member of the current topology, with its health.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub url: BackendUrl,
    pub health: HealthState,
    /// What its last readable `/health` said about replication.
    pub replication: ReplicationState,
}

/// An immutable view of the cluster: the ring and where each member is.
#[derive(Debug)]
pub struct Topology {
    /// Goes up by one each time the set of member names changes.
    pub epoch: u64,
    pub ring: Arc<Ring>,
    /// By name; exactly the ring's members.
    pub backends: BTreeMap<String, Arc<Backend>>,
}

impl Topology {
    /// The backend owning `key`, or `None` when the ring is empty.
    pub fn owner(&self, key: &str) -> Option<&Arc<Backend>> {
        self.ring
            .owner(key)
            .and_then(|name| self.backends.get(name))
    }

    /// The members holding `key` with `r` replicas, primary first (see
    /// [`Ring::preference_list`]).
    pub fn preference_list(&self, key: &str, r: usize) -> Vec<&Arc<Backend>> {
        self.ring
            .preference_list(key, r)
            .into_iter()
            .filter_map(|name| self.backends.get(name))
            .collect()
    }

    /// Ready means it can serve some keys: a non-empty ring with a member that answered.
    pub fn is_ready(&self) -> bool {
        self.backends.values().any(|b| b.health.is_up())
    }
}

/// The shared, atomically swapped current topology.
pub struct TopologyHandle {
    current: ArcSwap<Topology>,
    vnodes: usize,
    /// Wakes the health checker so new members are probed at once.
    pub changed: Notify,
    metrics: Arc<GatewayMetrics>,
}

impl TopologyHandle {
    pub fn new(vnodes: usize, metrics: Arc<GatewayMetrics>) -> TopologyHandle {
        let empty = Topology {
            epoch: 0,
            ring: Arc::new(Ring::new(Vec::<String>::new(), vnodes)),
            backends: BTreeMap::new(),
        };
        TopologyHandle {
            current: ArcSwap::from_pointee(empty),
            vnodes,
            changed: Notify::new(),
            metrics,
        }
    }

    pub fn load(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Replaces the member list. Returns whether anything changed.
    ///
    /// Only membership sources call this, one task each, so there is no concurrent writer;
    /// readers never block.
    pub fn update(&self, members: Vec<Member>) -> bool {
        let old = self.current.load_full();
        let mut backends = BTreeMap::new();
        for member in members {
            let backend = match old.backends.get(&member.name) {
                // Same place: keep the health we know.
                Some(b) if b.url == member.url => b.clone(),
                _ => Arc::new(Backend {
                    name: member.name.clone(),
                    url: member.url,
                    health: HealthState::default(),
                    replication: ReplicationState::default(),
                }),
            };
            backends.insert(member.name, backend);
        }
        let same_names = backends.keys().eq(old.backends.keys());
        let same_places = same_names
            && backends
                .values()
                .zip(old.backends.values())
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if same_places {
            return false;
        }
        let (epoch, ring) = if same_names {
            (old.epoch, old.ring.clone())
        } else {
            let ring = Ring::new(backends.keys().cloned(), self.vnodes);
            (old.epoch + 1, Arc::new(ring))
        };
        tracing::info!(
            epoch,
            members = ?backends.keys().collect::<Vec<_>>(),
            "topology changed"
        );
        self.metrics.ring_changed(epoch, backends.len());
        for gone in old
            .backends
            .keys()
            .filter(|name| !backends.contains_key(*name))
        {
            self.metrics.forget_member(gone);
        }
        self.current.store(Arc::new(Topology {
            epoch,
            ring,
            backends,
        }));
        self.changed.notify_one();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, url: &str) -> Member {
        Member {
            name: name.into(),
            url: BackendUrl::parse(url).unwrap(),
        }
    }

    fn handle() -> TopologyHandle {
        let mut registry = prometheus_client::registry::Registry::default();
        TopologyHandle::new(150, GatewayMetrics::register(&mut registry))
    }

    #[test]
    fn backend_urls_hold_only_scheme_and_authority() {
        let url = BackendUrl::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(url.to_string(), "http://127.0.0.1:8080");
        assert_eq!(
            url.join("/get/a%2Fb?version=1").unwrap().to_string(),
            "http://127.0.0.1:8080/get/a%2Fb?version=1"
        );
        for bad in [
            "https://x:1",
            "x:1",
            "http://x:1/api",
            "http://u:p@x:1",
            "http://x:1/?a=b",
        ] {
            assert!(BackendUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn epoch_moves_only_when_the_names_change() {
        let topology = handle();
        assert!(topology.update(vec![
            member("a", "http://10.0.0.1:80"),
            member("b", "http://10.0.0.2:80")
        ]));
        let first = topology.load();
        assert_eq!(first.epoch, 1);
        first.backends["a"].health.mark_up();

        // Same members again: nothing to do.
        assert!(!topology.update(vec![
            member("b", "http://10.0.0.2:80"),
            member("a", "http://10.0.0.1:80")
        ]));

        // b moved to a new address: same ring and epoch, fresh health for b only.
        assert!(topology.update(vec![
            member("a", "http://10.0.0.1:80"),
            member("b", "http://10.0.0.9:80")
        ]));
        let moved = topology.load();
        assert_eq!(moved.epoch, 1);
        assert!(Arc::ptr_eq(&moved.ring, &first.ring));
        assert!(moved.backends["a"].health.is_up());
        assert_eq!(moved.backends["b"].url.to_string(), "http://10.0.0.9:80");

        assert!(topology.update(vec![member("a", "http://10.0.0.1:80")]));
        let shrunk = topology.load();
        assert_eq!(shrunk.epoch, 2);
        assert_eq!(shrunk.ring.members(), ["a"]);
        assert_eq!(shrunk.owner("anything").unwrap().name, "a");
    }
}
