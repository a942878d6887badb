//! Copying only what a server gains when `next` is announced (docs/rebalancing.md, "Copy").
//!
//! Announcing `next` restarts every catch-up cursor at the start of each peer's feed: the keys
//! this server gains were skipped by the filter it pulled with so far. But below the cursor it
//! had then, it already holds every version of the keys it holds under `current`: a cursor is
//! committed with the versions it covers, and every filter since its last reset took in
//! `current`'s keys. So up to that cursor (the *base*) the copy asks a peer only for the keys
//! it gains (held under `next`, not under `current`); past it, the usual filter. Without the
//! base, a server in both rings received again every version it held, from every replica,
//! through its writer thread, while serving.
//!
//! A server joining with `next` (not in `current`) has no cursor to start from, but until
//! the switch it assigns no version: everything in its feed was sent to it, by a key's
//! primary (dual write) or copied from a key's holders, which this server reads too. So while
//! the copy runs (not yet frozen), a joiner's whole feed is read for gained keys only. Once
//! frozen, the usual filter: from the switch on a joiner is a primary like any other, and a
//! page asked before the switch must not skip versions it assigned after.
//!
//! Pure: `adopt.rs` persists the base (`kv_meta` entry [`COPY_BASE_META`], in the transaction
//! that resets the cursors), `catch_up.rs` sends it, `http/internal.rs` applies it.

use std::collections::{BTreeMap, BTreeSet};

use kv_common::ring_config::RingState;
use serde::{Deserialize, Serialize};

/// `kv_meta` entry holding the [`CopyBase`] of the copy under way, as JSON (`null` when none).
pub const COPY_BASE_META: &str = "copy_base";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyBase {
    /// The `current` epoch under which the cursors below were complete.
    pub epoch: u64,
    /// Per peer: the instance of the peer's database and this server's cursor into it when
    /// `next` was announced.
    pub cursors: BTreeMap<String, (String, u64)>,
    /// The members of `next` not in `current`: read for gained keys only until frozen.
    #[serde(default)]
    pub joiners: BTreeSet<String>,
}

/// `gained_below` for a whole feed (the query's counts stop at `i64::MAX`).
const WHOLE_FEED: u64 = i64::MAX as u64;

impl CopyBase {
    /// The base to copy with once `offered` is adopted over `own`.
    ///
    /// - No `next` offered: no copy, no base.
    /// - Another `current` (a server that missed a commit, or a new database): it resyncs
    ///   from the start, claiming nothing.
    /// - `next` announced over a stable state: this server's saved `cursors` (peer, instance,
    ///   seq), if it is `synced`: an unsynced server's saved cursors may be left from a ring
    ///   it no longer catches up under, and claim keys it does not hold.
    /// - Same `current`, `next` already known (frozen, or a new target replacing `next`): the
    ///   base `kept` so far, still true of the database (copying only adds to it), with the
    ///   joiners of the `next` offered.
    pub fn after_adopting(
        own: &RingState,
        offered: &RingState,
        synced: bool,
        kept: Option<&CopyBase>,
        cursors: &[(String, String, u64)],
    ) -> Option<CopyBase> {
        let next = offered.next.as_ref()?;
        if offered.current != own.current {
            return None;
        }
        let joiners: BTreeSet<String> = next
            .names()
            .into_iter()
            .filter(|name| !offered.current.contains(name))
            .map(str::to_owned)
            .collect();
        if own.next.is_some() {
            return kept
                .filter(|base| base.epoch == own.current.epoch)
                .map(|base| CopyBase {
                    joiners,
                    ..base.clone()
                });
        }
        if !synced {
            return None;
        }
        let cursors: BTreeMap<String, (String, u64)> = cursors
            .iter()
            .filter(|(_, _, seq)| *seq > 0)
            .map(|(peer, instance, seq)| (peer.clone(), (instance.clone(), *seq)))
            .collect();
        (!cursors.is_empty() || !joiners.is_empty()).then_some(CopyBase {
            epoch: own.current.epoch,
            cursors,
            joiners,
        })
    }

    /// What to ask peer `peer` (database `instance`) for a page after `after`, this server
    /// being `frozen` or not: `(epoch, below)` (only gained keys up to `below` under `current`
    /// epoch `epoch`), or `None` when the base says nothing there.
    pub fn gained_below(
        &self,
        peer: &str,
        instance: &str,
        after: u64,
        frozen: bool,
    ) -> Option<(u64, u64)> {
        if self.joiners.contains(peer) {
            return (!frozen).then_some((self.epoch, WHOLE_FEED));
        }
        let (base_instance, below) = self.cursors.get(peer)?;
        (base_instance == instance && after < *below).then_some((self.epoch, *below))
    }

    /// The stored form (`null` for none).
    pub fn to_meta(base: Option<&CopyBase>) -> String {
        serde_json::to_string(&base).unwrap_or_else(|_| "null".into())
    }

