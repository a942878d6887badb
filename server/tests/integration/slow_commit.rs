//! A slow commit is told in the log: another program holds the database's write lock for over
//! a second (as a stalled disk would hold a commit), the put waiting behind it still succeeds,
//! and the server warns that commits are slow, once.

use std::process::Stdio;
use std::time::Duration;

use crate::binary::start_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_held_over_a_second_is_warned_about_once() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let data = dir.path().join("data");
    let server = start_with(&data, Stdio::from(log)).await;
    let client = reqwest::Client::new();
    let put = |value: &str| {
        client
            .put(format!("{}/put/k", server.url))
            .json(&serde_json::json!({ "value": value }))
            .send()
    };
    assert!(put("fast").await.unwrap().status().is_success());

    // The server's writer waits for the lock (its busy timeout is far longer than this).
    let blocker = rusqlite::Connection::open(data.join("kv_store.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let held = tokio::spawn({
        let (client, url) = (client.clone(), server.url.clone());
        async move {
            let mut answers = Vec::new();
            // Two puts behind the lock: one commit or two, one warning either way.
            for value in ["slow-1", "slow-2"] {
                let answer = client
                    .put(format!("{url}/put/k"))
                    .json(&serde_json::json!({ "value": value }))
                    .send()
                    .await
                    .unwrap();
                answers.push(answer.status());
            }
            answers
        }
    });
    tokio::time::sleep(Duration::from_millis(1300)).await;
    blocker.execute_batch("ROLLBACK").unwrap();
    for status in held.await.unwrap() {
        assert!(status.is_success(), "{status}");
    }
    assert!(put("fast again").await.unwrap().status().is_success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("commits are slow"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning expected in:\n{log}");
    assert!(warnings[0].contains("slowest_ms=1"), "{}", warnings[0]);
    drop(server);
}
