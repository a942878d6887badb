//! `kv-operator`: parses flags, sets up logging, binds the health/metrics port, connects to
//! the API server, and runs the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use kv_common::telemetry::{self, LogFormat};
use kv_operator::OperatorConfig;

#[derive(Parser)]
#[command(
    name = "kv-operator",
    version,
    about = "kvstore operator: runs KvClusters on Kubernetes"
)]
struct Cli {
    #[command(flatten)]
    operator: OperatorConfig,

    /// Default log filter (RUST_LOG wins), e.g. `info` or `kv_operator=debug`.
    #[arg(long, env = "KV_LOG_LEVEL", default_value = "info",
          value_parser = telemetry::parse_filter)]
    log_level: String,

    /// `text` or `json`.
    #[arg(long, env = "KV_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    kv_common::report::exit(run().await.map(|()| ExitCode::SUCCESS))
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.log_level, cli.log_format).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(cli.operator.listen)
        .await
        .with_context(|| format!("bind {}", cli.operator.listen))?;
    let client = kube::Client::try_default()
        .await
        .context("connect to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    kv_operator::run(
        listener,
        cli.operator,
        client,
        kv_common::shutdown::signal(),
    )
    .await?;
    Ok(())
}
