//! Small hand-built histories: one valid, then one per violation the checker must find.

use super::*;

const S: [&str; 3] = ["s0", "s1", "s2"];

fn put(client: usize, key: &str, value: &str, at: (Time, Time), outcome: PutOutcome) -> Event {
    Event::Put(Put {
        client,
        key: key.into(),
        value: value.into(),
        invoked: at.0,
        completed: at.1,
        outcome,
    })
}

fn acked(client: usize, key: &str, value: &str, at: (Time, Time), version: u64) -> Event {
    put(client, key, value, at, PutOutcome::Acked { version })
}

fn get(
    client: usize,
    key: &str,
    version: Option<u64>,
    at: (Time, Time),
    outcome: GetOutcome,
) -> Event {
    Event::Get(Get {
        client,
        key: key.into(),
        version,
        invoked: at.0,
        completed: at.1,
        outcome,
    })
}

fn found(version: u64, value: &str) -> GetOutcome {
    GetOutcome::Found {
        version,
        value: value.into(),
    }
}

/// Every server holds `keys` (key -> versions), s0 is every key's primary, and the final
/// gateway read of every held version answers its value.
fn everywhere(keys: &[(&str, &[(u64, &str)])]) -> FinalState {
    let listing: BTreeMap<String, Listing> = keys
        .iter()
        .map(|(k, vs)| {
            let vs = vs.iter().map(|(v, x)| (*v, (*x).to_owned())).collect();
            ((*k).to_owned(), vs)
        })
        .collect();
    let mut state = FinalState::default();
    for server in S {
        state.servers.insert(server.into(), listing.clone());
    }
    for (key, versions) in &listing {
        state.primaries.insert(key.clone(), "s0".into());
        for (v, x) in versions {
            state
                .gateway_reads
                .insert((key.clone(), *v), Some(x.clone()));
        }
    }
    state
}

fn run(events: &[Event], state: &FinalState) -> Report {
    check(events, state, CheckOptions::default())
}

fn assert_only(report: &Report, checks: &[Check]) {
    let mut got: Vec<Check> = report.violations.iter().map(|v| v.check).collect();
    got.dedup();
    assert_eq!(got, checks, "{report}");
}

/// Two clients on two keys, with every outcome: what a correct cluster may produce.
fn valid() -> (Vec<Event>, FinalState) {
    let events = vec![
        acked(0, "a", "a1", (0, 10), 1),
        // Concurrent with the put of a2: may see either.
        get(1, "a", None, (12, 14), found(1, "a1")),
        acked(0, "a", "a2", (11, 20), 2),
        get(1, "a", None, (21, 25), found(2, "a2")),
        // Timed out, yet took effect: its value may be read.
        put(1, "a", "a3", (26, 40), PutOutcome::Indeterminate),
        get(0, "a", Some(3), (41, 42), found(3, "a3")),
        // Timed out and never took effect.
        put(0, "b", "b-lost", (0, 30), PutOutcome::Indeterminate),
        // Refused: never stored.
        put(0, "b", "b-refused", (31, 32), PutOutcome::Failed),
        get(1, "b", None, (31, 33), GetOutcome::NotFound),
        acked(1, "b", "b1", (34, 40), 1),
        get(0, "b", None, (41, 45), GetOutcome::Unavailable),
        get(0, "b", Some(1), (46, 47), found(1, "b1")),
        get(0, "b", None, (48, 49), found(1, "b1")),
        get(1, "a", None, (50, 51), found(3, "a3")),
    ];
    let state = everywhere(&[
        ("a", &[(1, "a1"), (2, "a2"), (3, "a3")]),
        ("b", &[(1, "b1")]),
    ]);
    (events, state)
}

#[test]
fn history_valid_passes() {
    let (events, state) = valid();
    let report = run(&events, &state);
    assert!(report.is_ok(), "{report}");
    // A replica may lack a key it does not replicate, and a recorder's events check too.
    let mut state = state;
    state.servers.get_mut("s2").unwrap().remove("b");
    let recorder = Recorder::new();
    for e in events {
        recorder.record(e);
    }
    assert_eq!(recorder.len(), 14);
    assert!(run(&recorder.events(), &state).is_ok());
}

#[test]
fn history_lost_ack_is_reported() {
    let (events, mut state) = valid();
    // a2 vanished from every server (and so from the primary's listing).
    for server in S {
        state
            .servers
            .get_mut(server)
            .unwrap()
            .get_mut("a")
            .unwrap()
            .retain(|(v, _)| *v != 2);
    }
    let report = run(&events, &state);
    assert!(report.has(Check::LostAck), "{report}");
    assert!(report.has(Check::Gap), "{report}");
    let lost = report
        .violations
        .iter()
        .find(|v| v.check == Check::LostAck)
        .unwrap();
    assert_eq!(lost.events, [events[2].clone()]);
    // One server holding it is enough for (a).
    let (events, mut state) = valid();
    for server in ["s1", "s2"] {
        state
            .servers
            .get_mut(server)
            .unwrap()
            .get_mut("a")
            .unwrap()
            .retain(|(v, _)| *v != 2);
    }
    assert!(run(&events, &state).is_ok());
}

