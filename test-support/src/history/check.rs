//! The checks of a history against a final state; see the module above for what each one
//! means. Each collects its findings, then reports them with the events that show them.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Check, CheckOptions, Event, FinalState, Get, GetOutcome, MAX_PER_CHECK, Put, PutOutcome,
    Report, Time, Violation,
};

/// Where a (key, version) -> value observation came from.
#[derive(Debug, Clone)]
enum Source {
    Event(usize),
    Server(String),
    GatewayRead,
}

struct Checker<'a> {
    events: &'a [Event],
    state: &'a FinalState,
    options: CheckOptions,
    violations: Vec<Violation>,
}

/// Checks `events` (as recorded) against the `state` the cluster ended in.
pub fn check(events: &[Event], state: &FinalState, options: CheckOptions) -> Report {
    let mut c = Checker {
        events,
        state,
        options,
        violations: Vec::new(),
    };
    c.acked_are_durable();
    c.values_are_unique_and_written();
    c.listings_are_gap_free();
    c.replicas_converged();
    c.reads_are_fresh();
    let mut violations = c.violations;
    violations.sort_by_key(|v| v.check);
    let found = violations.len();
    let mut kept: BTreeMap<Check, usize> = BTreeMap::new();
    violations.retain(|v| {
        let n = kept.entry(v.check).or_default();
        *n += 1;
        *n <= MAX_PER_CHECK
    });
    let dropped = found - violations.len();
    Report {
        violations,
        dropped,
    }
}

