//! A recorded history of operations against the store and a checker for it: the method of
//! Jepsen and of etcd's robustness tests, for a versioned key-value store with replication.
//!
//! A fault test runs clients that put and get through the gateway while servers are killed
//! and restarted, and records every operation with the time it was invoked and the time its
//! answer came back ([`Recorder`]). Every put writes a value no other put writes, so a value
//! read names the put that wrote it. At the end the test reads every server's final state
//! ([`FinalState`]) and hands both to [`check`], which knows nothing of HTTP.
//!
//! What is checked (docs/replication.md, "Guarantees"):
//! - (a) [`Check::LostAck`], [`Check::Unreadable`]: every acknowledged put is, at its
//!   version and with its value, on at least one server and readable through the gateway.
//! - (b) [`Check::Fork`]: no (key, version) is ever seen with two values, across acks,
//!   reads and every server's final state.
//! - (c) [`Check::Gap`]: the primary lists every key's versions as exactly `1..=latest`,
//!   and holds every version any server holds; [`Check::Phantom`]: every value seen was
//!   written by a put that may have taken effect (acked or indeterminate, of that key);
//!   [`Check::Duplicate`]: a value (one put) is never seen at two versions.
//! - (d) [`Check::NonMonotonic`]: a client never reads, as latest, a version older than one
//!   it was acknowledged or (see [`CheckOptions::floor_from_unacked_reads`]) read before;
//!   [`Check::Stale`]: a read invoked after a put of version `v` was acknowledged never
//!   answers older than `v` (latest) nor "not found" (exact `v`).
//!
//! Outcomes follow Jepsen: `ok` ([`PutOutcome::Acked`]), `fail` ([`PutOutcome::Failed`],
//! the put certainly did not happen: a 4xx) and `info` ([`PutOutcome::Indeterminate`]: a
//! timeout, a connection error, a 5xx, `503 quorum_failed`; it may or may not take effect).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// Microseconds since the start of the recording (any monotonic logical clock will do).
pub type Time = u64;

/// How a put ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// 200: the server stored the value at this version (on `W` servers).
    Acked { version: u64 },
    /// A definite refusal (4xx): the value was not stored.
    Failed,
    /// Timeout, connection error, 5xx: the value may or may not have been stored.
    Indeterminate,
}

/// How a get ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetOutcome {
    Found {
        version: u64,
        value: String,
    },
    /// 404: no such key (latest) or no such version (exact).
    NotFound,
    /// Anything else (503, timeout, connection error): says nothing.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    pub client: usize,
    pub key: String,
    /// Unique to this put across the whole history.
    pub value: String,
    pub invoked: Time,
    pub completed: Time,
    pub outcome: PutOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Get {
    pub client: usize,
    pub key: String,
    /// `None`: the latest version; `Some(v)`: exactly `v`.
    pub version: Option<u64>,
    pub invoked: Time,
    pub completed: Time,
    pub outcome: GetOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Put),
    Get(Get),
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(p) => &p.key,
            Event::Get(g) => &g.key,
        }
    }
}

/// Collects events from concurrent clients, timing them from its creation.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// The current time; take it before sending a request and after its answer.
    pub fn now(&self) -> Time {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }

    /// Number of events recorded so far.
    pub fn len(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events, in the order they were recorded.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

/// Versions of one key on one server, `(version, value)`, in any order.
pub type Listing = Vec<(u64, String)>;

/// What the cluster holds once the faults stopped and catch-up finished.
#[derive(Debug, Clone, Default)]
pub struct FinalState {
    /// Server name -> key -> that server's versions of the key (the keys it replicates).
    pub servers: BTreeMap<String, BTreeMap<String, Listing>>,
    /// Key -> its primary's name: whose listing must be gap-free.
    pub primaries: BTreeMap<String, String>,
    /// Key -> the other servers that must hold it (its preference list after the primary).
    /// Once catch-up is done each must list exactly the primary's versions (check
    /// [`Check::Diverged`]); empty when the test does not know or care.
    pub replicas: BTreeMap<String, Vec<String>>,
    /// (key, version) -> the value read through the gateway at the end (`None`: not
    /// readable). Check (a) requires an entry, with the acknowledged value, for every
    /// acknowledged put; a test that cannot read through the gateway leaves it empty and
    /// passes `CheckOptions::gateway_reads: false`.
    pub gateway_reads: BTreeMap<(String, u64), Option<String>>,
}

/// Which optional parts of the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Cross-client real-time check of (d): a get invoked after a put was acknowledged
    /// sees it (linearizable-latest). On by default.
    pub real_time: bool,
    /// Session check of (d): a client's read of version `v` raises its floor even when
    /// the put of `v` was never acknowledged. Off by default: the contract does not promise
    /// it. A version the primary stored but did not replicate yet (an indeterminate put) can
    /// be read from the primary and then be missing from every replica once the primary is
    /// killed, so a later read, answered by a replica, is older. Reads of acknowledged
    /// versions always raise the floor.
    pub floor_from_unacked_reads: bool,
    /// Whether check (a) requires [`FinalState::gateway_reads`] entries.
    pub gateway_reads: bool,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            real_time: true,
            floor_from_unacked_reads: false,
            gateway_reads: true,
        }
    }
}

/// The kinds of violation, by the check that finds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// (a) An acknowledged version is on no server with its value.
    LostAck,
    /// (a) An acknowledged version does not read back through the gateway.
    Unreadable,
    /// (b) One (key, version), two values.
    Fork,
    /// (c) The primary's listing is not `1..=latest`, or lacks a version a replica holds.
    Gap,
    /// (c) A value no possibly-successful put of that key wrote.
    Phantom,
    /// (c) One put's value at two versions.
    Duplicate,
    /// (c) After catch-up, a replica of a key does not hold exactly its primary's versions.
    Diverged,
    /// (d) A client read an older latest than it had seen.
    NonMonotonic,
    /// (d) A read missed a put acknowledged before it was invoked.
    Stale,
}

/// One violation, with the events that show it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub check: Check,
    pub detail: String,
    pub events: Vec<Event>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:?}: {}", self.check, self.detail)?;
        for event in &self.events {
            writeln!(f, "    {event:?}")?;
        }
        Ok(())
    }
}

/// The checker's answer.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// At most [`MAX_PER_CHECK`] of each kind.
    pub violations: Vec<Violation>,
    /// Violations found beyond those.
    pub dropped: usize,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Whether some violation is of kind `check`.
    pub fn has(&self, check: Check) -> bool {
        self.violations.iter().any(|v| v.check == check)
    }
}

/// At most this many violations of one kind are kept, so a broken run stays readable.
pub const MAX_PER_CHECK: usize = 20;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.violations.is_empty() {
            return writeln!(f, "no violations");
        }
        writeln!(f, "{} violation(s):", self.violations.len() + self.dropped)?;
        for v in &self.violations {
            write!(f, "  {v}")?;
        }
        if self.dropped > 0 {
            writeln!(f, "  ... and {} more of the same kinds", self.dropped)?;
        }
        Ok(())
    }
}

mod check;
pub use check::check;

#[cfg(test)]
mod tests;
