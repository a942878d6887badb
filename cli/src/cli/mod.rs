//! Command-line surface: global flags, one subcommand per file, and the exit codes scripts can
//! rely on. Each subcommand builds the runtime it needs, so a quick client command does not pay
//! for a thread pool sized for a load test.

mod backup;
mod bench;
mod check;
mod clean;
mod get;
mod output;
mod put;
mod restore;
mod ring;
mod servers;
mod stats;
mod up;
mod versions;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::bench::BenchArgs;
use crate::bench::config::parse_duration;
use crate::client::{Client, DEFAULT_TIMEOUT};
use crate::{Error, Result};

pub use backup::{BackupArgs, Manifest};
pub use check::CheckArgs;
pub use clean::CleanArgs;
pub use get::GetArgs;
pub use put::PutArgs;
pub use restore::{MigrateSeedArgs, RestoreArgs};
pub use ring::{ApplyArgs, RingArgs, RingCommand, ShowArgs};
pub use servers::ServersArgs;
pub use stats::StatsArgs;
pub use up::UpArgs;
pub use versions::VersionsArgs;

/// Where the local gateway listens (`kvstore up`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8000";

/// Exit codes, the same for every subcommand (`kvstore clean` keeps `kv-server clean`'s: 2 when
/// a running server holds a database).
pub mod exit {
    pub const SUCCESS: u8 = 0;
    /// The command failed: network error, timeout, 5xx, a bench where every request failed.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code), or a 4xx answer other than the two below.
    pub const USAGE: u8 = 2;
    /// The key, or the version asked for, does not exist (404).
    pub const NOT_FOUND: u8 = 3;
    /// `put --if-version N` and the key is not at version N (412).
    pub const CONFLICT: u8 = 4;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure: cannot reach the gateway, timeout, server error (5xx)
  2  bad command line, or a request the service refused (4xx other than 3 and 4)
  3  not found: no such key, or no such version of it (404)
  4  conflict: `put --if-version N` and the key is not at version N (412)
`kvstore clean` keeps `kv-server clean`'s codes: 2 when a running server holds a database.
`kvstore check`: 1 when a database is damaged.
`kvstore restore` and `migrate-seed`: 1 when the backup is corrupted or incomplete, 2 when a
target database is held by a running server or exists (without --force).";

/// kvstore: a distributed versioned key-value store.
///
/// `kvstore up` runs a local cluster; `put`, `get`, `versions`, `servers` and `stats` talk to a
/// gateway (`--url`, by default the local one).
#[derive(Debug, Parser)]
#[command(name = "kvstore", version, after_help = EXIT_CODES)]
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
    /// Print JSON on stdout instead of human-readable text (for `put`, `get`, `versions` and
    /// `servers`: the service's answer as it is).
    #[arg(long, global = true)]
    pub json: bool,
}

/// Flags of the commands that send requests to `--url`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Time each request may take, e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl Default for ClientArgs {
    fn default() -> Self {
        ClientArgs {
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local cluster (servers and gateway in this process) until Ctrl-C.
    Up(UpArgs),
    /// Store a new version of a key.
    Put(PutArgs),
    /// Read the latest version of a key, or `--version N`.
    Get(GetArgs),
    /// List a key's versions, oldest first.
    Versions(VersionsArgs),
    /// List the servers on the gateway's ring, with their health.
    Servers(ServersArgs),
    /// Cache and database statistics of every server, or of `--server NAME`.
    Stats(StatsArgs),
    /// Empty every database under a data directory (`--dry-run` to preview).
    Clean(CleanArgs),
    /// Check every database under a data directory for damage (read-only).
    Check(CheckArgs),
    /// Snapshot every server of the ring, consistently while it serves, into `--out DIR`
    /// (`<name>.db` each, plus `manifest.json`).
    Backup(BackupArgs),
    /// Check a backup (manifest and checksums), then write it into `--data-dir DIR`.
    Restore(RestoreArgs),
    /// Copy a seed cluster's `data/server-N/kv_store.db` files into a kvstore data directory.
    MigrateSeed(MigrateSeedArgs),
    /// See or change the servers owning key ranges: `ring apply` moves a running cluster to a
    /// new member list, moving the data (docs/rebalancing.md).
    Ring(RingArgs),
    /// Load generator: N connections sending GETs and PUTs, then throughput and latency
    /// percentiles.
    Bench(BenchArgs),
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let global = &cli.global;
    let result = match &cli.command {
        Command::Up(args) => up::command(global, args),
        Command::Put(args) => put::command(global, args),
        Command::Get(args) => get::command(global, args),
        Command::Versions(args) => versions::command(global, args),
        Command::Servers(args) => servers::command(global, args),
        Command::Stats(args) => stats::command(global, args),
        Command::Clean(args) => clean::command(args),
        Command::Check(args) => check::command(args),
        Command::Backup(args) => backup::command(global, args),
        Command::Restore(args) => restore::restore(args),
        Command::MigrateSeed(args) => restore::migrate_seed(args),
        Command::Ring(args) => ring::command(global, args),
        Command::Bench(args) => bench::command(global, args).map(|()| exit::SUCCESS),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {}", kv_common::report::chain(&error));
            ExitCode::from(error.exit_code())
        }
    }
}

/// Runs a client command's future on a small runtime: one request at a time needs no pool.
fn block_on(future: impl Future<Output = Result<u8>>) -> Result<u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?
        .block_on(future)
}

fn client(global: &GlobalArgs, args: &ClientArgs) -> Result<Client> {
    Client::new(&global.url, args.timeout)
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
        let Command::Bench(args) = cli.command else {
            panic!("not bench");
        };
        assert_eq!(args.connections, 3);
    }

    #[test]
    fn up_takes_sizes_with_suffixes() {
        let cli = Cli::try_parse_from(["kvstore", "up", "--max-value-bytes", "64Mi"]).unwrap();
        let Command::Up(args) = cli.command else {
            panic!("not up");
        };
        assert_eq!(args.cluster.max_value_bytes, 64 << 20);
    }

    #[test]
    fn a_bad_flag_is_a_usage_error() {
        let err = Cli::try_parse_from(["kvstore", "bench", "--read-ratio", "2"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
    }

    #[test]
    fn values_that_look_like_flags_or_negative_numbers() {
        let cli = Cli::try_parse_from(["kvstore", "put", "k", "-5", "--json"]).unwrap();
        let Command::Put(args) = cli.command else {
            panic!("not put");
        };
        assert_eq!(args.value.as_deref(), Some("-5"));
        assert!(cli.global.json);
        let cli = Cli::try_parse_from(["kvstore", "put", "k", "-"]).unwrap();
        let Command::Put(args) = cli.command else {
            panic!("not put");
        };
        assert_eq!(args.value.as_deref(), Some("-"));
        // A value is required, from the command line or a file, not both.
        for bad in [
            &["kvstore", "put", "k"][..],
            &["kvstore", "put", "k", "v", "--file", "f"],
        ] {
            let err = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(exit::USAGE), "{bad:?}");
        }
    }
}