#[test]
fn history_unreadable_ack_is_reported() {
    let (events, mut state) = valid();
    state.gateway_reads.insert(("b".into(), 1), None);
    assert_only(&run(&events, &state), &[Check::Unreadable]);
    state.gateway_reads.remove(&("b".into(), 1));
    assert_only(&run(&events, &state), &[Check::Unreadable]);
    let options = CheckOptions {
        gateway_reads: false,
        ..CheckOptions::default()
    };
    assert!(check(&events, &state, options).is_ok());
}

#[test]
fn history_fork_is_reported() {
    // A replica holds another value at a version: the put of a3 reached it as v2.
    let (events, mut state) = valid();
    state
        .servers
        .get_mut("s2")
        .unwrap()
        .insert("a".into(), vec![(1, "a1".into()), (2, "a3".into())]);
    let report = run(&events, &state);
    assert!(report.has(Check::Fork), "{report}");
    let fork = report
        .violations
        .iter()
        .find(|v| v.check == Check::Fork)
        .unwrap();
    assert!(fork.detail.contains("a v2"), "{fork}");
    assert!(fork.detail.contains("server s2"), "{fork}");
    // ... a3 is now at two versions as well.
    assert!(report.has(Check::Duplicate), "{report}");

    // A read sees an acknowledged version with another value of the same put's key.
    let (mut events, state) = valid();
    events.push(put(1, "b", "b2", (50, 60), PutOutcome::Indeterminate));
    events.push(get(0, "b", Some(1), (61, 62), found(1, "b2")));
    let report = run(&events, &state);
    assert!(report.has(Check::Fork), "{report}");
}

#[test]
fn history_gap_is_reported() {
    let (events, mut state) = valid();
    // The primary skipped v2 of a (replicas hold it).
    state
        .servers
        .get_mut("s0")
        .unwrap()
        .get_mut("a")
        .unwrap()
        .retain(|(v, _)| *v != 2);
    let report = run(&events, &state);
    assert_only(&report, &[Check::Gap]);
    assert_eq!(report.violations.len(), 2, "{report}");

    // The primary's listing is complete, but a replica holds a version beyond it.
    let (mut events, mut state) = valid();
    events.push(put(0, "b", "b2", (50, 60), PutOutcome::Indeterminate));
    state
        .servers
        .get_mut("s1")
        .unwrap()
        .get_mut("b")
        .unwrap()
        .push((2, "b2".into()));
    assert_only(&run(&events, &state), &[Check::Gap]);

    // A key without a primary cannot be checked: said so.
    let (events, mut state) = valid();
    state.primaries.remove("b");
    assert_only(&run(&events, &state), &[Check::Gap]);
}

#[test]
fn history_diverged_replica_is_reported() {
    let (events, mut state) = valid();
    for key in ["a", "b"] {
        state
            .replicas
            .insert(key.into(), vec!["s1".into(), "s2".into()]);
    }
    assert!(run(&events, &state).is_ok());
    // s2 never caught up with a3; s1 never got b at all.
    let s2 = state.servers.get_mut("s2").unwrap();
    s2.get_mut("a").unwrap().retain(|(v, _)| *v != 3);
    state.servers.get_mut("s1").unwrap().remove("b");
    let report = run(&events, &state);
    assert_only(&report, &[Check::Diverged]);
    let details: Vec<&str> = report
        .violations
        .iter()
        .map(|v| v.detail.as_str())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.contains("a: replica s2 lacks [3]")),
        "{report}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.contains("b: replica s1 lacks [1]")),
        "{report}"
    );
}

#[test]
fn history_phantom_values_are_reported() {
    // Read a value nobody wrote.
    let (mut events, state) = valid();
    events.push(get(0, "a", Some(1), (60, 61), found(1, "ghost")));
    let report = run(&events, &state);
    assert!(report.has(Check::Phantom), "{report}");
    assert!(report.has(Check::Fork), "{report}");

    // A server holds the value of a put that was refused.
    let (events, mut state) = valid();
    for server in S {
        state
            .servers
            .get_mut(server)
            .unwrap()
            .get_mut("b")
            .unwrap()
            .push((2, "b-refused".into()));
    }
    assert_only(&run(&events, &state), &[Check::Phantom]);

    // A value written to one key shows up under another.
    let (events, mut state) = valid();
    for server in S {
        state
            .servers
            .get_mut(server)
            .unwrap()
            .get_mut("b")
            .unwrap()
            .push((2, "a3".into()));
    }
    let report = run(&events, &state);
    assert!(report.has(Check::Phantom), "{report}");
    assert!(report.has(Check::Duplicate), "{report}");
}

