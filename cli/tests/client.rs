//! The client commands (`put`, `get`, `versions`, `servers`, `stats`) of the real `kvstore`
//! binary against a local cluster on ephemeral ports: human output, `--json` parsed, values
//! from arguments, stdin and files, and the exit codes scripts rely on.

mod common;

use common::{TestCluster, assert_code, json, kvstore_at, stderr, stdout};

#[test]
fn put_get_and_versions_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path());
    // A key with a slash, a space and a non-ASCII letter is one key.
    let key = "users/zoé 1";

    let out = cluster.kvstore(&["put", key, "hello world"]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).starts_with(&format!("created {key:?} version 1 on server-")),
        "{}",
        stdout(&out)
    );
    let put = json(&cluster.kvstore(&["put", key, r#"{"n": 12345678901234567890123}"#, "--json"]));
    assert_eq!(put["version"], 2);
    assert_eq!(put["previous_version"], 1);
    assert_eq!(put["key"], key);
    let owner = put["server_used"].as_str().unwrap().to_owned();
    assert_code(&cluster.kvstore(&["put", key, "-5"]), 0);

    // Latest, in JSON: the value as sent (JSON when it parses, else a string).
    let got = json(&cluster.kvstore(&["--json", "get", key]));
    assert_eq!(
        (got["version"].as_u64(), &got["value"]),
        (Some(3), &(-5).into())
    );
    assert_eq!(got["server_used"], owner.as_str());
    let got = json(&cluster.kvstore(&["get", key, "--version", "1", "--json"]));
    assert_eq!(got["value"], "hello world");
    // The big integer comes back digit for digit (only --json promises the exact text).
    let out = cluster.kvstore(&["get", key, "--version", "2", "--json"]);
    assert!(
        stdout(&out).contains("12345678901234567890123"),
        "{}",
        stdout(&out)
    );

    let out = cluster.kvstore(&["get", key, "--version", "1"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains(&format!("key      {key:?}")), "{text}");
    assert!(text.contains("version  1 (written 20"), "{text}");
    assert!(text.contains(&format!("server   {owner} (from ")), "{text}");
    assert!(text.contains("value    \"hello world\""), "{text}");

    // History: oldest first; one page, then every page.
    let out = cluster.kvstore(&["versions", key, "--limit", "2"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("VERSION  WRITTEN"), "{text}");
    assert!(
        text.contains("\"hello world\"") && !text.contains("-5"),
        "{text}"
    );
    assert!(text.contains("more: --after 2"), "{text}");
    let page = json(&cluster.kvstore(&["versions", key, "--after", "1", "--json"]));
    let versions: Vec<_> = page["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].clone())
        .collect();
    assert_eq!(versions, [2, 3]);
    let all = json(&cluster.kvstore(&["versions", key, "--all", "--limit", "1", "--json"]));
    assert_eq!(all["versions"].as_array().unwrap().len(), 3);
    assert_eq!(all["latest_version"], 3);
    assert_eq!(all["next_after"], serde_json::Value::Null);
    cluster.stop();
}

#[test]
fn values_from_stdin_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path());

    // Text loses its final newline; JSON is stored as JSON.
    assert_code(
        &cluster.kvstore_with_stdin(&["put", "a", "-"], "plain text\n"),
        0,
    );
    assert_code(
        &cluster.kvstore_with_stdin(&["put", "b", "--file", "-"], "{\"x\": [1, 2]}\n"),
        0,
    );
    let file = dir.path().join("value.json");
    std::fs::write(&file, "[true, null]").unwrap();
    assert_code(
        &cluster.kvstore(&["put", "c", "--file", file.to_str().unwrap()]),
        0,
    );
    assert_code(&cluster.kvstore(&["put", "d", "42", "--string"]), 0);

    let value = |key: &str| json(&cluster.kvstore(&["get", key, "--json"]))["value"].clone();
    assert_eq!(value("a"), "plain text");
    assert_eq!(value("b"), serde_json::json!({"x": [1, 2]}));
    assert_eq!(value("c"), serde_json::json!([true, null]));
    assert_eq!(value("d"), "42");

    let out = cluster.kvstore(&["put", "e", "--file", "/nonexistent/value"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("cannot read the value from /nonexistent/value"),
        "{}",
        stderr(&out)
    );
    cluster.stop();
}

#[test]
fn servers_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path());
    for i in 0..20 {
        assert_code(
            &cluster.kvstore(&["put", &format!("key-{i}"), &i.to_string()]),
            0,
        );
    }
    assert_code(&cluster.kvstore(&["put", "key-0", "again"]), 0);

    let out = cluster.kvstore(&["servers"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    for s in &cluster.servers {
        assert!(text.contains(&format!("{}  up", s.name)), "{text}");
        assert!(text.contains(&s.url()), "{text}");
    }
    // Every server holds every key (R = 3): the share shown is of the primaries.
    assert!(text.starts_with("NAME      HEALTH  PRIMARY"), "{text}");
    assert!(
        text.contains("also kept on the next 2 servers clockwise, a put is answered once 2"),
        "{text}"
    );
    let servers = json(&cluster.kvstore(&["servers", "--json"]));
    assert_eq!(servers["count"], 3);
    assert_eq!(
        servers["servers"],
        serde_json::json!(["server-1", "server-2", "server-3"])
    );

    // `kvstore up` replicates every version to all 3 servers (R = 3): 20 keys and 21
    // versions on each. Copies beyond the write quorum arrive asynchronously: wait for them.
    let total = |stats: &serde_json::Value, field: &str| -> u64 {
        stats["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["db"][field].as_u64().unwrap())
            .sum()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let stats = loop {
        let stats = json(&cluster.kvstore(&["stats", "--json"]));
        let totals = (total(&stats, "total_keys"), total(&stats, "total_versions"));
        if totals == (60, 63) {
            break stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "totals stay at {totals:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let per_server = stats["servers"].as_array().unwrap();
    assert_eq!(per_server.len(), 3);
    for s in per_server {
        assert_eq!(s["cache"]["node_name"], s["name"]);
        assert!(s["cache"]["max_size"].as_u64().unwrap() > 0);
    }
    let out = cluster.kvstore(&["stats"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert_eq!(text.matches("  cache  ").count(), 3, "{text}");
    assert!(text.contains("server-2\n  cache  "), "{text}");
    let one = json(&cluster.kvstore(&["stats", "--server", "server-2", "--json"]));
    assert_eq!(one["servers"][0]["db"]["node_name"], "server-2");

    // Pointed at one server, not a gateway: that server's own statistics.
    let out = kvstore_at(&cluster.servers[0].url(), &["stats"], None);
    assert_code(&out, 0);
    assert!(
        stdout(&out).starts_with("server-1\n  cache  "),
        "{}",
        stdout(&out)
    );
    cluster.stop();
}

#[test]
fn exit_codes_tell_not_found_conflict_usage_and_failure_apart() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path());
    assert_code(&cluster.kvstore(&["put", "k", "1"]), 0);

    // 3: no such key, no such version.
    let out = cluster.kvstore(&["get", "missing"]);
    assert_code(&out, 3);
    assert!(
        stderr(&out).contains("Key 'missing' not found"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
    assert_code(&cluster.kvstore(&["get", "k", "--version", "9"]), 3);
    assert_code(&cluster.kvstore(&["versions", "missing"]), 3);

    // 4: compare-and-set lost; nothing stored. 0 when it matches.
    let out = cluster.kvstore(&["put", "k", "2", "--if-version", "5"]);
    assert_code(&out, 4);
    assert!(
        stderr(&out).contains("version_conflict"),
        "{}",
        stderr(&out)
    );
    assert_code(&cluster.kvstore(&["put", "k", "2", "--if-version", "1"]), 0);
    assert_code(
        &cluster.kvstore(&["put", "new", "x", "--if-version", "0"]),
        0,
    );
    assert_code(
        &cluster.kvstore(&["put", "new", "y", "--if-version", "0"]),
        4,
    );

    // 2: bad command line, or a request the service refuses.
    assert_code(&cluster.kvstore(&["get"]), 2);
    assert_code(&cluster.kvstore(&["get", "k", "--version", "abc"]), 2);
    assert_code(&cluster.kvstore(&["versions", "k", "--limit", "0"]), 2);
    let out = cluster.kvstore(&["stats", "--server", "nope"]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("server-1"),
        "the message lists the servers: {}",
        stderr(&out)
    );
    assert_code(&cluster.kvstore(&["put", "k", "1e400"]), 2);
    assert_code(&cluster.kvstore(&["--url", "ftp://x", "get", "k"]), 2);
    cluster.stop();

    // 1: nothing listens there, with a hint.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let out = kvstore_at(&url, &["get", "k"], None);
    assert_code(&out, 1);
    let message = stderr(&out);
    assert!(
        message.starts_with(&format!("error: cannot reach {url} (")),
        "{message}"
    );
    assert!(message.contains("is `kvstore up` running?"), "{message}");

    // --help documents the codes.
    let help = stdout(&kvstore_at(&url, &["--help"], None));
    assert!(
        help.contains("3  not found") && help.contains("4  conflict"),
        "{help}"
    );
}
