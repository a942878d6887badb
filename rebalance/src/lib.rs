//! Rebalancing (docs/rebalancing.md): moving a running cluster from one ring configuration to
//! another with no acknowledged version lost or forked.
//!
//! - `plan.rs`: the decisions, a pure function of what the servers report (unit-tested phase
//!   by phase, failure cases included).
//! - `coordinator.rs`: the IO around it: observe every server, act, repeat.
//! - `client.rs`: the HTTP client towards the servers' `/internal/*` routes.
//!
//! Used by `kvstore ring apply` (local clusters, compose) and by the operator.

mod client;
pub mod coordinator;
mod error;
pub mod plan;

pub use coordinator::{Coordinator, Progress, UrlMap};
pub use error::{Error, Result};
pub use plan::{Phase, Target};
