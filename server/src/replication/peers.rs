//! The peer set follows the ring state: one sender and one puller towards every member of
//! `current` and `next` except this server, started and stopped as the state changes.
//!
//! A stopped task is awaited, not only aborted: a puller still running could commit a cursor
//! after the reset that was meant to replace it.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::sender::Push;
use super::{PUSH_QUEUE, Progress, Shared, catch_up, sender};

/// The tasks working towards one peer.
pub struct PeerTasks {
    url: String,
    sender: mpsc::Sender<Push>,
    push: JoinHandle<()>,
    /// `None` while stopped for a cursor reset.
    pull: Option<JoinHandle<()>>,
}

/// Stops every puller and waits until they are gone.
pub async fn stop_pullers(shared: &Shared) {
    let pulls: Vec<JoinHandle<()>> = {
        let mut peers = shared.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.values_mut().filter_map(|p| p.pull.take()).collect()
    };
    for pull in pulls {
        pull.abort();
        let _ = pull.await;
    }
}

/// Brings the tasks in line with the state: stops those of peers no longer in it (or whose
/// URL changed), starts the missing ones. New pullers start from `cursors` (`(peer,
/// instance, seq)`), or from the beginning.
pub async fn reconcile(shared: &Arc<Shared>, cursors: &[(String, String, u64)]) {
    let wanted = shared.peer_addresses();
    let gone: Vec<PeerTasks> = {
        let mut peers = shared.peers.lock().unwrap_or_else(|p| p.into_inner());
        let names: Vec<String> = peers
            .iter()
            .filter(|(name, tasks)| wanted.get(*name) != Some(&tasks.url))
            .map(|(name, _)| name.clone())
            .collect();
        names
            .into_iter()
            .filter_map(|name| peers.remove(&name))
            .collect()
    };
    for tasks in gone {
        tasks.push.abort();
        let _ = tasks.push.await;
        if let Some(pull) = tasks.pull {
            pull.abort();
            let _ = pull.await;
        }
    }
    let mut peers = shared.peers.lock().unwrap_or_else(|p| p.into_inner());
    let mut progress = shared.progress.lock().unwrap_or_else(|p| p.into_inner());
    progress.retain(|name, _| wanted.contains_key(name));
    shared
        .reach
        .retain(|name| wanted.contains_key(name), &shared.metrics);
    for (name, url) in &wanted {
        let tasks = peers.entry(name.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PUSH_QUEUE);
            let push = tokio::spawn(sender::run(shared.clone(), name.clone(), url.clone(), rx));
            PeerTasks {
                url: url.clone(),
                sender: tx,
                push,
                pull: None,
            }
        });
        if tasks.pull.is_none() {
            progress.insert(
                name.clone(),
                Progress {
                    url: url.clone(),
                    ..Progress::default()
                },
            );
            let start = cursors
                .iter()
                .find(|(peer, _, _)| peer == name)
                .map(|(_, instance, seq)| (instance.clone(), *seq));
            // Pullers run even with R = 1: after a ring change they bring the keys this
            // server now holds; otherwise they only walk cursors forward.
            tasks.pull = Some(tokio::spawn(catch_up::run(
                shared.clone(),
                shared.store.clone(),
                name.clone(),
                url.clone(),
                start,
            )));
        }
    }
    shared.check_caught_up(&progress);
}

/// The push queues of `names` that have one.
pub fn senders(shared: &Shared, names: &[&str]) -> Vec<(String, mpsc::Sender<Push>)> {
    let peers = shared.peers.lock().unwrap_or_else(|p| p.into_inner());
    names
        .iter()
        .filter_map(|name| {
            peers
                .get(*name)
                .map(|t| ((*name).to_owned(), t.sender.clone()))
        })
        .collect()
}

/// Stops every task at once (shutdown).
pub fn abort_all(shared: &Shared) {
    let peers = shared.peers.lock().unwrap_or_else(|p| p.into_inner());
    for tasks in peers.values() {
        tasks.push.abort();
        if let Some(pull) = &tasks.pull {
            pull.abort();
        }
    }
}
