//! `kvstore up`: through the library (restart on the same data directory keeps every version;
//! a data directory in use is refused; `kvstore clean`), and the real binary once, stopped
//! with SIGINT.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, TestCluster, assert_code, json, kvstore_at, stderr, stdout};
use kvstore::cluster::ClusterConfig;

/// Puts versions `{i}.1` and `{i}.2` of keys `{prefix}/0` .. `{prefix}/{n-1}`.
fn write_two_versions(cluster: &TestCluster, prefix: &str, n: usize) {
    for i in 0..n {
        for v in 1..=2 {
            let out = cluster.kvstore(&["put", &format!("{prefix}/{i}"), &format!("\"{i}.{v}\"")]);
            assert_code(&out, 0);
        }
    }
}

/// Checks that every key [`write_two_versions`] wrote has both versions; answers how many of
/// them server-3 or server-4 serves.
fn on_new_servers(cluster: &TestCluster, prefix: &str, n: usize) -> usize {
    let mut moved = 0;
    for i in 0..n {
        let key = format!("{prefix}/{i}");
        let all = json(&cluster.kvstore(&["versions", &key, "--all", "--json"]));
        let values: Vec<_> = all["versions"]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {all}"))
            .iter()
            .map(|v| v["value"].clone())
            .collect();
        assert_eq!(values, [format!("{i}.1"), format!("{i}.2")], "{key}");
        let owner = all["server_used"].as_str().unwrap();
        moved += usize::from(owner == "server-3" || owner == "server-4");
    }
    moved
}

/// `kvstore ring apply` with `servers` as the members of the new ring.
fn ring_apply(cluster: &TestCluster, servers: &[kvstore::cluster::ServerInfo]) {
    let members: Vec<String> = servers
        .iter()
        .map(|s| format!("{}={}", s.name, s.url()))
        .collect();
    let mut args = vec!["ring", "apply", "--timeout", "60s"];
    for m in &members {
        args.extend(["--member", m.as_str()]);
    }
    assert_code(&cluster.kvstore(&args), 0);
}

/// `kvstore ring show --json` of the cluster's `i`-th server.
fn ring_show(cluster: &TestCluster, i: usize) -> serde_json::Value {
    let url = cluster.servers[i].url();
    json(&cluster.kvstore(&["--json", "ring", "show", "--server", &url]))
}

#[test]
fn more_servers_on_the_same_data_dir_take_their_keys_with_every_version_and_fewer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // R = 1: a key that changes owner is readable only if its versions moved.
    let cluster = TestCluster::try_start_with(dir.path(), |c| {
        c.servers = 2;
        c.replication_factor = Some(1);
    })
    .unwrap();
    write_two_versions(&cluster, "grow", 40);
    cluster.stop();

    let cluster = TestCluster::try_start_with(dir.path(), |c| {
        c.servers = 4;
        c.replication_factor = Some(1);
    })
    .unwrap();
    let moved = on_new_servers(&cluster, "grow", 40);
    assert!(moved > 5, "only {moved} keys moved");
    // And only once: the servers the keys left deleted their copies (R = 1: one each).
    let held = keys_per_server(&cluster);
    assert_eq!(held.iter().sum::<u64>(), 40, "keys per server: {held:?}");
    cluster.stop();

    // Going back to 2 would strand the keys now on server-3 and server-4.
    let refused = TestCluster::try_start_with(dir.path(), |c| c.servers = 2)
        .err()
        .expect("fewer servers than the data directory holds is refused")
        .to_string();
    assert!(refused.contains("server-3, server-4"), "{refused}");
    assert!(refused.contains("--servers 4"), "{refused}");
}

#[test]
fn more_servers_under_a_stored_ring_get_their_keys_online() {
    let dir = tempfile::tempdir().unwrap();
    let r1 = |c: &mut ClusterConfig, servers| {
        c.servers = servers;
        c.replication_factor = Some(1);
    };
    let cluster = TestCluster::try_start_with(dir.path(), |c| r1(c, 2)).unwrap();
    write_two_versions(&cluster, "stored", 30);
    // `kvstore ring apply` stores the ring (epoch 1): from now on it wins over the flags.
    ring_apply(&cluster, &cluster.servers);
    cluster.stop();

    // Four servers on new ports: the two new ones get their keys before `start` returns.
    let cluster = TestCluster::try_start_with(dir.path(), |c| r1(c, 4)).unwrap();
    let moved = on_new_servers(&cluster, "stored", 30);
    assert!(moved > 5, "only {moved} keys moved");
    let ring = ring_show(&cluster, 3);
    assert_eq!(
        ring["state"]["current"]["members"].as_array().map(Vec::len),
        Some(4),
        "{ring}"
    );
    assert!(
        ring["state"]["current"]["epoch"].as_u64() > Some(1),
        "{ring}"
    );
    // Once more: the ring already names every server, nothing moves.
    cluster.stop();
    let cluster = TestCluster::try_start_with(dir.path(), |c| r1(c, 4)).unwrap();
    let again = ring_show(&cluster, 0);
    assert_eq!(
        again["state"]["current"]["epoch"],
        ring["state"]["current"]["epoch"]
    );
    cluster.stop();
}

