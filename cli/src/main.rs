//! `kvstore`: see `kvstore --help`. Everything is in the library; this only parses and exits.

use clap::Parser;

fn main() -> std::process::ExitCode {
    kvstore::cli::run(kvstore::cli::Cli::parse())
}
