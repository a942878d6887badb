//! `kvstore up`: runs [`crate::cluster`] until Ctrl-C or SIGTERM, after printing where
//! everything is (on stdout: one JSON line with `--json`). Logs go to stderr.

use std::io::IsTerminal;

use clap::Args;

use super::{GlobalArgs, exit};
use crate::cluster::{self, Cluster, ClusterConfig};
use crate::{Error, Result};

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub cluster: ClusterConfig,
    /// Log level or filter for the servers and the gateway (RUST_LOG wins when set).
    #[arg(long, env = "KV_LOG_LEVEL", default_value = "info",
          value_parser = kv_common::telemetry::parse_filter)]
    pub log_level: String,
}

pub fn command(global: &GlobalArgs, args: &UpArgs) -> Result<u8> {
    init_logs(&args.log_level)?;
    // The servers and the gateway run in this process: every client connection, link and
    // database file of the cluster is one of its file descriptors.
    kv_common::net::raise_open_files_limit_and_log();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(async {
        let cluster = cluster::start(&args.cluster, kv_common::shutdown::signal()).await?;
        print_summary(&cluster, global.json);
        cluster.wait().await?;
        eprintln!("kvstore: every server stopped cleanly");
        Ok(exit::SUCCESS)
    })
}

/// Logs on stderr, so stdout holds only the summary (a script reads the addresses from it).
fn init_logs(level: &str) -> Result<()> {
    let filter = kv_common::telemetry::filter(level).map_err(Error::Config)?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    Ok(())
}

fn print_summary(cluster: &Cluster, json: bool) {
    if json {
        let summary = serde_json::json!({
            "gateway": cluster.gateway_url(),
            "docs": cluster.docs_url(),
            "servers": cluster.servers.iter().map(|s| serde_json::json!({
                "name": s.name,
                "url": s.url(),
                "data_dir": s.data_dir,
            })).collect::<Vec<_>>(),
            "replication_factor": cluster.replication_factor,
            "write_quorum": cluster.write_quorum,
        });
        println!("{summary}");
        return;
    }
    let n = cluster.servers.len();
    println!("kvstore is up: a gateway and {n} storage servers\n");
    println!("  gateway   {}", cluster.gateway_url());
    println!("  API docs  {}", cluster.docs_url());
    for s in &cluster.servers {
        println!(
            "  {:<9} {}  data in {}",
            s.name,
            s.url(),
            s.data_dir.display()
        );
    }
    let (r, w) = (cluster.replication_factor, cluster.write_quorum);
    if r > 1 {
        println!("\nEvery key is kept on {r} servers; a put is answered once {w} hold it.");
    }
    println!(
        "\nKeys are placed by server name (server-1 ... server-{n}): start again with the same \
         --servers and --data-dir to find every key.\nTry: kvstore put hello world && kvstore \
         get hello. Ctrl-C stops the cluster."
    );
}
