//! Adopting a ring state (`PUT /internal/ring`, gossip) and the clean-up after a commit.
//!
//! Adopting is durable before it is visible: the state (and, when copying starts over, the
//! reset of every catch-up cursor) commits in one transaction, then the placement is swapped
//! under the freeze lock, then the peer tasks follow the new members.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kv_common::ring_config::{CleanupReport, Placement, RingState};

use super::copy_base::{COPY_BASE_META, CopyBase};
use super::ring_state::{self, Change, Decision};
use super::{RING_META, Shared, peers};
use crate::error::{Error, Result};
use crate::store::MetaUpdate;

/// Keys read per clean-up step.
const CLEANUP_PAGE: u32 = 1000;

/// What became of an offered state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// Above this server's state: it is now this server's, durably.
    Adopted,
    /// This server's state already.
    Same,
    /// Below (or conflicting with) this server's state; why.
    Refused(String),
}

pub async fn adopt(shared: &Arc<Shared>, offered: RingState) -> Result<Adoption> {
    offered.validate().map_err(Error::InvalidRing)?;
    let _one_at_a_time = shared.adopting.lock().await;
    let own = shared.placement.load_full();
    let change = match ring_state::decide(&own.state, &offered) {
        Decision::Same => return Ok(Adoption::Same),
        Decision::Refuse(why) => return Ok(Adoption::Refused(why)),
        Decision::Adopt(change) => change,
    };
    let Change {
        new_current,
        new_next,
    } = change;
    // A new epoch of the same placement (a pin) leaves no key behind to clean up,
    // and a synced database is complete for it.
    let same_keys = own.state.next.is_none() && own.state.current.same_placement(&offered.current);
    // Copied for the ring now committed: this database already holds everything it must.
    // So does a synced one given the same placement under a new epoch (the coordinator
    // pinning a flags-derived epoch 0 as epoch 1): the same keys, nothing to fetch.
    let copied_for_current = new_current
        && ((shared.copied.load(Ordering::Relaxed)
            && own.state.next.as_ref().is_some_and(|n| {
                n.epoch == offered.current.epoch && n.same_placement(&offered.current)
            }))
            || (same_keys && shared.synced.load(Ordering::Relaxed)));
    let resync = new_current && !copied_for_current;
    let reset = new_next || resync;
    if reset {
        peers::stop_pullers(shared).await;
    }
    // Read once the pullers are stopped: no cursor moves under it. Unreadable means no base,
    // so a full copy.
    let saved = match new_next && own.state.next.is_none() {
        true => shared.store.cursors().await.unwrap_or_default(),
        false => Vec::new(),
    };
    let kept = shared.copy_base.load_full();
    let copy_base = CopyBase::after_adopting(
        &own.state,
        &offered,
        shared.synced.load(Ordering::Relaxed),
        kept.as_deref(),
        &saved,
    );
    let json = serde_json::to_string(&offered)
        .map_err(|e| Error::Internal(format!("ring state does not serialize: {e}")))?;
    let mut entries = vec![(ring_state::RING_STATE_META.to_owned(), json)];
    if copy_base.as_ref() != kept.as_deref() {
        entries.push((
            COPY_BASE_META.to_owned(),
            CopyBase::to_meta(copy_base.as_ref()),
        ));
    }
    if new_current {
        if !same_keys {
            entries.push((ring_state::CLEANUP_PENDING_META.to_owned(), "true".into()));
        }
        if copied_for_current {
            entries.push((
                RING_META.to_owned(),
                ring_state::fingerprint(&offered.current),
            ));
        }
    }
    let placement = Arc::new(Placement::new(offered.clone()));
    let drained = shared.freeze.write().await;
    let persisted = shared
        .store
        .set_metas(MetaUpdate {
            entries,
            clear_cursors: reset,
        })
        .await;
    if let Err(error) = persisted {
        drop(drained);
        // Nothing changed: the pullers go on from their saved cursors.
        let cursors = shared.store.cursors().await.unwrap_or_default();
        peers::reconcile(shared, &cursors).await;
        return Err(error);
    }
    shared.placement.store(placement);
    let based = copy_base.as_ref().map_or(0, |b| b.cursors.len());
    shared.copy_base.store(copy_base.map(Arc::new));
    // Under the write guard no put checked under the old state is uncommitted: the head
    // read now covers every version a moving key got here.
    let frozen_head = match offered.frozen {
        true if own.state.frozen => shared.frozen_head.load(Ordering::Relaxed),
        true => shared.store.head().await?,
        false => super::NOT_FROZEN,
    };
    shared.frozen_head.store(frozen_head, Ordering::Relaxed);
    if new_next {
        shared.copied.store(false, Ordering::Relaxed);
        shared.copied_versions.store(0, Ordering::Relaxed);
    }
    if new_current {
        shared.synced.store(copied_for_current, Ordering::Relaxed);
        if !same_keys {
            shared.cleanup_pending.store(true, Ordering::Relaxed);
        }
    }
    drop(drained);
    shared.metrics.ring_epoch.set(offered.current.epoch as i64);
    tracing::info!(
        from_epoch = own.state.current.epoch,
        from_next = ?own.state.next.as_ref().map(|n| n.epoch),
        epoch = offered.current.epoch,
        next = ?offered.next.as_ref().map(|n| n.epoch),
        frozen = offered.frozen,
        resync,
        copy_base_peers = based,
        "adopted a ring state"
    );
    let cursors = if reset {
        Vec::new()
    } else {
        shared.store.cursors().await?
    };
    peers::reconcile(shared, &cursors).await;
    Ok(Adoption::Adopted)
}

pub async fn cleanup(shared: &Arc<Shared>) -> Result<CleanupReport> {
    // No adoption meanwhile: a `next` announced now could name keys being deleted.
    let _one_at_a_time = shared.adopting.lock().await;
    let placement = shared.placement.load_full();
    if let Some(next) = &placement.state.next {
        return Err(Error::TransitionUnderway { next: next.epoch });
    }
    let store = &shared.store;
    let mut report = CleanupReport {
        name: shared.me.clone(),
        epoch: placement.epoch(),
        ..CleanupReport::default()
    };
    let mut after = String::new();
    loop {
        let page = store.keys_after(&after, CLEANUP_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.clone();
        let doomed: Vec<Arc<str>> = ring_state::not_held(&placement, &shared.me, page)
            .into_iter()
            .map(Arc::from)
            .collect();
        if doomed.is_empty() {
            continue;
        }
        report.keys_deleted += doomed.len() as u64;
        report.versions_deleted += store.delete_keys(doomed).await?;
    }
    store
        .set_meta(ring_state::CLEANUP_PENDING_META, "false")
        .await?;
    shared.cleanup_pending.store(false, Ordering::Relaxed);
    shared
        .metrics
        .cleanup_deleted_versions
        .inc_by(report.versions_deleted);
    tracing::info!(
        epoch = report.epoch,
        keys = report.keys_deleted,
        versions = report.versions_deleted,
        "cleaned up keys this server no longer holds"
    );
    Ok(report)
}
