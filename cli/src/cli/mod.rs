//! Command-line surface: global flags, one subcommand per file, and the exit codes scripts can
//! rely on. Each subcommand builds the runtime it needs, so a quick client command does not pay
//! for a thread pool sized for a load test.

mod bench;

use std::error::Error as _;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::bench::BenchArgs;

/// Where the local gateway listens (`kvstore up`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8000";

/// Exit codes.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    /// The command failed (including: a bench where every request failed).
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
}

/// kvstore: a distributed versioned key-value store.
#[derive(Debug, Parser)]
#[command(name = "kvstore", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand understands.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Base URL of the gateway (or of one server).
    #[arg(long, global = true, env = "KVSTORE_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Print one JSON object on stdout instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load generator: N connections sending GETs and PUTs, then throughput and latency
    /// percentiles.
    Bench(BenchArgs),
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result = match &cli.command {
        Command::Bench(args) => bench::command(&cli.global, args),
    };
    match result {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(error) => {
            let mut message = format!("error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["kvstore", "bench", "--url", "http://h:1", "--json"]).unwrap();
        assert_eq!(cli.global.url, "http://h:1");
        assert!(cli.global.json);
        let cli = Cli::try_parse_from(["kvstore", "--json", "bench", "-c", "3"]).unwrap();
        assert!(cli.global.json);
        let Command::Bench(args) = cli.command;
        assert_eq!(args.connections, 3);
    }

    #[test]
    fn a_bad_flag_is_a_usage_error() {
        let err = Cli::try_parse_from(["kvstore", "bench", "--read-ratio", "2"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
    }
}