impl Checker<'_> {
    /// Reports a violation about a whole key, shown by its acknowledged puts.
    fn report_key(&mut self, check: Check, detail: String, key: &str) {
        let events: Vec<usize> = self
            .acked()
            .filter(|(_, p, _)| p.key == key)
            .map(|(i, _, _)| i)
            .collect();
        self.report(check, detail, &events);
    }

    fn report(&mut self, check: Check, detail: String, events: &[usize]) {
        let events = events.iter().map(|&i| self.events[i].clone()).collect();
        self.violations.push(Violation {
            check,
            detail,
            events,
        });
    }

    fn puts(&self) -> impl Iterator<Item = (usize, &Put)> {
        self.events.iter().enumerate().filter_map(|(i, e)| match e {
            Event::Put(p) => Some((i, p)),
            Event::Get(_) => None,
        })
    }

    fn gets(&self) -> impl Iterator<Item = (usize, &Get)> {
        self.events.iter().enumerate().filter_map(|(i, e)| match e {
            Event::Get(g) => Some((i, g)),
            Event::Put(_) => None,
        })
    }

    fn acked(&self) -> impl Iterator<Item = (usize, &Put, u64)> {
        self.puts().filter_map(|(i, p)| match p.outcome {
            PutOutcome::Acked { version } => Some((i, p, version)),
            _ => None,
        })
    }

    /// (a)
    fn acked_are_durable(&mut self) {
        let mut found = Vec::new();
        for (i, put, version) in self.acked() {
            let holders: Vec<&str> = self
                .state
                .servers
                .iter()
                .filter(|(_, keys)| {
                    keys.get(&put.key).is_some_and(|listing| {
                        listing
                            .iter()
                            .any(|(v, value)| *v == version && *value == put.value)
                    })
                })
                .map(|(name, _)| name.as_str())
                .collect();
            if holders.is_empty() {
                found.push((
                    Check::LostAck,
                    format!(
                        "{} v{version} = {:?} was acknowledged but no server holds it",
                        put.key, put.value
                    ),
                    i,
                ));
            }
            if self.options.gateway_reads {
                let read = self.state.gateway_reads.get(&(put.key.clone(), version));
                if read != Some(&Some(put.value.clone())) {
                    let read = match read {
                        None => "was not read".to_owned(),
                        Some(None) => "was not found".to_owned(),
                        Some(Some(other)) => format!("read as {other:?}"),
                    };
                    found.push((
                        Check::Unreadable,
                        format!(
                            "{} v{version} = {:?} was acknowledged but through the gateway it {read}",
                            put.key, put.value
                        ),
                        i,
                    ));
                }
            }
        }
        for (check, detail, i) in found {
            self.report(check, detail, &[i]);
        }
    }

    /// Every observation of a value at a (key, version).
    fn observations(&self) -> Vec<(String, u64, String, Source)> {
        let mut seen = Vec::new();
        for (i, put, version) in self.acked() {
            seen.push((
                put.key.clone(),
                version,
                put.value.clone(),
                Source::Event(i),
            ));
        }
        for (i, get) in self.gets() {
            if let GetOutcome::Found { version, value } = &get.outcome {
                seen.push((get.key.clone(), *version, value.clone(), Source::Event(i)));
            }
        }
        for (server, keys) in &self.state.servers {
            for (key, listing) in keys {
                for (version, value) in listing {
                    let source = Source::Server(server.clone());
                    seen.push((key.clone(), *version, value.clone(), source));
                }
            }
        }
        for ((key, version), value) in &self.state.gateway_reads {
            if let Some(value) = value {
                seen.push((key.clone(), *version, value.clone(), Source::GatewayRead));
            }
        }
        seen
    }

    /// (b) and the value parts of (c).
    fn values_are_unique_and_written(&mut self) {
        let seen = self.observations();
        // (key, version) -> value -> sources
        type BySlot<'s> = BTreeMap<(&'s str, u64), BTreeMap<&'s str, Vec<&'s Source>>>;
        let mut by_slot: BySlot = BTreeMap::new();
        // value -> (key, version) -> sources
        let mut by_value: BTreeMap<&str, BTreeMap<(&str, u64), Vec<&Source>>> = BTreeMap::new();
        for (key, version, value, source) in &seen {
            by_slot
                .entry((key, *version))
                .or_default()
                .entry(value)
                .or_default()
                .push(source);
            by_value
                .entry(value)
                .or_default()
                .entry((key, *version))
                .or_default()
                .push(source);
        }
        let writers: BTreeMap<&str, (usize, &Put)> = self
            .puts()
            .map(|(i, p)| (p.value.as_str(), (i, p)))
            .collect();
        let mut found = Vec::new();
        for ((key, version), values) in &by_slot {
            if values.len() > 1 {
                let what: Vec<String> = values
                    .iter()
                    .map(|(value, sources)| format!("{value:?} from {}", describe(sources)))
                    .collect();
                let events = values.values().flat_map(|s| event_ids(s)).collect();
                found.push((
                    Check::Fork,
                    format!(
                        "{key} v{version} has {} values: {}",
                        values.len(),
                        what.join("; ")
                    ),
                    events,
                ));
            }
        }
        for (value, slots) in &by_value {
            let all_sources: Vec<&Source> = slots.values().flatten().copied().collect();
            match writers.get(value) {
                None => found.push((
                    Check::Phantom,
                    format!(
                        "{value:?} at {} was never written (seen from {})",
                        slots_text(slots),
                        describe(&all_sources)
                    ),
                    event_ids(&all_sources),
                )),
                Some((i, put)) => {
                    let wrong_key = slots.keys().any(|(key, _)| *key != put.key);
                    let failed = put.outcome == PutOutcome::Failed;
                    if wrong_key || failed {
                        let why = if failed {
                            "a put that failed definitely"
                        } else {
                            "a put of another key"
                        };
                        let mut events = vec![*i];
                        events.extend(event_ids(&all_sources));
                        found.push((
                            Check::Phantom,
                            format!("{value:?} at {} was written by {why}", slots_text(slots)),
                            events,
                        ));
                    }
                }
            }
            if slots.len() > 1 {
                let mut events: Vec<usize> =
                    writers.get(value).map(|(i, _)| *i).into_iter().collect();
                events.extend(event_ids(&all_sources));
                found.push((
                    Check::Duplicate,
                    format!("{value:?} was stored at {}", slots_text(slots)),
                    events,
                ));
            }
        }
        for (check, detail, mut events) in found {
            events.sort_unstable();
            events.dedup();
            self.report(check, detail, &events);
        }
    }

    /// (c): gap-free listings on the primaries.
    fn listings_are_gap_free(&mut self) {
        // key -> every version any server holds
        let mut held: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for keys in self.state.servers.values() {
            for (key, listing) in keys {
                held.entry(key)
                    .or_default()
                    .extend(listing.iter().map(|(v, _)| *v));
            }
        }
        for (_, put, version) in self.acked() {
            held.entry(&put.key).or_default().insert(version);
        }
        let mut found = Vec::new();
        for (key, versions) in &held {
            let Some(primary) = self.state.primaries.get(*key) else {
                found.push((
                    format!("{key} has versions {versions:?} but no primary is given"),
                    (*key).to_owned(),
                ));
                continue;
            };
            let listed: BTreeSet<u64> = self
                .state
                .servers
                .get(primary)
                .and_then(|keys| keys.get(*key))
                .map(|l| l.iter().map(|(v, _)| *v).collect())
                .unwrap_or_default();
            let latest = listed.last().copied().unwrap_or(0);
            let missing: Vec<u64> = (1..=latest).filter(|v| !listed.contains(v)).collect();
            if !missing.is_empty() {
                found.push((
                    format!("{key}: primary {primary} lists up to v{latest} without {missing:?}"),
                    (*key).to_owned(),
                ));
            }
            let elsewhere: Vec<u64> = versions.difference(&listed).copied().collect();
            if !elsewhere.is_empty() {
                found.push((
                    format!(
                        "{key}: primary {primary} lacks {elsewhere:?}, acknowledged or held by a replica"
                    ),
                    (*key).to_owned(),
                ));
            }
        }
        for (detail, key) in found {
            self.report_key(Check::Gap, detail, &key);
        }
    }

    /// (c): every replica of a key lists exactly what its primary lists, values included.
    fn replicas_converged(&mut self) {
        let mut found = Vec::new();
        for (key, replicas) in &self.state.replicas {
            let Some(primary) = self.state.primaries.get(key) else {
                continue;
            };
            let listing = |server: &str| -> BTreeSet<(u64, String)> {
                self.state
                    .servers
                    .get(server)
                    .and_then(|keys| keys.get(key))
                    .map(|l| l.iter().cloned().collect())
                    .unwrap_or_default()
            };
            let expected = listing(primary);
            for replica in replicas {
                let held = listing(replica);
                if held != expected {
                    let missing: Vec<u64> = expected.difference(&held).map(|(v, _)| *v).collect();
                    let extra: Vec<u64> = held.difference(&expected).map(|(v, _)| *v).collect();
                    found.push((
                        format!(
                            "{key}: replica {replica} lacks {missing:?} and has {extra:?} \
                             compared with primary {primary}"
                        ),
                        key.clone(),
                    ));
                }
            }
        }
        for (detail, key) in found {
            self.report_key(Check::Diverged, detail, &key);
        }
    }

    /// (d): session monotonic reads and real-time freshness. Sweeps, so that a long run's
    /// history (hundreds of thousands of events) checks in well under a second.
    fn reads_are_fresh(&mut self) {
        let mut found = Vec::new();
        // key -> version -> the put acknowledged at it
        let mut acked_at: BTreeMap<&str, BTreeMap<u64, usize>> = BTreeMap::new();
        // key -> acknowledged puts as (completed, version, event), by completion
        let mut acks_by_time: BTreeMap<&str, Vec<(Time, u64, usize)>> = BTreeMap::new();
        for (i, put, version) in self.acked() {
            acked_at.entry(&put.key).or_default().insert(version, i);
            acks_by_time
                .entry(&put.key)
                .or_default()
                .push((put.completed, version, i));
        }
        // Running maximum, so "newest acknowledged before t" is one binary search.
        let mut newest_by_time: BTreeMap<&str, Vec<(Time, u64, usize)>> = BTreeMap::new();
        for (key, mut acks) in acks_by_time {
            acks.sort_unstable();
            let mut best: Option<(u64, usize)> = None;
            let running = acks
                .into_iter()
                .map(|(t, v, i)| {
                    if best.is_none_or(|(b, _)| v > b) {
                        best = Some((v, i));
                    }
                    let (v, i) = best.expect("set above");
                    (t, v, i)
                })
                .collect();
            newest_by_time.insert(key, running);
        }

        // Session: per (client, key), what the client knew, by completion time.
        let mut sessions: BTreeMap<(usize, &str), Vec<usize>> = BTreeMap::new();
        for (i, e) in self.events.iter().enumerate() {
            let client = match e {
                Event::Put(p) => p.client,
                Event::Get(g) => g.client,
            };
            sessions.entry((client, e.key())).or_default().push(i);
        }
        for ((client, key), indices) in &sessions {
            let acks = acked_at.get(key);
            let mut knowledge: Vec<(Time, u64, usize)> = indices
                .iter()
                .filter_map(|&j| match &self.events[j] {
                    Event::Put(p) => match p.outcome {
                        PutOutcome::Acked { version } => Some((p.completed, version, j)),
                        _ => None,
                    },
                    Event::Get(g) => match g.outcome {
                        GetOutcome::Found { version, .. }
                            if self.options.floor_from_unacked_reads
                                || acks.is_some_and(|a| a.contains_key(&version)) =>
                        {
                            Some((g.completed, version, j))
                        }
                        _ => None,
                    },
                })
                .collect();
            knowledge.sort_unstable();
            let mut reads: Vec<(Time, usize, u64)> = indices
                .iter()
                .filter_map(|&i| match &self.events[i] {
                    Event::Get(g) if g.version.is_none() => {
                        latest_read(g).map(|v| (g.invoked, i, v))
                    }
                    _ => None,
                })
                .collect();
            reads.sort_unstable();
            let mut next = 0;
            let mut floor: Option<(u64, usize)> = None;
            for (invoked, i, read) in reads {
                while next < knowledge.len() && knowledge[next].0 <= invoked {
                    let (_, v, j) = knowledge[next];
                    if floor.is_none_or(|(f, _)| v > f) {
                        floor = Some((v, j));
                    }
                    next += 1;
                }
                if let Some((floor, j)) = floor
                    && read < floor
                {
                    found.push((
                        Check::NonMonotonic,
                        format!(
                            "client {client} read {key} latest as v{read} after it had seen v{floor}"
                        ),
                        vec![j, i],
                    ));
                }
            }
        }

        if self.options.real_time {
            for (i, get) in self.gets() {
                let Some(read) = latest_read(get) else {
                    continue;
                };
                let key = get.key.as_str();
                match get.version {
                    None => {
                        let Some(newest) = newest_by_time.get(key) else {
                            continue;
                        };
                        let n = newest.partition_point(|(t, _, _)| *t < get.invoked);
                        if n == 0 {
                            continue;
                        }
                        let (_, newest, j) = newest[n - 1];
                        if read < newest {
                            found.push((
                                Check::Stale,
                                format!(
                                    "{key} latest read as v{read}, but v{newest} was acknowledged before the read was sent"
                                ),
                                vec![j, i],
                            ));
                        }
                    }
                    Some(asked) => {
                        let Some(&j) = acked_at.get(key).and_then(|a| a.get(&asked)) else {
                            continue;
                        };
                        let acked_before = match &self.events[j] {
                            Event::Put(p) => p.completed < get.invoked,
                            Event::Get(_) => false,
                        };
                        if read == 0 && acked_before {
                            found.push((
                                Check::Stale,
                                format!(
                                    "{key} v{asked} was not found, but was acknowledged before the read was sent"
                                ),
                                vec![j, i],
                            ));
                        }
                    }
                }
            }
        }
        for (check, detail, events) in found {
            self.report(check, detail, &events);
        }
    }
}

/// The version a get answered (0: not found), or `None` when it says nothing.
fn latest_read(get: &Get) -> Option<u64> {
    match &get.outcome {
        GetOutcome::Found { version, .. } => Some(*version),
        GetOutcome::NotFound => Some(0),
        GetOutcome::Unavailable => None,
    }
}

fn event_ids(sources: &[&Source]) -> Vec<usize> {
    sources
        .iter()
        .filter_map(|s| match s {
            Source::Event(i) => Some(*i),
            _ => None,
        })
        .collect()
}

fn describe(sources: &[&Source]) -> String {
    let mut names: Vec<String> = sources
        .iter()
        .map(|s| match s {
            Source::Event(i) => format!("event {i}"),
            Source::Server(name) => format!("server {name}"),
            Source::GatewayRead => "the final gateway read".to_owned(),
        })
        .collect();
    names.dedup();
    names.join(", ")
}

fn slots_text<T>(slots: &BTreeMap<(&str, u64), T>) -> String {
    slots
        .keys()
        .map(|(key, version)| format!("{key} v{version}"))
        .collect::<Vec<_>>()
        .join(", ")
}
