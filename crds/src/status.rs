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
    /// Names the servers have on the hash ring (their pod hostnames).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ring_members: Vec<String>,
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
