//! `kv-gateway`: parses flags, sets up logging, binds, and runs the library.

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
    #[arg(long, env = "KV_LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// `text` or `json`.
    #[arg(long, env = "KV_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.log_level, cli.log_format);
    cli.gateway.validate()?;
    let listener = tokio::net::TcpListener::bind(cli.gateway.listen).await?;
    kv_gateway::run(listener, cli.gateway, kv_common::shutdown::signal()).await?;
    Ok(())
}
