//! `kv-gateway`: parses flags, sets up logging, binds, and runs the library.

use std::num::NonZeroUsize;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use kv_common::telemetry::{self, LogFormat};
use kv_gateway::GatewayConfig;

/// Measured: glibc malloc was about a fifth of the CPU of a proxied request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kv-gateway",
    version,
    about = "kvstore gateway: consistent-hash routing over the storage servers"
)]
struct Cli {
    #[command(flatten)]
    gateway: GatewayConfig,

    /// Default log filter (RUST_LOG wins), e.g. `info` or `kv_gateway=debug`.
    #[arg(long, env = "KV_LOG_LEVEL", default_value = "info",
          value_parser = telemetry::parse_filter)]
    log_level: String,

    /// `text` or `json`.
    #[arg(long, env = "KV_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,

    /// Tokio worker threads (default: one per CPU the process may use). Fewer help when the
    /// gateway shares a few cores with servers (see docs/benchmarks.md).
    #[arg(long, env = "KV_WORKER_THREADS")]
    worker_threads: Option<NonZeroUsize>,
}

fn main() -> ExitCode {
    kv_common::report::exit(run().map(|()| ExitCode::SUCCESS))
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.log_level, cli.log_format).map_err(anyhow::Error::msg)?;
    cli.gateway.validate()?;
    // Every client connection and link is a file descriptor.
    kv_common::net::raise_open_files_limit_and_log();
    let runtime =
        kv_common::runtime::build(cli.worker_threads).context("start the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(cli.gateway.listen)
            .await
            .with_context(|| format!("bind {}", cli.gateway.listen))?;
        kv_gateway::run(listener, cli.gateway, kv_common::shutdown::signal()).await?;
        Ok(())
    })
}
