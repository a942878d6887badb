//! The [`Topology`] every request reads, and the handle that rebuilds and swaps it.
//!
//! Two inputs decide it: the membership source's member list (names and addresses; health is
//! kept per member) and, once the gateway has learned one from the servers, a ring
//! configuration (`kv_common::ring_config`, docs/rebalancing.md).
//!
//! - Without a configuration the ring is the members' names, the replication factor comes
//!   from the flags, and the epoch goes up by one each time the *set of names* changes: only
//!   names decide placement, so a pod back with a new IP keeps the ring and its epoch.
//! - With one, the configuration alone says which names own keys (its members, vnodes and
//!   replication factor), and its epoch is the topology's: the servers compare it with their
//!   own (`x-kv-ring-epoch`). A member's address still comes from the membership source when
//!   it knows the name (it follows pods that move), else from the configuration, so a server
//!   a rebalance added is reachable through a static `--backend` list that never named it.
//!   A configuration is only ever replaced by one with a higher epoch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use kv_common::ring_config::RingConfig;
use tokio::sync::Notify;

use super::{BackendUrl, Member};
use crate::health::{HealthState, ReplicationState};
use crate::metrics::GatewayMetrics;
use crate::ring::Ring;

/// One member of the current topology, with its health.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub url: BackendUrl,
    pub health: HealthState,
    /// What its last readable `/health` said about replication.
    pub replication: ReplicationState,
    /// The name as the value of `x-kv-to` on every key request (`kv_common::api::
    /// ADDRESSEE_HEADER`), built once; `None` for a name no header can carry.
    pub addressee: Option<http::HeaderValue>,
}

impl Backend {
    /// A member at `url`, of unknown health.
    pub fn new(name: String, url: BackendUrl) -> Backend {
        Backend {
            addressee: http::HeaderValue::from_str(&name).ok(),
            name,
            url,
            health: HealthState::default(),
            replication: ReplicationState::default(),
        }
    }
}

/// An immutable view of the cluster: the ring and where each member is.
#[derive(Debug)]
pub struct Topology {
    /// The ring configuration's epoch; without one, up by one each time the set of member
    /// names changes.
    pub epoch: u64,
    pub ring: Arc<Ring>,
    /// By name; exactly the ring's members.
    pub backends: BTreeMap<String, Arc<Backend>>,
    /// The ring configuration routed by; `None` until the gateway learns one.
    pub config: Option<Arc<RingConfig>>,
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

    /// The epoch key requests name to servers: only a configuration's (a flags-derived
    /// epoch means nothing to them).
    pub fn config_epoch(&self) -> Option<u64> {
        self.config.as_ref().map(|c| c.epoch)
    }

    /// The replication factor in force by the configuration; `None` without one (the
    /// flags decide).
    pub fn replication_factor(&self) -> Option<usize> {
        self.config.as_ref().map(|c| c.factor())
    }

    /// Where the ring comes from: `config` (learned from the servers) or `members` (the
    /// membership source's names).
    pub fn ring_source(&self) -> &'static str {
        if self.config.is_some() {
            "config"
        } else {
            "members"
        }
    }
}

/// What the topology is built from; the last input of each kind.
#[derive(Default)]
struct Inputs {
    members: Vec<Member>,
    config: Option<Arc<RingConfig>>,
}

