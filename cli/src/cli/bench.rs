//! `kvstore bench`: runs [`crate::bench`] on a runtime with `--threads` workers, with a live
//! progress line on stderr, then prints the table (or `--json`) on stdout.

use std::io::{IsTerminal, Write};

use super::GlobalArgs;
use crate::bench::{self, BenchArgs, Progress, Report};
use crate::{Error, Result};

pub fn command(global: &GlobalArgs, args: &BenchArgs) -> Result<()> {
    let config = args.to_config(&global.url)?;
    // Each connection is a file descriptor: `-c 2000` needs more than the soft limit of 1024
    // many shells start with. Best effort: a refusal shows as connection errors in the report.
    let _ = kv_common::net::raise_open_files_limit();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().build().map_err(Error::Runtime)?;

    let tty = std::io::stderr().is_terminal();
    if config.warmup {
        eprintln!("warm-up: writing {} keys...", config.keys);
    }
    let on_progress = |p: &Progress| print_progress(p, tty);
    let ctrl_c = async {
        // If the handler cannot be installed, Ctrl-C just kills the process as usual.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let report = runtime.block_on(bench::run_with(&config, on_progress, ctrl_c))?;
    if tty {
        // Clear the progress line.
        eprint!("\r\x1b[2K");
    }
    print_report(&report, global.json);
    if report.all_failed() {
        let causes = if report.total.requests == 0 {
            "interrupted before any request was sent".to_owned()
        } else {
            bench::report::describe_errors(&report.total.errors)
        };
        return Err(Error::AllFailed { causes });
    }
    Ok(())
}

fn print_progress(progress: &Progress, tty: bool) {
    let mut stderr = std::io::stderr().lock();
    // On a terminal the line is rewritten in place; in a log, one line a second.
    let _ = if tty {
        write!(stderr, "\r\x1b[2K{progress}")
    } else {
        writeln!(stderr, "{progress}")
    };
    let _ = stderr.flush();
}

fn print_report(report: &Report, json: bool) {
    if json {
        let json = serde_json::to_string(report).expect("a report serializes");
        println!("{json}");
    } else {
        print!("{}", report.human());
    }
}