/// Keys each server's database holds (`total_keys` of `/db/stats`, through the gateway).
fn keys_per_server(cluster: &TestCluster) -> Vec<u64> {
    let stats = json(&cluster.kvstore(&["stats", "--json"]));
    let servers = stats["servers"]
        .as_array()
        .unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(servers.len(), cluster.servers.len(), "{stats}");
    servers
        .iter()
        .map(|s| {
            s["db"]["total_keys"]
                .as_u64()
                .unwrap_or_else(|| panic!("{stats}"))
        })
        .collect()
}

#[test]
fn a_new_replication_factor_under_a_stored_ring_moves_keys_and_no_flag_keeps_the_stored_one() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path());
    write_two_versions(&cluster, "factor", 20);
    ring_apply(&cluster, &cluster.servers);
    cluster.stop();

    // R 3 -> 1 on the same servers: every key ends up on exactly one of them.
    let cluster =
        TestCluster::try_start_with(dir.path(), |c| c.replication_factor = Some(1)).unwrap();
    assert_eq!(cluster.replication(), (1, 1));
    // Every version still readable (the count of keys on server-3 does not matter here).
    on_new_servers(&cluster, "factor", 20);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = keys_per_server(&cluster);
        if held.iter().sum::<u64>() == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "still held: {held:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let epoch = |cluster: &TestCluster| {
        let ring = ring_show(cluster, 0);
        assert_eq!(ring["state"]["current"]["replication_factor"], 1, "{ring}");
        ring["state"]["current"]["epoch"].as_u64().unwrap()
    };
    let moved_at = epoch(&cluster);
    cluster.stop();

    // Without the flag the stored factor stays, not the default 3, and nothing moves; so a
    // write quorum above it is refused as it would be with the flag.
    let refused = TestCluster::try_start_with(dir.path(), |c| c.write_quorum = Some(2))
        .err()
        .expect("W above the stored R is refused")
        .to_string();
    assert!(
        refused.contains("--write-quorum must be from 1 to the replication factor, 1"),
        "{refused}"
    );
    let cluster = TestCluster::start(dir.path());
    assert_eq!(cluster.replication(), (1, 1));
    assert_eq!(epoch(&cluster), moved_at);
    assert_eq!(keys_per_server(&cluster).iter().sum::<u64>(), 20);
    cluster.stop();
}

#[test]
fn fewer_servers_start_once_a_ring_moved_the_keys_off_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        TestCluster::try_start_with(dir.path(), |c| c.replication_factor = Some(1)).unwrap();
    for i in 0..20 {
        assert_code(
            &cluster.kvstore(&["put", &format!("shrink/{i}"), &i.to_string()]),
            0,
        );
    }
    // server-3 leaves the ring while the cluster serves; its database stays on disk.
    ring_apply(&cluster, &cluster.servers[..2]);
    cluster.stop();
    assert!(dir.path().join("server-3/kv_store.db").exists());

    let cluster = TestCluster::try_start_with(dir.path(), |c| {
        c.servers = 2;
        c.replication_factor = Some(1);
    })
    .expect("server-3 holds nothing the ring needs");
    for i in 0..20 {
        let got = json(&cluster.kvstore(&["get", &format!("shrink/{i}"), "--json"]));
        assert_eq!(got["value"], i, "{got}");
    }
    cluster.stop();
}

