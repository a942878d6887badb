//! Crash durability: the real binary is killed with SIGKILL (or stopped with SIGTERM) in the
//! middle of a write load; after a restart every acknowledged version is there with its value.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::binary::{get_json, start};

type Acked = Arc<Mutex<Vec<(String, u64, String)>>>;

/// Eight writers putting to four shared keys until the server stops answering.
fn spawn_writers(url: &str, acked: &Acked) -> Vec<tokio::task::JoinHandle<()>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    (0..8)
        .map(|w| {
            let (client, url, acked) = (client.clone(), url.to_owned(), acked.clone());
            tokio::spawn(async move {
                for seq in 0.. {
                    // Writers share a few keys so that versions interleave across clients.
                    let key = format!("key-{}", (w + seq) % 4);
                    let value = format!("w{w}-s{seq}");
                    let sent = client
                        .put(format!("{url}/put/{key}"))
                        .json(&serde_json::json!({ "value": value }))
                        .send()
                        .await;
                    let Ok(response) = sent else { return };
                    if !response.status().is_success() {
                        return;
                    }
                    let Ok(body) = response.json::<serde_json::Value>().await else {
                        return;
                    };
                    let version = body["version"].as_u64().expect("version");
                    acked.lock().unwrap().push((key, version, value));
                }
            })
        })
        .collect()
}

async fn wait_for_acks(acked: &Acked, n: usize) {
    while acked.lock().unwrap().len() < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Restarts on `dir` and checks every acknowledged version and gap-free histories.
async fn verify(dir: &std::path::Path, acked: &[(String, u64, String)]) {
    let server = start(dir).await;
    let client = reqwest::Client::new();
    for (key, version, value) in acked {
        let got = get_json(
            &client,
            format!("{}/get/{key}?version={version}", server.url),
        )
        .await;
        assert_eq!(
            got["value"],
            value.as_str(),
            "{key} v{version} lost or changed: {got}"
        );
    }
    for k in 0..4 {
        let page = get_json(
            &client,
            format!("{}/versions/key-{k}?limit=1000", server.url),
        )
        .await;
        let latest = page["latest_version"].as_u64().unwrap();
        let listed: Vec<u64> = page["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect();
        assert_eq!(listed, (1..=latest.min(1000)).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_version_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path()).await;
    let acked = Acked::default();
    let writers = spawn_writers(&server.url, &acked);
    // Let the load run, then kill without warning while writes are in flight.
    wait_for_acks(&acked, 300).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);
    verify(dir.path(), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_and_keeps_every_acknowledged_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path()).await;
    let acked = Acked::default();
    let writers = spawn_writers(&server.url, &acked);
    wait_for_acks(&acked, 200).await;
    let pid = server.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let status = server.child.wait().unwrap();
    assert!(
        status.success(),
        "kv-server exited with {status} on SIGTERM"
    );
    for w in writers {
        w.await.unwrap();
    }
    // A clean stop folds the write-ahead log back into the database file.
    let wal = dir.path().join("kv_store.db-wal");
    let wal_bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(wal_bytes, 0, "the WAL was left with {wal_bytes} bytes");
    let acked = acked.lock().unwrap().clone();
    verify(dir.path(), &acked).await;
}
