//! The crate's one error type. HTTP status mapping lives in `http/error.rs`.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Key '{key}' not found")]
    KeyNotFound { key: String },
    #[error("Key '{key}' version {version} not found")]
    VersionNotFound { key: String, version: u64 },
    #[error("Key '{key}' is at version {actual}, not {expected}")]
    VersionConflict {
        key: String,
        expected: u64,
        actual: u64,
    },
    #[error("Key '{key}' has reached the largest version number")]
    VersionOverflow { key: String },
    #[error("stored value of key '{key}' version {version} is not valid JSON")]
    CorruptValue { key: String, version: i64 },
    #[error("database error ({context}): {source}")]
    Database {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("write failed: {0}")]
    WriteFailed(String),
    #[error(
        "write failed: the disk holding the database is full (free space or grow the volume; \
         reads still work): {0}"
    )]
    StorageFull(String),
    #[error("cannot migrate the database: {0}")]
    Migration(String),
    #[error(
        "database {} is in use by another kv-server process (or a clean-up); stop it first",
        path.display()
    )]
    DatabaseInUse { path: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(
        "Key '{key}' version {version} is stored on {} but only {} of the {needed} servers \
         required confirmed it in time; it reaches the others when they are back, but treat \
         this write as uncertain", acked.join(", "), acked.len()
    )]
    QuorumFailed {
        key: String,
        version: u64,
        acked: Vec<String>,
        needed: usize,
    },
    #[error(
        "Key '{key}' was not stored: its write quorum needs {needed} servers and this primary \
         cannot reach enough of them (unreachable: {}); retry shortly", unreachable.join(", ")
    )]
    QuorumUnavailable {
        key: String,
        needed: usize,
        unreachable: Vec<String>,
    },
    #[error(
        "this server ('{me}') is not the primary of key '{key}'; '{primary}' is: the gateway and the servers disagree on the ring (check --peers, --vnodes and --replication-factor)"
    )]
    NotPrimary {
        key: String,
        me: String,
        primary: String,
    },
    #[error("server '{0}' has a new database and is still catching up with its peers")]
    Syncing(String),
    #[error("the request was routed by ring epoch {asked}, older than this server's {}: use the ring in this answer", ring.epoch)]
    StaleRing {
        asked: u64,
        ring: Box<kv_common::ring_config::RingConfig>,
    },
    #[error(
        "the request was routed by ring epoch {asked}, newer than this server's {current}: it is fetching it, retry shortly"
    )]
    RingBehind { asked: u64, current: u64 },
    #[error(
        "key '{key}' is moving to '{next_primary}' (ring transition): its writes pause briefly, retry shortly"
    )]
    Rebalancing { key: String, next_primary: String },
    #[error("invalid ring state: {0}")]
    InvalidRing(String),
    #[error("a transition to ring epoch {next} is under way: clean up after it is committed")]
    TransitionUnderway { next: u64 },
    #[error("peer '{peer}': {message}")]
    Peer { peer: String, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Short stable label for logs and metrics.
    /// SQLite found the database file damaged ("malformed") where it read.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Database {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            } if e.code == rusqlite::ErrorCode::DatabaseCorrupt
        )
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::KeyNotFound { .. } => "key_not_found",
            Error::VersionNotFound { .. } => "version_not_found",
            Error::VersionConflict { .. } => "version_conflict",
            Error::VersionOverflow { .. } => "version_overflow",
            Error::CorruptValue { .. } => "corrupt_value",
            Error::Database { .. } => "database",
            Error::WriteFailed(_) => "write_failed",
            Error::StorageFull(_) => "storage_full",
            Error::Migration(_) => "migration",
            Error::DatabaseInUse { .. } => "database_in_use",
            Error::Io { .. } => "io",
            Error::ShuttingDown => "shutting_down",
            Error::QuorumFailed { .. } => "quorum_failed",
            Error::QuorumUnavailable { .. } => "quorum_unavailable",
            Error::NotPrimary { .. } => "not_primary",
            Error::Syncing(_) => "syncing",
            Error::StaleRing { .. } => "stale_ring",
            Error::RingBehind { .. } => "ring_behind",
            Error::Rebalancing { .. } => "rebalancing",
            Error::InvalidRing(_) => "invalid_ring",
            Error::TransitionUnderway { .. } => "transition_underway",
            Error::Peer { .. } => "peer",
            Error::Config(_) => "config",
            Error::Internal(_) => "internal",
        }
    }
}
