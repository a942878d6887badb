//! JSON wire types of the storage API, shared by the server (which produces them), the
//! gateway (which forwards and decorates them) and the CLI (which reads them).
//!
//! Field names are the seed's (`PutResponse`, `detail`, ...) so that its clients keep working.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// A server's default `--max-value-bytes`.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// The most a server's `--max-value-bytes` may be. Whatever must carry one value whole (the
/// gateway's answers, a server's reads from its peers) allows at least this much.
pub const MAX_VALUE_BYTES_LIMIT: usize = 64 << 20;

/// Bytes a put body may hold beyond the value itself (`{"value": ...}` and extra fields): a
/// server takes bodies up to `--max-value-bytes` plus this, and a gateway in front of servers
/// with larger values must take as much.
pub const PUT_BODY_OVERHEAD: usize = 64 << 10;

/// The gateway's default `--max-body-bytes`: enough for the servers' default value limit
/// (1 MiB) many times over, so only servers configured above 16 MiB need the gateway raised.
pub const DEFAULT_GATEWAY_MAX_BODY_BYTES: usize = 16 << 20;

/// The `--max-body-bytes` a gateway needs in front of servers whose `--max-value-bytes` is
/// `max_value_bytes`: room for a put of the largest value, so that the server, which knows the
/// limit, is the one that answers for it; never below the default.
pub fn gateway_max_body_bytes(max_value_bytes: usize) -> usize {
    max_value_bytes
        .saturating_add(PUT_BODY_OVERHEAD)
        .max(DEFAULT_GATEWAY_MAX_BODY_BYTES)
}

/// A `/versions` page stops before the values in it would pass this many bytes (it always
/// holds at least one version), so a page of large values still fits through the gateway.
pub const VERSIONS_PAGE_BYTES: usize = 8 << 20;

/// Request header: the member the gateway means to reach. A replicated server (whose name is
/// its ring name) refuses a key request naming another server with `421 wrong_server`, before
/// it reads or stores anything: the gateway reached that member's old address, which another
/// server now has (a pod IP reused before the EndpointSlice said so). A standalone server's
/// name is only a label and is not checked.
pub const ADDRESSEE_HEADER: &str = "x-kv-to";

/// Body of `PUT|POST /put/{key}`. Extra fields are ignored, as the seed's pydantic model did.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PutBody {
    /// Any JSON value: string, number, object, array or null. Stored exactly as sent, so big
    /// integers and `1.0` come back unchanged.
    #[schema(value_type = Object)]
    pub value: Box<RawValue>,
}

/// Answer to a successful put (the seed's `PutResponse`, with its bugs fixed and a timestamp).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PutResponse {
    /// `create` for the first version of a key, `update` afterwards.
    pub operation: Operation,
    pub key: String,
    /// The version just stored (never null, unlike the seed).
    pub version: u64,
    /// Same as `version`; kept for the seed's clients.
    pub new_version: u64,
    /// The version this one follows, null on create.
    pub previous_version: Option<u64>,
    /// Number of versions of this key in the database, this one included.
    pub total_versions: u64,
    /// When the version was written, Unix seconds.
    pub timestamp: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Create,
    Update,
}

/// Answer to `GET /get/{key}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GetResponse {
    #[schema(value_type = Object)]
    pub value: Box<RawValue>,
    pub version: u64,
    /// When this version was written (Unix seconds), wherever it was read from.
    pub timestamp: f64,
    pub source: Source,
}

/// Where a read was answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Cache,
    Database,
}

/// One version in a `GET /versions/{key}` page.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionEntry {
    pub version: u64,
    #[schema(value_type = Object)]
    pub value: Box<RawValue>,
    pub timestamp: f64,
}

/// A page of a key's versions, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionsResponse {
    pub key: String,
    /// The key's latest version at the time of the read.
    pub latest_version: u64,
    /// Versions greater than the request's `after`, ascending, at most `limit` of them and
    /// fewer once their values reach 8 MiB (`VERSIONS_PAGE_BYTES`; never none while some
    /// remain): follow `next_after`.
    pub versions: Vec<VersionEntry>,
    /// Pass this as `after` to get the next page; null when this page reaches the latest.
    pub next_after: Option<u64>,
}

/// `GET /cache/stats`: the seed's fields plus counters.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CacheStats {
    /// Keys currently cached.
    pub current_size: u64,
    /// Capacity in keys (`--cache-size`).
    pub max_size: u64,
    /// Bytes the cached keys and values hold, with an estimate of the bookkeeping.
    pub current_bytes: u64,
    /// Memory budget in bytes (`--cache-max-bytes`).
    pub max_bytes: u64,
    /// Either limit is reached: the next new key evicts the least recently used one.
    pub is_full: bool,
    /// Entries older than this are dropped (the seed's 30 minutes by default).
    pub expiration_minutes: f64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// hits / (hits + misses), 0 before any read.
    pub hit_ratio: f64,
    /// The server's `--node-name`.
    pub node_name: String,
}

/// `GET /db/stats`: the seed's fields plus the write-ahead log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DbStats {
    pub total_keys: u64,
    pub total_versions: u64,
    /// Size of the main database file.
    pub database_size_bytes: u64,
    /// Size of the `-wal` file beside it (0 when absent).
    pub wal_size_bytes: u64,
    /// Size of the file system holding the database (absent where it cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size_bytes: Option<u64>,
    /// What the server may still write there; puts answer `507 storage_full` at 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_available_bytes: Option<u64>,
    pub node_name: String,
}

/// Every error any kvstore service answers: the seed's `detail` message plus a stable,
/// machine-readable `code`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub detail: String,
    pub code: ErrorCode,
}