/// The shared, atomically swapped current topology.
pub struct TopologyHandle {
    current: ArcSwap<Topology>,
    /// Writers (the membership source, the ring learners) take turns here, so each rebuild
    /// sees both latest inputs; readers never touch it.
    inputs: Mutex<Inputs>,
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
            config: None,
        };
        TopologyHandle {
            current: ArcSwap::from_pointee(empty),
            inputs: Mutex::new(Inputs::default()),
            vnodes,
            changed: Notify::new(),
            metrics,
        }
    }

    pub fn load(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Replaces the member list. Returns whether the topology changed.
    pub fn update(&self, members: Vec<Member>) -> bool {
        let mut inputs = self.inputs.lock().unwrap_or_else(PoisonError::into_inner);
        inputs.members = members;
        self.rebuild(&inputs)
    }

    /// Whether a server reporting ring `epoch` knows a configuration newer than the one in
    /// force (any epoch from 1 up, while there is none).
    pub fn is_behind(&self, epoch: u64) -> bool {
        epoch > self.load().config_epoch().unwrap_or(0)
    }

    /// Routes by `config` from now on if its epoch is above the one in force. `Ok(false)`: not
    /// newer (learned twice, or late); `Err`: not a configuration to route by.
    pub fn adopt(&self, config: RingConfig) -> Result<bool, String> {
        config.validate()?;
        if config.epoch == 0 {
            // A server's own flags-derived ring: nobody applied it, nothing to route by.
            return Ok(false);
        }
        // Every URL must be usable: the membership source may forget a name later.
        for member in &config.members {
            BackendUrl::parse(&member.url).map_err(|e| format!("member '{}': {e}", member.name))?;
        }
        let mut inputs = self.inputs.lock().unwrap_or_else(PoisonError::into_inner);
        if inputs
            .config
            .as_ref()
            .is_some_and(|known| known.epoch >= config.epoch)
        {
            return Ok(false);
        }
        inputs.config = Some(Arc::new(config));
        self.rebuild(&inputs);
        Ok(true)
    }

    /// Builds the topology of `inputs` and swaps it in if it differs. Only called with the
    /// inputs locked, so there is one writer at a time.
    fn rebuild(&self, inputs: &Inputs) -> bool {
        let old = self.current.load_full();
        let wanted: Vec<Member> = match &inputs.config {
            None => inputs.members.clone(),
            Some(config) => config
                .members
                .iter()
                .filter_map(|m| {
                    let url = match inputs.members.iter().find(|known| known.name == m.name) {
                        Some(known) => known.url.clone(),
                        // Checked by `adopt`.
                        None => BackendUrl::parse(&m.url).ok()?,
                    };
                    Some(Member {
                        name: m.name.clone(),
                        url,
                    })
                })
                .collect(),
        };
        let mut backends = BTreeMap::new();
        for member in wanted {
            let backend = match old.backends.get(&member.name) {
                // Same place: keep the health we know.
                Some(b) if b.url == member.url => b.clone(),
                _ => Arc::new(Backend::new(member.name.clone(), member.url)),
            };
            backends.insert(member.name, backend);
        }
        let same_names = backends.keys().eq(old.backends.keys());
        let same_places = same_names
            && backends
                .values()
                .zip(old.backends.values())
                .all(|(a, b)| Arc::ptr_eq(a, b));
        let same_config = match (&old.config, &inputs.config) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if same_places && same_config {
            return false;
        }
        let (epoch, ring) = match &inputs.config {
            Some(config) => {
                let ring = if same_names && old.ring.vnodes() == config.vnodes {
                    old.ring.clone()
                } else {
                    Arc::new(config.ring())
                };
                (config.epoch, ring)
            }
            None if same_names => (old.epoch, old.ring.clone()),
            None => {
                let ring = Ring::new(backends.keys().cloned(), self.vnodes);
                (old.epoch + 1, Arc::new(ring))
            }
        };
        let topology = Topology {
            epoch,
            ring,
            backends,
            config: inputs.config.clone(),
        };
        tracing::info!(
            epoch,
            source = topology.ring_source(),
            members = ?topology.backends.keys().collect::<Vec<_>>(),
            "topology changed"
        );
        self.metrics.ring_changed(epoch, topology.backends.len());
        for gone in old
            .backends
            .keys()
            .filter(|name| !topology.backends.contains_key(*name))
        {
            self.metrics.forget_member(gone);
        }
        self.current.store(Arc::new(topology));
        self.changed.notify_one();
        true
    }
}

#[cfg(test)]
mod tests {
    use kv_common::ring_config::RingMember;

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

