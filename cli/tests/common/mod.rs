//! Shared by the CLI's integration tests: a local cluster started through the library
//! (`kvstore::cluster::start`, ephemeral ports) on its own runtime, and a runner for the real
//! `kvstore` binary pointed at it.

#![allow(dead_code)] // each test file uses its own subset

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use kvstore::cluster::{self, Cluster, ClusterConfig, ServerInfo};
use tokio::sync::oneshot;

pub const BIN: &str = env!("CARGO_BIN_EXE_kvstore");

/// A running cluster; stopped (and checked to stop cleanly) by [`TestCluster::stop`] or on drop.
pub struct TestCluster {
    pub url: String,
    pub servers: Vec<ServerInfo>,
    stop: Option<oneshot::Sender<()>>,
    cluster: Option<Cluster>,
    // Last, so the cluster's tasks are stopped before the runtime goes.
    runtime: tokio::runtime::Runtime,
}

impl TestCluster {
    pub fn start(data_dir: &Path) -> TestCluster {
        TestCluster::try_start(data_dir).expect("the cluster starts")
    }

    pub fn try_start(data_dir: &Path) -> Result<TestCluster, kvstore::Error> {
        TestCluster::try_start_with(data_dir, |_| {})
    }

    /// Starts with the defaults changed by `edit` (e.g. the number of servers).
    pub fn try_start_with(
        data_dir: &Path,
        edit: impl FnOnce(&mut ClusterConfig),
    ) -> Result<TestCluster, kvstore::Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = ClusterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ClusterConfig::new(data_dir)
        };
        edit(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let cluster = runtime.block_on(cluster::start(&config, async {
            let _ = stopped.await;
        }))?;
        Ok(TestCluster {
            url: cluster.gateway_url(),
            servers: cluster.servers.clone(),
            stop: Some(stop),
            cluster: Some(cluster),
            runtime,
        })
    }

    /// The replication factor and write quorum `kvstore up` reports.
    pub fn replication(&self) -> (usize, usize) {
        let cluster = self.cluster.as_ref().expect("running");
        (cluster.replication_factor, cluster.write_quorum)
    }

    /// Runs `kvstore ARGS` against this cluster's gateway.
    pub fn kvstore(&self, args: &[&str]) -> Output {
        kvstore_at(&self.url, args, None)
    }

    /// Same, with `stdin` as standard input.
    pub fn kvstore_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        kvstore_at(&self.url, args, Some(stdin))
    }

    /// Stops the cluster and checks every part stopped without error.
    pub fn stop(mut self) {
        self.shutdown().expect("the cluster stops cleanly");
    }

    fn shutdown(&mut self) -> Result<(), kvstore::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.cluster.take() {
            Some(cluster) => self.runtime.block_on(cluster.wait()),
            None => Ok(()),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Runs `kvstore ARGS` with `KVSTORE_URL=url`.
pub fn kvstore_at(url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("KVSTORE_URL", url)
        .env_remove("KV_DATA_DIR")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kvstore");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Asserts the exit code, showing both streams when it differs.
#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// Asserts success and parses stdout as JSON.
#[track_caller]
pub fn json(out: &Output) -> serde_json::Value {
    assert_code(out, 0);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(out)))
}
