//! Catch-up: pulling from one peer, in a loop, the versions this server should hold and does
//! not. Cheap when there is nothing to do (one small request per interval), incremental (a
//! cursor into the peer's change sequence) and resumable (the cursor is committed with the
//! versions it covers).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use kv_common::replication::{ChangesResponse, MAX_CHANGES_PAGE};

use super::Shared;
use crate::store::{Cursor, ReplicaBatch, ReplicaRecord, Store, Versioned};

/// Longest pause after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until aborted. `start` is the saved cursor for this peer, if any.
pub async fn run(
    shared: Arc<Shared>,
    store: Store,
    peer: String,
    url: String,
    start: Option<(String, u64)>,
) {
    let (mut instance, mut seq) = start.unwrap_or_default();
    let mut failures = 0u32;
    loop {
        match pull(&shared, &store, &peer, &url, &mut instance, &mut seq).await {
            Ok(more) => {
                failures = 0;
                if more {
                    continue;
                }
                shared.set_progress(&peer, |p| p.caught_up_once = true);
                tokio::time::sleep(shared.catch_up_interval).await;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(%peer, %error, "catch-up pull failed; retrying");
                }
                shared.set_progress(&peer, |p| p.last_error = Some(error.clone()));
                let backoff = shared.catch_up_interval * failures.min(10);
                tokio::time::sleep(backoff.min(MAX_BACKOFF)).await;
            }
        }
    }
}

/// One page. Returns whether the peer has more right away.
async fn pull(
    shared: &Shared,
    store: &Store,
    peer: &str,
    url: &str,
    instance: &mut String,
    seq: &mut u64,
) -> Result<bool, String> {
    let frozen = shared.placement.load().state.frozen;
    let gained = shared
        .copy_base
        .load()
        .as_ref()
        .and_then(|base| base.gained_below(peer, instance, *seq, frozen));
    let page = fetch(shared, peer, url, *seq, gained).await?;
    if page.instance != *instance {
        // A new database behind that name (or the first pull): its sequence numbers mean
        // nothing to the old cursor. Start it over.
        if *seq != 0 {
            tracing::info!(%peer, old = %instance, new = %page.instance,
                "peer has a new database; reading it from the start");
        }
        *instance = page.instance;
        *seq = 0;
        return Ok(true);
    }
    if page.records.is_empty() && page.next == *seq {
        // Nothing new: the stored cursor is already this one. Storing it again would be a
        // commit and an fsync per peer every interval on an idle server, and would keep its
        // WAL from ever being idle (`store/checkpoint.rs`).
        // The progress is set all the same: after a restart it starts at 0 while the cursor
        // resumes from the database.
        shared.set_progress(peer, |p| {
            p.cursor = page.next;
            p.head = page.head;
            p.last_error = None;
        });
        return Ok(page.next < page.head);
    }
    let records = page
        .records
        .into_iter()
        .map(|change| ReplicaRecord {
            key: change.key.as_str().into(),
            stored: Versioned {
                version: change.version,
                value: change.value.get().into(),
                timestamp: change.timestamp,
            },
        })
        .collect();
    let outcome = store
        .replicate(ReplicaBatch {
            records,
            cursor: Some(Cursor {
                peer: peer.to_owned(),
                instance: instance.clone(),
                seq: page.next,
            }),
        })
        .await
        .map_err(|e| format!("storing pulled versions: {e}"))?;
    // Under writes a pull often finds a version or two before its push lands: a race, not
    // a miss, and at info it would say "caught up" every second. What is mostly new (a
    // server back from a stop, a lost push) is told.
    if outcome.stored > 0 {
        if is_real_catch_up(outcome.stored, outcome.duplicates) {
            tracing::info!(%peer, stored = outcome.stored, duplicates = outcome.duplicates,
                "caught up versions from a peer");
        } else {
            tracing::debug!(%peer, stored = outcome.stored, duplicates = outcome.duplicates,
                "pulled versions whose push had not landed yet");
        }
    }
    shared
        .metrics
        .pulled(peer, outcome.stored, outcome.duplicates);
    if shared.placement.load().state.next.is_some() {
        shared
            .copied_versions
            .fetch_add(outcome.stored, std::sync::atomic::Ordering::Relaxed);
    }
    *seq = page.next;
    shared.set_progress(peer, |p| {
        p.cursor = page.next;
        p.head = page.head;
        p.last_error = None;
    });
    Ok(page.next < page.head)
}

/// Whether a pulled page brought versions this server lacked for more than a moment: most
/// of the page was new, or many versions were.
fn is_real_catch_up(stored: u64, duplicates: u64) -> bool {
    stored >= duplicates || stored >= 100
}

/// `gained`: `(epoch, below)` from the copy base (`copy_base.rs`).
async fn fetch(
    shared: &Shared,
    peer: &str,
    url: &str,
    after: u64,
    gained: Option<(u64, u64)>,
) -> Result<ChangesResponse, String> {
    // `ring`: the peer must filter by rings at least as new as this server's (see
    // `Replication::check_feed_epoch`).
    let mut target = format!(
        "{url}/internal/changes?after={after}&limit={MAX_CHANGES_PAGE}&for={}&ring={}",
        percent_encode(&shared.me),
        shared.placement.load().state.latest_epoch()
    );
    if let Some((epoch, below)) = gained {
        target.push_str(&format!("&gained_epoch={epoch}&gained_below={below}"));
    }
    match shared.call_peer(peer, Method::GET, &target, None).await? {
        (StatusCode::OK, body) => {
            serde_json::from_slice(&body).map_err(|e| format!("unreadable change page: {e}"))
        }
        (status, body) => Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

/// Member names are DNS-like, but nothing forbids other characters: escape the query value.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_version_or_two_ahead_of_its_push_is_no_catch_up() {
        assert!(!super::is_real_catch_up(1, 600));
        assert!(!super::is_real_catch_up(3, 250));
        assert!(super::is_real_catch_up(736, 264));
        assert!(super::is_real_catch_up(2, 0));
        assert!(super::is_real_catch_up(100, 900));
    }

    #[test]
    fn names_are_escaped_for_the_query() {
        assert_eq!(super::percent_encode("kv-0"), "kv-0");
        assert_eq!(super::percent_encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
