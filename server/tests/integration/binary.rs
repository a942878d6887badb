//! The real `kv-server` binary as a child process, for the tests that need one: killed mid-load
//! (`crash.rs`) or read by its log (`slow_commit.rs`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

/// A running server, killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on `dir`, its log discarded.
pub async fn start(dir: &Path) -> Server {
    start_with(dir, Stdio::null()).await
}

/// Starts the binary on `dir`, its log (warnings and errors, written to its stdout) going to
/// `log`, and waits until it is ready.
pub async fn start_with(dir: &Path, log: Stdio) -> Server {
    let port = free_port();
    // Named by its port, so that the server answering is known to be this one.
    let name = format!("crash-{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-name",
            &name,
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("KV_LOG_LEVEL", "warn")
        .stdout(log)
        .spawn()
        .expect("start kv-server");
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{}/ready", server.url)).send().await
            && r.status().is_success()
        {
            let stats = get_json(&client, format!("{}/db/stats", server.url)).await;
            assert_eq!(stats["node_name"], name, "another server holds port {port}");
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("kv-server did not become ready");
}

pub async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}
