//! The coordinator's IO: ask every server where it stands, [`decide`], do that one action.
//! [`Coordinator::step`] is one round (what the operator runs per reconcile);
//! [`Coordinator::run`] loops until the target ring is in force and clean (what
//! `kvstore ring apply` runs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use kv_common::replication::ReplicationStatus;
use kv_common::ring_config::{CleanupReport, RingMember, RingState, RingView};

use crate::client::HttpClient;
use crate::error::{Error, Result};
use crate::plan::{Action, Decision, Observed, Phase, Target, decide};

/// Maps a member's URL to the address to dial (identity unless set: tests and
/// simulators reach pods through local forwarders).
pub type UrlMap = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// What one round saw and did.
#[derive(Debug, Clone)]
pub struct Progress {
    pub phase: Phase,
    pub epoch: u64,
    pub next_epoch: Option<u64>,
    /// One line for humans: what was done or what is awaited.
    pub message: String,
    pub waiting_for: Vec<String>,
    pub copied_versions: u64,
    pub copied_servers: (usize, usize),
    /// Versions deleted by clean-up in this round.
    pub cleaned_versions: u64,
    /// The cluster's ring state as observed before the round acted (the most advanced any
    /// server reported): who must keep running (every member of `current` and `next`).
    pub observed: Option<RingState>,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }
}

/// Drives servers towards a target ring over HTTP.
#[derive(Clone)]
pub struct Coordinator {
    client: HttpClient,
    url_map: Option<UrlMap>,
}

impl Coordinator {
    /// `timeout` bounds each request to a server.
    pub fn new(timeout: Duration) -> Coordinator {
        Coordinator {
            client: HttpClient::new(timeout),
            url_map: None,
        }
    }

    pub fn with_url_map(mut self, map: UrlMap) -> Coordinator {
        self.url_map = Some(map);
        self
    }

    fn url(&self, member: &RingMember, path: &str) -> String {
        let base = match &self.url_map {
            Some(map) => map(&member.url),
            None => member.url.clone(),
        };
        format!("{}{path}", base.trim_end_matches('/'))
    }

    /// Asks every server named by `seeds`, the target, and any ring a server reports.
    pub async fn observe(&self, seeds: &[RingMember], target: &Target) -> Observed {
        let mut known: BTreeMap<String, RingMember> = BTreeMap::new();
        for m in seeds.iter().chain(&target.members) {
            known.entry(m.name.clone()).or_insert_with(|| m.clone());
        }
        let mut observed = Observed::default();
        // Servers may name servers the seeds do not: ask until nobody new shows up.
        loop {
            let ask: Vec<RingMember> = known
                .values()
                .filter(|m| !observed.views.contains_key(&m.name))
                .cloned()
                .collect();
            if ask.is_empty() {
                break;
            }
            let answers = futures::future::join_all(ask.iter().map(|m| async move {
                let view = self
                    .call_json::<RingView>(Method::GET, m, "/internal/ring")
                    .await;
                let status = self
                    .call_json::<ReplicationStatus>(Method::GET, m, "/internal/status")
                    .await;
                (m.name.clone(), view, status)
            }))
            .await;
            for (name, view, status) in answers {
                if let Ok(view) = &view {
                    for m in view.state.all_members() {
                        known.entry(m.name.clone()).or_insert(m);
                    }
                }
                observed.views.insert(name.clone(), view);
                observed.statuses.insert(name, status);
            }
        }
        observed
    }

    /// One round: observe, decide, act. Safe to call from anywhere at any time.
    pub async fn step(&self, seeds: &[RingMember], target: &Target) -> Result<Progress> {
        let observed = self.observe(seeds, target).await;
        let decision = decide(&observed, target).map_err(Error::Plan)?;
        // Members are dialled where the seeds and the target say, as in `observe`: the
        // ring states carry the URLs members had when those rings were made, and a server
        // restarted since (`kvstore up` on new free ports) is elsewhere now.
        let mut dial: BTreeMap<&str, &str> = BTreeMap::new();
        for m in seeds.iter().chain(&target.members) {
            dial.entry(&m.name).or_insert(&m.url);
        }
        let at = |m: &RingMember| RingMember {
            name: m.name.clone(),
            url: dial
                .get(m.name.as_str())
                .map_or_else(|| m.url.clone(), |u| (*u).to_owned()),
        };
        self.act(decision, observed.cluster_state().cloned(), at)
            .await
    }