#[test]
fn a_restart_on_the_same_data_dir_finds_every_key_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path());
    // key -> (owner, values in version order)
    let mut written: BTreeMap<String, (String, Vec<serde_json::Value>)> = BTreeMap::new();
    for i in 0..12 {
        let key = format!("k/{i}");
        for v in 0..=(i % 3) {
            let value = format!("{i}-{v}");
            let put = json(&cluster.kvstore(&["put", &key, &value, "--json"]));
            let entry = written.entry(key.clone()).or_default();
            entry.0 = put["server_used"].as_str().unwrap().to_owned();
            entry.1.push(value.into());
        }
    }
    let ports: Vec<u16> = cluster.servers.iter().map(|s| s.addr.port()).collect();
    cluster.stop();

    let cluster = TestCluster::start(dir.path());
    for (key, (owner, values)) in &written {
        let all = json(&cluster.kvstore(&["versions", key, "--all", "--json"]));
        let got: Vec<_> = all["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["value"].clone())
            .collect();
        assert_eq!(&got, values, "{key}");
        // Placement follows names, not ports: the same member owns the key.
        assert_eq!(all["server_used"], owner.as_str(), "{key}");
    }
    let new_ports: Vec<u16> = cluster.servers.iter().map(|s| s.addr.port()).collect();
    assert_ne!(
        ports, new_ports,
        "ephemeral ports (a coincidence is possible but unlikely)"
    );
    for (i, s) in cluster.servers.iter().enumerate() {
        assert_eq!(s.data_dir, dir.path().join(format!("server-{}", i + 1)));
        assert!(s.data_dir.join("kv_store.db").is_file());
    }
    cluster.stop();
}

#[test]
fn a_data_dir_in_use_is_refused_and_the_running_cluster_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path());
    assert_code(&cluster.kvstore(&["put", "k", "v"]), 0);

    let err = TestCluster::try_start(dir.path()).err().expect("refused");
    assert!(matches!(err, kvstore::Error::DataDirInUse { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&dir.path().join("server-").display().to_string()),
        "{message}"
    );
    assert!(message.contains("in use by another process"), "{message}");

    // While it runs, the clean-up refuses too (kv-server clean's exit code 2).
    let data_dir = dir.path().to_str().unwrap();
    assert_code(
        &cluster.kvstore(&["clean", "--data-dir", data_dir, "--yes"]),
        2,
    );
    assert_eq!(
        json(&cluster.kvstore(&["get", "k", "--json"]))["value"],
        "v"
    );
    cluster.stop();
}

#[test]
fn clean_previews_then_empties_the_databases() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let cluster = TestCluster::start(dir.path());
    for i in 0..10 {
        assert_code(&cluster.kvstore(&["put", &format!("key-{i}"), "x"]), 0);
    }
    cluster.stop();

    let out = kvstore_at(
        "http://unused",
        &["clean", "--data-dir", data_dir, "--dry-run"],
        None,
    );
    assert_code(&out, 0);
    let preview = stdout(&out);
    for i in 1..=3 {
        assert!(preview.contains(&format!("server-{i}")), "{preview}");
    }
    let cluster = TestCluster::start(dir.path());
    assert_code(&cluster.kvstore(&["get", "key-3"]), 0);
    cluster.stop();

    assert_code(
        &kvstore_at(
            "http://unused",
            &["clean", "--data-dir", data_dir, "--yes"],
            None,
        ),
        0,
    );
    let cluster = TestCluster::start(dir.path());
    assert_code(&cluster.kvstore(&["get", "key-3"]), 3);
    cluster.stop();
}

#[test]
fn replication_flags_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = |servers, replication_factor, write_quorum| ClusterConfig {
        servers,
        replication_factor: Some(replication_factor),
        write_quorum,
        ..ClusterConfig::new(dir.path())
    };
    assert_eq!(config(3, 3, None).replication(), (3, 2));
    assert_eq!(config(5, 3, Some(3)).replication(), (3, 3));
    assert_eq!(config(1, 3, None).replication(), (1, 1));
    assert!(config(3, 2, Some(2)).validate().is_ok());
    let message = |c: ClusterConfig| c.validate().unwrap_err().to_string();
    assert!(message(config(3, 0, None)).contains("--replication-factor"));
    let too_many = message(config(3, 2, Some(3)));
    assert!(
        too_many.contains("--write-quorum must be from 1 to the replication factor, 2"),
        "{too_many}"
    );
    let capped = message(config(2, 3, Some(3)));
    assert!(capped.contains("capped at --servers"), "{capped}");
    assert!(message(config(3, 3, Some(0))).contains("--write-quorum"));

    // The binary says so and starts nothing.
    let out = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--write-quorum", "4"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("--write-quorum"), "{}", stderr(&out));
    assert!(!dir.path().join("server-1").exists());
}

