//! `KvClusterStatus`: what the operator observed, written only by the operator through the
//! status subresource.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition `type`s the operator sets, each with a reason and a message.
pub mod condition_types {
    /// All servers and at least one gateway are ready and the spec is fully applied.
    pub const READY: &str = "Ready";
    /// A rollout or start-up is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// The spec asks for something the operator refuses to do (yet); the message says why and
    /// what to do.
    pub const DEGRADED: &str = "Degraded";
    /// Keys are moving between servers (a change of `spec.replicas`): `True` with the phase as
    /// reason and the progress as message, `False` with reason `Balanced` once the ring in
    /// force is the one the spec asks for.
    pub const REBALANCING: &str = "Rebalancing";
}

/// Reasons of the `Rebalancing` condition besides the coordinator's phases (`Announcing`,
/// `Copying`, `Draining`, `Switching`, `CleaningUp`).
pub mod rebalancing_reasons {
    /// The ring in force is the one the spec asks for.
    pub const BALANCED: &str = "Balanced";
    /// Scale up: the new servers are starting; keys move once every one is ready.
    pub const WAITING_FOR_SERVERS: &str = "WaitingForServers";
    /// No server answered the coordinator this round (it tries again).
    pub const UNREACHABLE: &str = "ServersUnreachable";
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KvClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: Phase,
    /// Servers that exist (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Servers passing readiness.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the server pods (the scale subresource's selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Gateway pods available.
    #[serde(default)]
    pub gateway_ready_replicas: i32,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Names the servers have on the hash ring in force (their pod hostnames).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ring_members: Vec<String>,
    /// The ring configuration: which servers own key ranges in which epoch, and the move to
    /// another one under way (docs/rebalancing.md). Written only by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<RingStatus>,
    /// In-cluster address of the gateway, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_endpoint: Option<String>,
}

/// A one-word summary for `kubectl get`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Nothing is ready yet.
    #[default]
    Pending,
    /// Starting or rolling out.
    Progressing,
    /// Everything asked for is running and ready.
    Ready,
    /// Running, but part of the spec was refused (see the `Degraded` condition).
    Degraded,
}

/// The cluster's ring as the operator last saw it, and the move it drives.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RingStatus {
    /// The servers of the cluster's first ring (epoch 0), fixed for the cluster's life: every
    /// server's `KV_PEERS` names them, so scaling never changes the pod template. A new server
    /// not among them starts as a joiner that owns nothing until a ring names it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<String>,
    /// Epoch of the ring in force.
    #[serde(default)]
    pub epoch: i64,
    /// Servers of the ring in force, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Epoch of the ring being moved to, during a move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_epoch: Option<i64>,
    /// Servers of the ring being moved to, during a move (the StatefulSet keeps every server
    /// of both rings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_members: Vec<String>,
    /// Servers the spec asks for, while they differ from `members`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_members: Vec<String>,
    /// Replication factor of the ring in force, as configured (servers cap it at the
    /// members). When `spec.replication.factor` differs, keys move to the new replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// Virtual nodes per server of the ring in force. When `spec.vnodes` differs, keys move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnodes: Option<i32>,
    /// `Done` when the ring in force is the target and clean; else the move's phase
    /// (`WaitingForServers`, `Announcing`, `Copying`, `Draining`, `Switching`, `CleaningUp`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// The last round's outcome, for humans.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Versions copied so far by the servers of the next ring.
    #[serde(default)]
    pub copied_versions: i64,
    /// Servers of the next ring done copying, as `done/all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_servers: Option<String>,
    /// Versions servers deleted because they no longer hold them (clean-up, this move).
    #[serde(default)]
    pub cleaned_versions: i64,
    /// Servers the move waits for, with why when known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
}