/// Machine-readable error codes. Clients match on these, never on `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    KeyNotFound,
    VersionNotFound,
    InvalidVersion,
    InvalidQuery,
    EmptyKey,
    InvalidKey,
    KeyTooLong,
    InvalidJson,
    InvalidBody,
    NonFiniteNumber,
    ValueTooLarge,
    VersionConflict,
    NotFound,
    MethodNotAllowed,
    MissingParameter,
    UnknownServer,
    ServerUnavailable,
    ServerTimeout,
    BadGateway,
    Unauthorized,
    Unavailable,
    /// A server with a new database has not caught up with its peers yet (replication).
    Syncing,
    /// The primary stored the version but not enough replicas confirmed it in time.
    QuorumFailed,
    /// The primary cannot reach enough replicas for the put's quorum: nothing was stored.
    QuorumUnavailable,
    /// A put reached a server that is not the key's primary on its ring.
    NotPrimary,
    /// The request named another server ([`ADDRESSEE_HEADER`]) than the replicated server
    /// that got it: the address the gateway has for a member now belongs to another one.
    WrongServer,
    /// A replica already holds a different value for that (key, version).
    ReplicaConflict,
    /// The request named an older ring epoch than the server's: refresh the ring, retry.
    StaleRing,
    /// The request named a newer ring epoch than the server has learned yet: retry shortly.
    RingBehind,
    /// The key's primary changes in the ring transition under way; its writes pause briefly.
    Rebalancing,
    /// The server's disk is full: nothing was stored. Reads still work; writes resume once
    /// space is freed or the volume grows.
    StorageFull,
    /// The server's database file is damaged where this request read, or the version read
    /// holds a value no JSON reader accepts: run `kv-server check`.
    DatabaseCorrupt,
    /// The request body is sent with a `Content-Encoding` (gzip, ...): the services read
    /// only uncompressed bodies.
    UnsupportedEncoding,
    /// The request body did not arrive in full within the gateway's client timeout.
    BodyTimeout,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::KeyNotFound => "key_not_found",
            ErrorCode::VersionNotFound => "version_not_found",
            ErrorCode::InvalidVersion => "invalid_version",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::EmptyKey => "empty_key",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::KeyTooLong => "key_too_long",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::NonFiniteNumber => "non_finite_number",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::MissingParameter => "missing_parameter",
            ErrorCode::UnknownServer => "unknown_server",
            ErrorCode::ServerUnavailable => "server_unavailable",
            ErrorCode::ServerTimeout => "server_timeout",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Syncing => "syncing",
            ErrorCode::QuorumFailed => "quorum_failed",
            ErrorCode::QuorumUnavailable => "quorum_unavailable",
            ErrorCode::NotPrimary => "not_primary",
            ErrorCode::WrongServer => "wrong_server",
            ErrorCode::ReplicaConflict => "replica_conflict",
            ErrorCode::StaleRing => "stale_ring",
            ErrorCode::RingBehind => "ring_behind",
            ErrorCode::Rebalancing => "rebalancing",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::DatabaseCorrupt => "database_corrupt",
            ErrorCode::UnsupportedEncoding => "unsupported_encoding",
            ErrorCode::BodyTimeout => "body_timeout",
            ErrorCode::Internal => "internal",
        }
    }
}

/// The `Content-Encoding` of a request body that is not sent as it is (`identity`), if
/// any. Neither service decodes bodies, so such a body is refused with
/// [`ErrorCode::UnsupportedEncoding`] (415) rather than read as the JSON it is not.
pub fn body_encoding(headers: &http::HeaderMap) -> Option<String> {
    let values: Vec<_> = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect();
    let codings: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .collect();
    (!codings.is_empty()).then(|| codings.join(", "))
}

/// What a refusal of [`body_encoding`] says.
pub fn body_encoding_detail(encoding: &str) -> String {
    format!(
        "Request body has Content-Encoding {encoding:?}: bodies are read uncompressed only; \
         send it without Content-Encoding"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_serialize_as_their_names() {
        for code in [
            ErrorCode::KeyNotFound,
            ErrorCode::NonFiniteNumber,
            ErrorCode::Internal,
            ErrorCode::UnknownServer,
            ErrorCode::QuorumFailed,
            ErrorCode::QuorumUnavailable,
            ErrorCode::NotPrimary,
            ErrorCode::WrongServer,
            ErrorCode::StaleRing,
            ErrorCode::RingBehind,
            ErrorCode::Rebalancing,
            ErrorCode::UnsupportedEncoding,
            ErrorCode::BodyTimeout,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn only_an_encoding_other_than_identity_is_one() {
        let headers = |values: &[&str]| {
            let mut map = http::HeaderMap::new();
            for v in values {
                map.append(http::header::CONTENT_ENCODING, v.parse().unwrap());
            }
            map
        };
        assert_eq!(body_encoding(&headers(&[])), None);
        assert_eq!(body_encoding(&headers(&["identity"])), None);
        assert_eq!(body_encoding(&headers(&[" Identity ", ""])), None);
        assert_eq!(body_encoding(&headers(&["gzip"])), Some("gzip".into()));
        assert_eq!(
            body_encoding(&headers(&["identity, br", "gzip"])),
            Some("br, gzip".into())
        );
        assert!(body_encoding_detail("gzip").contains(r#"Content-Encoding "gzip""#));
    }

    #[test]
    fn put_body_keeps_the_value_text_and_ignores_extra_fields() {
        let body: PutBody =
            serde_json::from_str(r#"{"value": 12345678901234567890123, "x": 1}"#).unwrap();
        assert_eq!(body.value.get(), "12345678901234567890123");
        let body: PutBody = serde_json::from_str(r#"{"value": null}"#).unwrap();
        assert_eq!(body.value.get(), "null");
        assert!(serde_json::from_str::<PutBody>(r#"{"val": 1}"#).is_err());
    }
}
