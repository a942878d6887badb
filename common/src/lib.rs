//! Pieces shared by every kvstore binary: the JSON wire types of the storage API, the error
//! body every service answers with, the consistent-hash ring (the gateway routes by it, the
//! servers replicate by it, so both must compute the same one), tracing set-up, the tokio
//! runtime, HTTP request metrics, shutdown signals, a body of several byte chunks, and how a
//! binary reports the error it stops on.
//!
//! This crate is a leaf: it knows nothing of SQLite or Kubernetes, so the gateway and the CLI
//! can depend on it without pulling in storage code.

pub mod api;
pub mod body;
pub mod body_budget;
pub mod bytesize;
pub mod disk;
pub mod http_metrics;
pub mod mux;
pub mod net;
pub mod replication;
pub mod report;
pub mod ring;
pub mod ring_config;
pub mod runtime;
pub mod serve;
pub mod shutdown;
pub mod telemetry;

pub use api::{ErrorBody, ErrorCode};
