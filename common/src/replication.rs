//! Wire types and header names of replication, shared by the servers (which speak the
//! internal routes to each other), the gateway (which reads health and passes the quorum) and
//! tests. The protocol is described in `docs/replication.md`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// Put header, gateway -> primary: how many servers must hold the version before the answer.
pub const WRITE_QUORUM_HEADER: &str = "x-kv-write-quorum";
/// Put answer header: the servers that confirmed the version, primary first, comma-separated.
pub const ACKED_BY_HEADER: &str = "x-kv-acked-by";
/// Read answer header (gateway): the primary that could not answer, when a replica did.
pub const PRIMARY_UNAVAILABLE_HEADER: &str = "x-kv-primary-unavailable";

/// How long a primary waits for a put's write quorum by default (`kv-server
/// --replication-timeout-ms`).
pub const DEFAULT_REPLICATION_TIMEOUT_MS: u64 = 2_000;

/// A gateway's default `--request-timeout-ms`.
pub const DEFAULT_GATEWAY_REQUEST_TIMEOUT_MS: u64 = 10_000;

/// What a gateway waits beyond the servers' replication timeout: a put queues for the writer
/// and commits before its quorum wait starts, and its answer must still reach the gateway.
/// The defaults keep this margin (2 s + 8 s = 10 s).
pub const GATEWAY_TIMEOUT_MARGIN_MS: u64 = 8_000;

/// The `--request-timeout-ms` a gateway needs in front of servers whose
/// `--replication-timeout-ms` is `replication_timeout_ms`: long enough that a put which misses
/// its quorum gets the server's own answer (`503 quorum_failed`, with what the primary knows)
/// rather than the gateway's timeout; never below the default.
pub fn gateway_request_timeout_ms(replication_timeout_ms: u64) -> u64 {
    replication_timeout_ms
        .saturating_add(GATEWAY_TIMEOUT_MARGIN_MS)
        .max(DEFAULT_GATEWAY_REQUEST_TIMEOUT_MS)
}

/// Largest page `/internal/changes` returns.
pub const MAX_CHANGES_PAGE: u32 = 1000;

/// One version as replicas exchange it: exactly what the primary stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub version: u64,
    /// The value's JSON text, byte for byte as the client sent it.
    pub value: Box<RawValue>,
    pub timestamp: f64,
}

/// `POST /internal/replicate`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicateRequest {
    /// The sending server's name.
    pub from: String,
    pub records: Vec<Record>,
}

/// Answer of `POST /internal/replicate` (200: nothing conflicted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateResponse {
    /// Versions newly stored.
    pub stored: u64,
    /// Versions already held with the same value.
    pub duplicates: u64,
}

/// A (key, version) a replica holds with another value (in a 409 `replica_conflict`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub key: String,
    pub version: u64,
}

/// A record with its place in the sending server's change sequence. (Not `#[serde(flatten)]`
/// over [`Record`]: flattening buffers the value and cannot hold a `RawValue`.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    pub key: String,
    pub version: u64,
    pub value: Box<RawValue>,
    pub timestamp: f64,
}

/// `GET /internal/changes?after=&for=&limit=`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangesResponse {
    /// Identity of the answering database; changes when it is recreated, which resets
    /// cursors.
    pub instance: String,
    pub records: Vec<Change>,
    /// The last sequence examined: the cursor to ask from next.
    pub next: u64,
    /// The newest sequence of the answering server.
    pub head: u64,
}

/// One peer as seen by a server's catch-up.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PeerStatus {
    pub name: String,
    pub url: String,
    /// Last sequence of the peer this server has seen.
    pub cursor: u64,
    /// The peer's newest sequence at the last pull.
    pub head: u64,
    /// `head - cursor`.
    pub lag: u64,
    /// Why the last pull failed, if it did.
    pub last_error: Option<String>,
    /// Whether the last exchange with the peer (push, pull or gossip) got an answer: puts
    /// whose quorum needs an unreachable peer are refused (`quorum_unavailable`).
    #[serde(default = "reachable_by_default")]
    pub reachable: bool,
}

/// Servers from before `reachable` existed did not say: assume they did reach the peer.
fn reachable_by_default() -> bool {
    true
}

/// `GET /internal/status`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplicationStatus {
    pub name: String,
    pub replication_factor: usize,
    pub write_quorum: usize,
    /// False while a server with a new database has not caught up with every peer.
    pub synced: bool,
    /// Sum of the peers' lags, as of each peer's last pull (so 0 right after a write that
    /// no pull has seen yet; compare `peers[].cursor` with each peer's own `head` to know).
    pub lag: u64,
    /// This server's own newest change sequence.
    pub head: u64,
    pub peers: Vec<PeerStatus>,
}

/// The `replication` part of a server's `/health` answer (absent on a standalone server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicationHealth {
    pub factor: usize,
    pub lag: u64,
    pub synced: bool,
}

/// A server's `/health` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthBody {
    /// Always `ok`.
    pub status: String,
    /// The server's `--node-name`; with replication, its name on the ring, which a gateway
    /// checks against the member it meant to reach (absent from older servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationHealth>,
    /// The server's ring epoch (absent on a standalone server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<crate::ring_config::RingHealth>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_outwaits_the_servers_quorum_wait() {
        assert_eq!(
            gateway_request_timeout_ms(DEFAULT_REPLICATION_TIMEOUT_MS),
            DEFAULT_GATEWAY_REQUEST_TIMEOUT_MS
        );
        assert_eq!(
            gateway_request_timeout_ms(1),
            DEFAULT_GATEWAY_REQUEST_TIMEOUT_MS
        );
        assert_eq!(gateway_request_timeout_ms(30_000), 38_000);
        assert_eq!(gateway_request_timeout_ms(u64::MAX), u64::MAX);
    }
}