/// A start that fails says why on one line, its cause once (the servers' errors carry their
/// cause in their own message, which a plain walk of the chain would repeat).
#[test]
fn a_failed_start_says_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--servers", "1"])
        .arg("--data-dir")
        .arg(&file)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let said = stderr(&out);
    let line = said
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {said}"));
    assert!(line.contains("server-1"), "{line}");
    assert_eq!(line.matches("Not a directory").count(), 1, "{line}");
}

#[test]
fn a_larger_value_limit_reaches_the_servers_and_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    // Over the gateway's default body limit (16 MiB) as well as the servers' (1 MiB).
    let cluster = TestCluster::try_start_with(dir.path(), |c| {
        c.servers = 1;
        c.max_value_bytes = 20 << 20;
    })
    .expect("the cluster starts");
    let text = |bytes: usize| "x".repeat(bytes);
    assert_code(
        &cluster.kvstore_with_stdin(&["put", "big", "-"], &text(17 << 20)),
        0,
    );
    // Just over the limit, so the gateway lets it through and the server says what it is.
    let refused = cluster.kvstore_with_stdin(&["put", "big", "-"], &text((20 << 20) + 1024));
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        stderr(&refused).contains("larger than the limit of 20971520 bytes"),
        "{}",
        stderr(&refused)
    );
    let latest = json(&cluster.kvstore(&["--json", "get", "big"]));
    assert_eq!(latest["version"], 1, "{latest}");
    assert_eq!(latest["value"].as_str().map(str::len), Some(17 << 20));
    cluster.stop();

    let out_of_range = ClusterConfig {
        max_value_bytes: (64 << 20) + 1,
        ..ClusterConfig::new(dir.path())
    };
    let message = out_of_range.validate().unwrap_err().to_string();
    assert!(message.contains("--max-value-bytes"), "{message}");
    let no_wait = ClusterConfig {
        replication_timeout_ms: 0,
        ..ClusterConfig::new(dir.path())
    };
    let message = no_wait.validate().unwrap_err().to_string();
    assert!(message.contains("--replication-timeout-ms"), "{message}");
}

/// Every put reaches every server when R = N = 3: read back from each server directly.
#[test]
fn with_three_servers_and_r3_every_server_holds_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path());
    let keys: Vec<String> = (0..6).map(|i| format!("replicated/{i}")).collect();
    for key in &keys {
        let put = json(&cluster.kvstore(&["put", key, &format!("value of {key}"), "--json"]));
        assert_eq!(put["version"], 1, "{put}");
    }
    for server in &cluster.servers {
        for key in &keys {
            // Beyond the write quorum, replication is asynchronous: allow it a few seconds.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let out = kvstore_at(&server.url(), &["get", key, "--json"], None);
                if out.status.success() {
                    let got = json(&out);
                    assert_eq!(got["value"], format!("value of {key}"), "{}", server.name);
                    assert_eq!(got["version"], 1, "{}", server.name);
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{key} never reached {}: {}",
                    server.name,
                    stderr(&out)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    cluster.stop();
}

/// The binary as a user runs it: `kvstore up`, then Ctrl-C (SIGINT) stops it with exit code 0.
/// Started under a soft limit of 256 open files, which it raises to the hard limit.
#[test]
fn the_up_binary_serves_until_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -S -n 256 && exec "$0" "$@""#)
        .arg(BIN)
        .args(["up", "--json", "--listen", "127.0.0.1:0", "--servers", "2"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The summary comes once everything is ready.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("summary {line:?}: {e}"));
    let url = summary["gateway"].as_str().unwrap().to_owned();
    assert_eq!(summary["docs"], format!("{url}/docs"));
    assert_eq!(summary["servers"].as_array().unwrap().len(), 2);
    assert_eq!(summary["servers"][1]["name"], "server-2");
    // The default factor, 3, capped at the 2 servers; the quorum a majority of 2.
    assert_eq!(summary["replication_factor"], 2);
    assert_eq!(summary["write_quorum"], 2);

    assert_code(&kvstore_at(&url, &["put", "greeting", "hello"], None), 0);
    let got = kvstore_at(&url, &["get", "greeting", "--json"], None);
    assert_eq!(json(&got)["value"], "hello");

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .unwrap()
        .split_whitespace()
        .take(2)
        .collect();
    assert_ne!(
        open_files[1], "256",
        "this test needs a hard limit above 256"
    );
    assert_eq!(
        open_files[0], open_files[1],
        "soft and hard open files limits"
    );

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "kvstore up did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("every server stopped cleanly"),
        "{}",
        stderr(&out)
    );
}
