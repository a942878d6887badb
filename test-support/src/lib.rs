//! Test harness shared by kvstore crates: a **fake** Kubernetes API server and a **fake**
//! kubelet/controller-manager that runs a StatefulSet's servers in-process.
//!
//! Nothing here is Kubernetes. It is enough of its API, behaving the same way on the paths
//! kvstore uses, for the operator, the gateway's discovery and kube-runtime to be tested end
//! to end in `cargo test` without a cluster. The same flow against a real cluster (kind) is
//! the packaging scripts' job; a green test here says "the pieces agree with each other and
//! with kube-rs", not "this works on Kubernetes".
//!
//! # [`FakeApiServer`]
//! Served over plain HTTP on `127.0.0.1:0` ([`FakeApiServer::url`]) and in-process as an axum
//! `Router` handed to `kube::Client::new` ([`FakeApiServer::client`]). What it implements:
//! - any resource path, core (`/api/v1/...`) or grouped (`/apis/{group}/{version}/...`),
//!   namespaced or cluster-scoped, objects stored as JSON (no schema, no Kubernetes types);
//! - get, list, watch, create, replace, delete, deletecollection;
//! - `resourceVersion` (one counter, bumped only by real changes), `uid`,
//!   `creationTimestamp`, `generation` (bumped by changes outside metadata and status),
//!   409 on a stale `resourceVersion`, 409 `AlreadyExists`, 404 as a `Status` object;
//! - watch from a `resourceVersion` with the full history replayed, `timeoutSeconds`, label
//!   selectors (equality and set-based) and field selectors (equality on any dotted field);
//! - JSON patch (RFC 6902) and merge patch (RFC 7386); strategic merge patch as a merge patch;
//! - server-side apply, simplified: a three-way merge against what the same field manager
//!   applied last (see `patch.rs`); maps merge, lists are replaced whole, no conflicts (as
//!   if always forced), no `managedFields`;
//! - the `status` subresource (status only there; main-resource writes keep the status);
//! - finalizers (`deletionTimestamp`, removal when the last finalizer goes) and the owner
//!   reference cascade (background; `Orphan` supported; foreground treated as background).
//!
//! What it does not do: authentication, RBAC, admission (no defaulting, no validation, no
//! CEL rules, no immutable fields), discovery (`/api`, `/apis`, `/version`), API version
//! conversion, namespaces as a precondition (any namespace exists), pagination (`limit` is
//! ignored, a list is one page), bookmarks, `410 Gone`, `dryRun`, subresources other than
//! `status` (no `scale`, `log`, `exec`, eviction), protobuf, and Events aggregation.
//!
//! # [`Simulator`]
//! Plays the StatefulSet controller, the kubelet and the EndpointSlice controller for the
//! StatefulSets of a [`FakeApiServer`]: each pod is a real `kv-server` running in-process on
//! `127.0.0.1` (an ephemeral port), with a data directory per pod ordinal that outlives
//! "restarts" (its PersistentVolumeClaim). See `sim/mod.rs` for what it does and does not.
//!
//! # [`history`]
//! A recorded history of puts and gets under faults, and the checker that says whether it
//! is one the replication contract (docs/replication.md) allows. The checker is pure: no
//! HTTP, no clock.

mod error;
mod gc;
mod handlers;
mod patch;
mod path;
mod query;
mod server;
mod sim;
mod store;
mod watch;
mod write;

pub mod history;
pub mod monitoring;

pub use error::ApiError;
pub use server::FakeApiServer;
pub use sim::Simulator;
