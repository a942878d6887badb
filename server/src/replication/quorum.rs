//! Counting confirmations: a put is answered once `quorum` servers, the primary included,
//! hold its version durably.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::oneshot;

/// Servers of one preference list, and how many of them must hold the version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub members: Vec<String>,
    pub needed: usize,
}

impl Group {
    fn met(&self, acked: &[String]) -> bool {
        acked.iter().filter(|a| self.members.contains(a)).count() >= self.needed
    }

    /// Whether the group can still be met once the `pending` peers answer.
    fn reachable(&self, acked: &[String], pending: &[String]) -> bool {
        let could = acked
            .iter()
            .chain(pending)
            .filter(|a| self.members.contains(a))
            .count();
        could >= self.needed
    }
}

/// Whether `acked` meets every group.
pub fn met(groups: &[Group], acked: &[String]) -> bool {
    groups.iter().all(|g| g.met(acked))
}

/// Waits until `quorum` servers hold the version: `me` (the primary, which committed it before
/// asking) plus every peer whose `waits` entry answers `true`. Stops early once the quorum is
/// reached, once it can no longer be reached, or at `timeout`. Returns who confirmed, `me`
/// first; fewer than `quorum` names means the quorum failed. Peers not waited for keep
/// receiving the version in the background.
pub async fn wait(
    me: String,
    quorum: usize,
    waits: Vec<(String, oneshot::Receiver<bool>)>,
    timeout: Duration,
) -> Vec<String> {
    let members = std::iter::once(me.clone())
        .chain(waits.iter().map(|(name, _)| name.clone()))
        .collect();
    let group = Group {
        members,
        needed: quorum,
    };
    wait_joint(me, &[group], waits, timeout).await.acked
}

/// How a wait for confirmations ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Who holds the version, the primary first.
    pub acked: Vec<String>,
    /// Peers still silent when the timeout struck (empty when the wait ended earlier): the
    /// primary counts them unreachable until they answer again (`reach.rs`).
    pub silent: Vec<String>,
}

/// Like [`wait`], for several preference lists at once (during a ring transition, the key's
/// list under the current ring and under the next): done when every group has its count,
/// failed as soon as one cannot get it any more. [`met`] tells which; the tally also says who
/// stayed silent until the timeout.
pub async fn wait_joint(
    me: String,
    groups: &[Group],
    waits: Vec<(String, oneshot::Receiver<bool>)>,
    timeout: Duration,
) -> Tally {
    let mut acked = vec![me];
    if met(groups, &acked) {
        return Tally {
            acked,
            silent: Vec::new(),
        };
    }
    let mut waiting: Vec<String> = waits.iter().map(|(name, _)| name.clone()).collect();
    let mut pending: FuturesUnordered<_> = waits
        .into_iter()
        .map(|(name, confirmed)| async move { (name, confirmed.await.unwrap_or(false)) })
        .collect();
    let counting = async {
        while let Some((name, held)) = pending.next().await {
            waiting.retain(|w| *w != name);
            if held {
                acked.push(name);
                if met(groups, &acked) {
                    break;
                }
            } else if !groups.iter().all(|g| g.reachable(&acked, &waiting)) {
                // Too many refusals: no point in waiting for the rest.
                break;
            }
        }
    };
    let timed_out = tokio::time::timeout(timeout, counting).await.is_err();
    Tally {
        acked,
        silent: if timed_out { waiting } else { Vec::new() },
    }
}