    fn config(epoch: u64, members: &[(&str, &str)], vnodes: usize, r: usize) -> RingConfig {
        let members = members
            .iter()
            .map(|(name, url)| RingMember {
                name: (*name).into(),
                url: (*url).into(),
            })
            .collect();
        RingConfig::new(epoch, members, vnodes, r).unwrap()
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
        assert_eq!(first.ring_source(), "members");
        assert_eq!(first.config_epoch(), None);
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

    #[test]
    fn a_config_decides_names_epoch_vnodes_and_factor() {
        let topology = handle();
        topology.update(vec![
            member("a", "http://10.0.0.1:80"),
            member("b", "http://10.0.0.2:80"),
            member("gone", "http://10.0.0.3:80"),
        ]);
        topology.load().backends["a"].health.mark_up();
        assert!(topology.is_behind(1));
        let ring = config(
            7,
            &[
                ("a", "http://ignored:80"),
                ("b", "http://ignored:80"),
                ("new", "http://10.0.0.4:80"),
            ],
            64,
            2,
        );
        assert_eq!(topology.adopt(ring), Ok(true));
        let t = topology.load();
        assert_eq!(
            (t.epoch, t.config_epoch(), t.ring_source()),
            (7, Some(7), "config")
        );
        assert_eq!(t.ring.members(), ["a", "b", "new"]);
        assert_eq!(t.ring.vnodes(), 64);
        assert_eq!(t.replication_factor(), Some(2));
        // The membership source's address wins; a name it does not know uses the config's.
        let urls: Vec<String> = t.backends.values().map(|b| b.url.to_string()).collect();
        assert_eq!(
            urls,
            [
                "http://10.0.0.1:80",
                "http://10.0.0.2:80",
                "http://10.0.0.4:80"
            ]
        );
        assert!(t.backends["a"].health.is_up(), "health survives the swap");
        assert!(!topology.is_behind(7) && topology.is_behind(8));

        // The membership source learning the new server's address moves it there; names
        // it lists beyond the configuration stay off the ring.
        assert!(topology.update(vec![
            member("a", "http://10.0.0.1:80"),
            member("new", "http://10.0.0.5:80"),
            member("other", "http://10.0.0.6:80"),
        ]));
        let t = topology.load();
        assert_eq!(t.epoch, 7);
        assert_eq!(t.ring.members(), ["a", "b", "new"]);
        assert_eq!(t.backends["new"].url.to_string(), "http://10.0.0.5:80");
        assert_eq!(t.backends["b"].url.to_string(), "http://ignored:80");
    }

    #[test]
    fn only_newer_configs_replace_the_one_in_force() {
        let topology = handle();
        topology.update(vec![member("a", "http://10.0.0.1:80")]);
        let a = [("a", "http://10.0.0.1:80")];
        let ab = [("a", "http://10.0.0.1:80"), ("b", "http://10.0.0.2:80")];
        assert_eq!(topology.adopt(config(0, &ab, 150, 3)), Ok(false), "epoch 0");
        assert_eq!(topology.load().config_epoch(), None);
        assert_eq!(topology.adopt(config(3, &ab, 150, 3)), Ok(true));
        assert_eq!(
            topology.adopt(config(3, &a, 150, 3)),
            Ok(false),
            "same epoch"
        );
        assert_eq!(topology.adopt(config(2, &a, 150, 3)), Ok(false), "older");
        let t = topology.load();
        assert_eq!((t.epoch, t.ring.members().len()), (3, 2));
        assert_eq!(t.replication_factor(), Some(2), "capped at the members");
        let bad = config(4, &[("a", "http://10.0.0.1:80/path")], 150, 1);
        assert!(topology.adopt(bad).is_err());
        assert_eq!(topology.adopt(config(4, &a, 150, 1)), Ok(true));
        let t = topology.load();
        assert_eq!((t.epoch, t.ring.members()), (4, &["a".to_owned()][..]));
    }
}
