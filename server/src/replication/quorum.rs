//! Counting confirmations: a put is answered once `quorum` servers, the primary included,
//! hold its version durably.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::oneshot;

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
    let mut acked = vec![me];
    if acked.len() >= quorum {
        return acked;
    }
    let mut pending: FuturesUnordered<_> = waits
        .into_iter()
        .map(|(name, confirmed)| async move { (name, confirmed.await.unwrap_or(false)) })
        .collect();
    let counting = async {
        while let Some((name, held)) = pending.next().await {
            if held {
                acked.push(name);
                if acked.len() >= quorum {
                    break;
                }
            } else if acked.len() + pending.len() < quorum {
                // Too many refusals: no point in waiting for the rest.
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, counting).await;
    acked
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
}