/// Whether every group can still be met with the servers `reachable` says answer (the
/// primary `me` always does): if not, a put would be stored here and confirmed by too few,
/// so the primary refuses it before storing anything.
pub fn possible(groups: &[Group], me: &str, reachable: impl Fn(&str) -> bool) -> bool {
    groups.iter().all(|g| {
        g.members
            .iter()
            .filter(|m| *m == me || reachable(m))
            .count()
            >= g.needed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Waits = Vec<(String, oneshot::Receiver<bool>)>;

    fn peers(n: usize) -> (Vec<oneshot::Sender<bool>>, Waits) {
        (0..n)
            .map(|i| {
                let (tx, rx) = oneshot::channel();
                (tx, (format!("p{i}"), rx))
            })
            .unzip()
    }

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn quorum_of_one_needs_no_peer() {
        let (_senders, waits) = peers(2);
        assert_eq!(wait("me".into(), 1, waits, LONG).await, ["me"]);
    }

    #[tokio::test]
    async fn answers_at_the_first_confirmation_that_makes_the_quorum() {
        let (mut senders, waits) = peers(2);
        // p1 confirms; p0 never answers: W = 2 is met without it.
        senders.remove(1).send(true).unwrap();
        let acked = wait("me".into(), 2, waits, LONG).await;
        assert_eq!(acked, ["me", "p1"]);
        drop(senders);
    }

    #[tokio::test]
    async fn refusals_end_the_wait_early_and_fail_the_quorum() {
        let (senders, waits) = peers(2);
        for s in senders {
            s.send(false).unwrap();
        }
        let started = std::time::Instant::now();
        let acked = wait("me".into(), 2, waits, LONG).await;
        assert_eq!(acked, ["me"]);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_dropped_sender_counts_as_a_refusal() {
        let (senders, waits) = peers(1);
        drop(senders);
        assert_eq!(wait("me".into(), 2, waits, LONG).await, ["me"]);
    }

    #[tokio::test]
    async fn silence_fails_at_the_timeout_with_whoever_confirmed() {
        let (mut senders, waits) = peers(3);
        senders.remove(0).send(true).unwrap();
        let acked = wait("me".into(), 3, waits, Duration::from_millis(50)).await;
        assert_eq!(acked, ["me", "p0"]);
        drop(senders);
    }

    fn group(members: &[&str], needed: usize) -> Group {
        Group {
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            needed,
        }
    }

    #[tokio::test]
    async fn a_joint_quorum_needs_both_lists() {
        // Current list me, p0, p1; next list p1, p2 (me not in it): W = 2 in each.
        let groups = [group(&["me", "p0", "p1"], 2), group(&["p1", "p2"], 2)];
        let (mut senders, waits) = peers(3);
        senders.remove(0).send(true).unwrap(); // p0: current list met, next list not
        let acked = wait_joint("me".into(), &groups, waits, Duration::from_millis(50))
            .await
            .acked;
        assert_eq!(acked, ["me", "p0"]);
        assert!(!met(&groups, &acked));

        let (senders, waits) = peers(3);
        for s in senders {
            s.send(true).unwrap();
        }
        let acked = wait_joint("me".into(), &groups, waits, LONG).await.acked;
        assert!(met(&groups, &acked), "{acked:?}");
        assert!(acked.contains(&"p1".to_owned()) && acked.contains(&"p2".to_owned()));
    }

    #[tokio::test]
    async fn a_joint_quorum_fails_early_when_one_list_cannot_make_it() {
        let groups = [group(&["me", "p0", "p1"], 2), group(&["p1", "p2"], 2)];
        let (mut senders, waits) = peers(3);
        // p2 refuses: the next list can no longer reach 2, whatever p0 and p1 say.
        senders.remove(2).send(false).unwrap();
        let started = std::time::Instant::now();
        let acked = wait_joint("me".into(), &groups, waits, LONG).await.acked;
        assert!(!met(&groups, &acked));
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(senders);
    }

    #[tokio::test]
    async fn all_three_when_asked_for_three() {
        let (senders, waits) = peers(2);
        for s in senders {
            s.send(true).unwrap();
        }
        let mut acked = wait("me".into(), 3, waits, LONG).await;
        acked[1..].sort();
        assert_eq!(acked, ["me", "p0", "p1"]);
    }

    #[tokio::test]
    async fn the_wait_names_the_peers_silent_at_the_timeout_only() {
        let (mut senders, waits) = peers(3);
        senders.remove(0).send(true).unwrap();
        let groups = [group(&["me", "p0", "p1", "p2"], 4)];
        let ended = wait_joint("me".into(), &groups, waits, Duration::from_millis(50)).await;
        assert_eq!(ended.acked, ["me", "p0"]);
        let mut silent = ended.silent;
        silent.sort();
        assert_eq!(silent, ["p1", "p2"]);
        drop(senders);

        // Met before the timeout: the peers not waited for are not silent, only unasked.
        let (mut senders, waits) = peers(2);
        senders.remove(0).send(true).unwrap();
        let groups = [group(&["me", "p0", "p1"], 2)];
        let ended = wait_joint("me".into(), &groups, waits, LONG).await;
        assert_eq!((ended.acked.len(), ended.silent.len()), (2, 0));
        drop(senders);
    }

    #[test]
    fn a_quorum_is_possible_only_with_enough_reachable_members() {
        let groups = [group(&["me", "p0", "p1"], 2)];
        assert!(possible(&groups, "me", |_| true));
        assert!(possible(&groups, "me", |p| p == "p1"));
        assert!(!possible(&groups, "me", |_| false));
        // W = 1 needs no peer at all.
        assert!(possible(&[group(&["me", "p0"], 1)], "me", |_| false));
        // During a transition both lists must be reachable; me may be in neither.
        let joint = [group(&["me", "p0", "p1"], 2), group(&["p1", "p2"], 2)];
        assert!(possible(&joint, "me", |p| p != "p0"));
        assert!(!possible(&joint, "me", |p| p != "p2"));
    }
}
