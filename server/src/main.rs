//! `kv-server`: serve a store, or clean or check databases. All logic is in the library.

use std::num::NonZeroUsize;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kv_common::telemetry::{self, LogFormat};
use kv_server::ServerConfig;
use kv_server::check::CheckArgs;
use kv_server::clean::CleanArgs;

/// Measured: glibc malloc and free were about a seventh of a cached GET's CPU here (and a
/// fifth of the gateway's); mimalloc is faster at the small, short-lived allocations of
/// request handling.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kv-server",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServerConfig,
    /// Log level or filter (RUST_LOG wins when set).
    #[arg(long, env = "KV_LOG_LEVEL", default_value = "info", global = true,
          value_parser = telemetry::parse_filter)]
    log_level: String,
    /// `text` or `json`.
    #[arg(long, env = "KV_LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,
    /// Tokio worker threads (default: one per CPU the process may use). Fewer help when
    /// several servers share a few cores (see docs/benchmarks.md); the writer thread and
    /// SQLite readers are separate threads either way.
    #[arg(long, env = "KV_WORKER_THREADS", global = true)]
    worker_threads: Option<NonZeroUsize>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the storage API (the default when no command is given).
    Serve(Box<ServerConfig>),
    /// Empty every database under a data directory (with --dry-run to preview).
    Clean(CleanArgs),
    /// Check every database under a data directory for damage (read-only; exit code 1 when
    /// one is damaged).
    Check(CheckArgs),
}

fn main() -> ExitCode {
    kv_common::report::exit(run())
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    telemetry::init(&cli.log_level, cli.log_format).map_err(anyhow::Error::msg)?;
    let config = match cli.command {
        Some(Command::Clean(args)) => {
            let stdin = std::io::stdin();
            let outcome = kv_server::clean::run(&args, &mut stdin.lock(), &mut std::io::stdout())?;
            return Ok(ExitCode::from(outcome.exit_code() as u8));
        }
        Some(Command::Check(args)) => {
            let reports = kv_server::check::run(&args, &mut std::io::stdout())?;
            return Ok(ExitCode::from(kv_server::check::exit_code(&reports) as u8));
        }
        Some(Command::Serve(config)) => *config,
        None => cli.serve,
    };
    // Every link, peer connection and database file is a file descriptor.
    kv_common::net::raise_open_files_limit_and_log();
    let runtime =
        kv_common::runtime::build(cli.worker_threads).context("start the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind {}", config.listen))?;
        kv_server::run(listener, config, kv_common::shutdown::signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}
