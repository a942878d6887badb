//! The kvstore operator: a kube-runtime `Controller` that turns each `KvCluster` into a
//! StatefulSet of `kv-server`s, a `kv-gateway` Deployment and their Services, permissions,
//! disruption budget and network policy, and reports what it sees in the cluster's status.
//!
//! - `render`: desired state as a pure function (held by golden files).
//! - `plan`: what is applied vs. refused (scaling, immutable storage), also pure.
//! - `ring`: moving keys when the number of servers changes (kv-rebalance's coordinator, one
//!   round per pass) and the ring part of the status.
//! - `reconcile`: the pass itself (server-side apply, Events, status) and `error_policy`.
//! - `controller`: the CRD check, leader election and the `Controller` wiring; `http`: the
//!   operator's own `/health` and `/metrics`.

pub mod config;
pub mod controller;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod plan;
pub mod reconcile;
pub mod render;
pub mod ring;

pub use config::{OperatorConfig, RenderConfig};
pub use controller::{check_crd, run, run_with};
pub use error::{Error, Result};