    async fn act(
        &self,
        decision: Decision,
        observed: Option<RingState>,
        at: impl Fn(&RingMember) -> RingMember,
    ) -> Result<Progress> {
        let mut progress = Progress {
            phase: decision.phase,
            epoch: decision.epoch,
            next_epoch: decision.next_epoch,
            message: String::new(),
            waiting_for: Vec::new(),
            copied_versions: decision.copied_versions,
            copied_servers: decision.copied_servers,
            cleaned_versions: 0,
            observed,
        };
        match decision.action {
            Action::Done => progress.message = format!("ring epoch {} in force", decision.epoch),
            Action::Wait {
                reason,
                waiting_for,
            } => {
                progress.message = format!("waiting: {reason}");
                progress.waiting_for = waiting_for;
            }
            Action::Push {
                state,
                required,
                best_effort,
            } => {
                let body = serde_json::to_vec(&state)
                    .map_err(|e| Error::Plan(format!("ring state: {e}")))?;
                let required: Vec<RingMember> = required.iter().map(&at).collect();
                let best_effort: Vec<RingMember> = best_effort.iter().map(&at).collect();
                let pushes = required
                    .iter()
                    .map(|m| (m, true))
                    .chain(best_effort.iter().map(|m| (m, false)));
                let results = futures::future::join_all(pushes.map(|(m, needed)| {
                    let body = body.clone();
                    async move { (m, needed, self.put_ring(m, body).await) }
                }))
                .await;
                let mut failed = Vec::new();
                for (member, needed, result) in results {
                    if let Err(why) = result {
                        tracing::warn!(server = %member.name, %why, "could not push the ring state");
                        if needed {
                            failed.push(format!("{} ({why})", member.name));
                        }
                    }
                }
                let (epoch, next, frozen) = state.order();
                let what = match (next, frozen) {
                    (0, _) => format!("ring epoch {epoch} put in force"),
                    (next, false) => format!("ring epoch {next} announced (current {epoch})"),
                    (next, true) => format!("writes of moving keys paused for epoch {next}"),
                };
                if failed.is_empty() {
                    progress.message = what;
                } else {
                    progress.message = format!("waiting: {what}, not yet taken by every server");
                    progress.waiting_for = failed;
                }
            }
            Action::Cleanup(members) => {
                let members: Vec<RingMember> = members.iter().map(&at).collect();
                let results = futures::future::join_all(members.iter().map(|m| async move {
                    (
                        m,
                        self.call_json::<CleanupReport>(Method::POST, m, "/internal/cleanup")
                            .await,
                    )
                }))
                .await;
                let mut failed = Vec::new();
                for (member, result) in results {
                    match result {
                        Ok(report) => {
                            tracing::info!(server = %member.name, keys = report.keys_deleted,
                                versions = report.versions_deleted, "cleaned up keys it no longer holds");
                            progress.cleaned_versions += report.versions_deleted;
                        }
                        Err(why) => failed.push(format!("{} ({why})", member.name)),
                    }
                }
                progress.message = format!(
                    "deleted {} versions servers no longer hold",
                    progress.cleaned_versions
                );
                progress.waiting_for = failed;
            }
        }
        Ok(progress)
    }

    /// Rounds until the target is in force and clean, or `timeout`. `report` sees every round.
    pub async fn run(
        &self,
        seeds: &[RingMember],
        target: &Target,
        poll: Duration,
        timeout: Duration,
        mut report: impl FnMut(&Progress),
    ) -> Result<Progress> {
        let start = Instant::now();
        loop {
            let progress = match self.step(seeds, target).await {
                Ok(progress) => progress,
                // Nobody answered: a restart of everything may be under way; keep trying.
                Err(Error::Plan(why)) if start.elapsed() < timeout => {
                    tracing::warn!(%why, "no decision this round");
                    tokio::time::sleep(poll).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            report(&progress);
            if progress.done() {
                return Ok(progress);
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    after: timeout,
                    phase: progress.phase.as_str(),
                    message: progress.message,
                    waiting_for: progress.waiting_for,
                });
            }
            // Acting rounds go on at once; waiting ones (every wait names whom it waits
            // for) give the servers time.
            if !progress.waiting_for.is_empty() {
                tokio::time::sleep(poll).await;
            }
        }
    }

    /// A bodiless `method` request whose 200 answer is JSON.
    async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        member: &RingMember,
        path: &str,
    ) -> std::result::Result<T, String> {
        let (status, body) = self
            .client
            .call(method, &self.url(member, path), None)
            .await?;
        parse(status, &body)
    }

    /// PUTs a ring state. A 409 means the server is already past it: fine, the next round
    /// sees where it is.
    async fn put_ring(
        &self,
        member: &RingMember,
        body: Vec<u8>,
    ) -> std::result::Result<(), String> {
        let (status, answer) = self
            .client
            .call(Method::PUT, &self.url(member, "/internal/ring"), Some(body))
            .await?;
        match status {
            StatusCode::OK | StatusCode::CONFLICT => Ok(()),
            other => Err(format!("answered {other}: {}", snippet(&answer))),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    status: StatusCode,
    body: &[u8],
) -> std::result::Result<T, String> {
    if status != StatusCode::OK {
        return Err(format!("answered {status}: {}", snippet(body)));
    }
    serde_json::from_slice(body).map_err(|e| format!("unreadable answer: {e}"))
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}