#[test]
fn history_duplicate_value_is_reported() {
    // One put stored twice (a retried write): a3 at v3 and v4.
    let (events, mut state) = valid();
    for server in S {
        state
            .servers
            .get_mut(server)
            .unwrap()
            .get_mut("a")
            .unwrap()
            .push((4, "a3".into()));
    }
    assert_only(&run(&events, &state), &[Check::Duplicate]);
}

#[test]
fn history_non_monotonic_session_is_reported() {
    let no_real_time = CheckOptions {
        real_time: false,
        ..CheckOptions::default()
    };
    // Client 0 was acknowledged v2, then reads v1 as latest.
    let (mut events, state) = valid();
    events.push(get(0, "a", None, (60, 61), found(1, "a1")));
    let report = check(&events, &state, no_real_time);
    assert_only(&report, &[Check::NonMonotonic]);
    assert_eq!(
        report.violations[0].events,
        [events[2].clone(), events[14].clone()]
    );
    // Cross-client, the same read is also stale.
    let report = run(&events, &state);
    assert_only(&report, &[Check::NonMonotonic, Check::Stale]);

    // Client 1 read v3 (written by an indeterminate put), then v2: allowed by the contract
    // (the primary may die before replicating v3) unless asked to be strict.
    let (mut events, state) = valid();
    events.push(get(1, "a", None, (60, 61), found(2, "a2")));
    assert!(check(&events, &state, no_real_time).is_ok());
    let strict = CheckOptions {
        floor_from_unacked_reads: true,
        ..no_real_time
    };
    assert_only(&check(&events, &state, strict), &[Check::NonMonotonic]);

    // Reading an acknowledged version raises the floor even without the strict flag: client
    // 0 read b v1 (acked by client 1), then "not found".
    let (mut events, state) = valid();
    events.push(get(0, "b", None, (60, 61), GetOutcome::NotFound));
    assert!(check(&events, &state, no_real_time).has(Check::NonMonotonic));
}

#[test]
fn history_stale_read_is_reported() {
    // Client 1 asks after a2 was acknowledged to client 0 and gets a1.
    let (mut events, state) = valid();
    events.push(get(1, "a", None, (21, 30), found(1, "a1")));
    let report = run(&events, &state);
    assert_only(&report, &[Check::Stale]);
    assert_eq!(
        report.violations[0].events,
        [events[2].clone(), events[14].clone()]
    );
    let no_real_time = CheckOptions {
        real_time: false,
        ..CheckOptions::default()
    };
    assert!(check(&events, &state, no_real_time).is_ok());

    // Sent while the put was in flight (before it completed): either answer is fine.
    let (mut events, state) = valid();
    events.push(get(1, "a", None, (19, 30), found(1, "a1")));
    assert!(run(&events, &state).is_ok());

    // An exact version acknowledged before is "not found": stale; unavailable says nothing.
    let (mut events, state) = valid();
    events.push(get(1, "a", Some(2), (60, 61), GetOutcome::NotFound));
    events.push(get(1, "a", Some(2), (62, 63), GetOutcome::Unavailable));
    assert_only(&run(&events, &state), &[Check::Stale]);

    // "Not found" as latest after an acknowledged put.
    let (mut events, state) = valid();
    events.push(get(1, "b", None, (60, 61), GetOutcome::NotFound));
    assert!(run(&events, &state).has(Check::Stale));
}

#[test]
fn history_report_names_the_events() {
    let (mut events, state) = valid();
    events.push(get(1, "a", None, (60, 61), found(1, "a1")));
    let text = run(&events, &state).to_string();
    assert!(text.contains("Stale"), "{text}");
    assert!(text.contains("value: \"a2\""), "{text}");
    assert!(
        run(&valid().0, &valid().1)
            .to_string()
            .contains("no violations")
    );
}

#[test]
fn history_long_runs_check_quickly() {
    // 5 clients, 16 keys, 60 000 operations: the checker must not be quadratic.
    let mut events = Vec::new();
    let mut state = FinalState::default();
    let mut latest = [0u64; 16];
    for n in 0..60_000u64 {
        let client = (n % 5) as usize;
        let k = (n * 7 % 16) as usize;
        let key = format!("k{k}");
        let t = n * 10;
        if n % 3 == 0 {
            latest[k] += 1;
            let value = format!("v{n}");
            events.push(acked(client, &key, &value, (t, t + 5), latest[k]));
            for server in S {
                let listing = state.servers.entry(server.into()).or_default();
                listing
                    .entry(key.clone())
                    .or_default()
                    .push((latest[k], value.clone()));
            }
            state
                .gateway_reads
                .insert((key.clone(), latest[k]), Some(value));
        } else if latest[k] > 0 {
            let value = state.servers["s0"][&key].last().unwrap().1.clone();
            events.push(get(
                client,
                &key,
                None,
                (t, t + 5),
                found(latest[k], &value),
            ));
        }
        state.primaries.insert(key, "s1".into());
    }
    let started = Instant::now();
    let report = run(&events, &state);
    assert!(report.is_ok(), "{report}");
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
}