    /// Reads the stored form; anything unreadable is no base (a full copy, never a wrong one).
    pub fn from_meta(json: Option<&str>) -> Option<CopyBase> {
        json.and_then(|j| serde_json::from_str::<Option<CopyBase>>(j).ok().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::ring_state::tests::config as ring;

    fn cursors() -> Vec<(String, String, u64)> {
        vec![("b".into(), "ib".into(), 40), ("c".into(), "ic".into(), 0)]
    }

    #[test]
    fn announcing_next_over_a_synced_stable_state_takes_the_cursors() {
        let a = ring(3, &["a", "b", "c"]);
        let own = RingState::stable(a.clone());
        let announced = RingState {
            current: a,
            next: Some(ring(4, &["a", "b", "c", "d"])),
            frozen: false,
        };
        let base = CopyBase::after_adopting(&own, &announced, true, None, &cursors()).unwrap();
        // A cursor at 0 claims nothing.
        assert_eq!(base.epoch, 3);
        assert_eq!(base.cursors.len(), 1);
        assert_eq!(base.gained_below("b", "ib", 0, false), Some((3, 40)));
        assert_eq!(base.gained_below("b", "ib", 39, true), Some((3, 40)));
        // Past the base, or another database behind the name: the usual filter.
        assert_eq!(base.gained_below("b", "ib", 40, false), None);
        assert_eq!(base.gained_below("b", "other", 0, false), None);
        assert_eq!(base.gained_below("c", "ic", 0, false), None);
        // The joiner: its whole feed, whatever its database, until frozen.
        assert_eq!(base.joiners, ["d".to_owned()].into());
        assert_eq!(
            base.gained_below("d", "any", 1000, false),
            Some((3, i64::MAX as u64))
        );
        assert_eq!(base.gained_below("d", "any", 1000, true), None);
        // A one-member ring growing has no cursor, only a joiner.
        let alone = ring(3, &["a"]);
        let grow = RingState {
            current: alone.clone(),
            next: Some(ring(4, &["a", "b"])),
            frozen: false,
        };
        let base = CopyBase::after_adopting(&RingState::stable(alone), &grow, true, None, &[]);
        assert_eq!(base.unwrap().joiners, ["b".to_owned()].into());
        // Not synced: its saved cursors may be from another ring.
        assert_eq!(
            CopyBase::after_adopting(&own, &announced, false, None, &cursors()),
            None
        );
    }

    #[test]
    fn the_base_is_kept_while_current_stays_and_dropped_after() {
        let a = ring(3, &["a", "b", "c"]);
        let announced = RingState {
            current: a.clone(),
            next: Some(ring(4, &["a", "b", "c", "d"])),
            frozen: false,
        };
        let base = CopyBase {
            epoch: 3,
            cursors: [("b".to_owned(), ("ib".to_owned(), 40))].into(),
            joiners: ["d".to_owned()].into(),
        };
        // Frozen: the same base, whatever the cursors are now.
        let frozen = RingState {
            frozen: true,
            ..announced.clone()
        };
        let kept = CopyBase::after_adopting(&announced, &frozen, true, Some(&base), &[]);
        assert_eq!(kept.as_ref(), Some(&base));
        // Another target: the same cursors, that target's joiners.
        let retarget = RingState {
            next: Some(ring(5, &["a", "b", "e"])),
            ..announced.clone()
        };
        let kept = CopyBase::after_adopting(&announced, &retarget, true, Some(&base), &[]);
        assert_eq!(
            kept,
            Some(CopyBase {
                joiners: ["e".to_owned()].into(),
                ..base.clone()
            })
        );
        // Committed: nothing to copy.
        let committed = RingState::stable(ring(4, &["a", "b", "c", "d"]));
        assert_eq!(
            CopyBase::after_adopting(&announced, &committed, true, Some(&base), &cursors()),
            None
        );
        // A jump to another current with a next: a resync from the start.
        let jump = RingState {
            current: ring(4, &["a", "b", "c", "d"]),
            next: Some(ring(5, &["a", "b"])),
            frozen: false,
        };
        assert_eq!(
            CopyBase::after_adopting(&announced, &jump, true, Some(&base), &cursors()),
            None
        );
    }

    #[test]
    fn the_stored_form_reads_back_and_bad_text_is_no_base() {
        let base = CopyBase {
            epoch: 7,
            cursors: [("b".to_owned(), ("ib".to_owned(), 40))].into(),
            joiners: ["d".to_owned()].into(),
        };
        let json = CopyBase::to_meta(Some(&base));
        assert_eq!(CopyBase::from_meta(Some(&json)), Some(base));
        assert_eq!(CopyBase::from_meta(Some(&CopyBase::to_meta(None))), None);
        assert_eq!(CopyBase::from_meta(Some("{oops")), None);
        assert_eq!(CopyBase::from_meta(None), None);
    }
}
