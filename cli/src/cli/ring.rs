//! `kvstore ring`: see and change which servers own key ranges (docs/rebalancing.md).
//!
//! `show` prints one server's ring state; `apply` moves a running cluster to a new member
//! list while it serves (the local and docker-compose equivalent of `kubectl scale`): start
//! the new servers first (their `--peers` naming any current member), run `apply`, stop
//! removed servers once it is done.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kv_common::ring_config::{RingMember, RingView};
use kv_rebalance::{Coordinator, Phase, Progress, Target};

use super::{GlobalArgs, block_on, exit};
use crate::bench::config::parse_duration;
use crate::client::Client;
use crate::{Error, Result};

#[derive(Debug, Clone, Args)]
pub struct RingArgs {
    #[command(subcommand)]
    pub command: RingCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum RingCommand {
    /// Print a server's ring state: epoch, members, and any transition under way.
    Show(ShowArgs),
    /// Move the cluster to exactly these members, moving every version of the keys that
    /// change hands while clients keep reading and writing.
    Apply(ApplyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// A server (not the gateway): `http://host:port`.
    #[arg(long)]
    pub server: String,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Every member of the new ring, `NAME=URL` (repeat, or comma-separated). Servers not in
    /// the list leave the ring; their keys move to the others.
    #[arg(long = "member", required = true, value_delimiter = ',', value_parser = parse_member)]
    pub members: Vec<RingMember>,
    /// Servers to ask first, `NAME=URL` (default: the members). Name the leaving servers
    /// here if no member knows them yet.
    #[arg(long = "seed", value_delimiter = ',', value_parser = parse_member)]
    pub seeds: Vec<RingMember>,
    /// Replication factor of the new ring (default: the current one).
    #[arg(long)]
    pub replication_factor: Option<usize>,
    /// Virtual nodes per server of the new ring (default: the current one). Changing it
    /// moves most keys.
    #[arg(long)]
    pub vnodes: Option<usize>,
    /// Give up after this long (a server the move waits for may be down).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Time each request to a server may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

fn parse_member(s: &str) -> Result<RingMember, String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=URL, got '{s}'"))?;
    if name.is_empty() || !url.starts_with("http://") {
        return Err(format!("expected NAME=http://host:port, got '{s}'"));
    }
    Ok(RingMember {
        name: name.to_owned(),
        url: url.trim_end_matches('/').to_owned(),
    })
}

pub fn command(global: &GlobalArgs, args: &RingArgs) -> Result<u8> {
    match &args.command {
        RingCommand::Show(show) => block_on(self::show(global, show)),
        RingCommand::Apply(apply) => block_on(self::apply(global, apply)),
    }
}

async fn show(global: &GlobalArgs, args: &ShowArgs) -> Result<u8> {
    let client = Client::new(&args.server, Duration::from_secs(10))?;
    let answer = client.get("/internal/ring").await?.ok()?;
    if global.json {
        println!("{}", answer.text());
        return Ok(exit::SUCCESS);
    }
    let view: RingView = answer.parse()?;
    let state = &view.state;
    println!(
        "{}: ring epoch {}, {} members, R={}, vnodes={}{}",
        view.name,
        state.current.epoch,
        state.current.members.len(),
        state.current.factor(),
        state.current.vnodes,
        if view.synced { "" } else { " (syncing)" }
    );
    for m in &state.current.members {
        println!("  {:<16} {}", m.name, m.url);
    }
    if let Some(next) = &state.next {
        println!(
            "moving to epoch {} ({}): {}; this server {}",
            next.epoch,
            if state.frozen { "draining" } else { "copying" },
            next.names().join(", "),
            if view.copied {
                "copied its keys"
            } else {
                "is copying"
            }
        );
    }
    if view.cleanup_pending {
        println!("clean-up of keys it no longer holds pending");
    }
    Ok(exit::SUCCESS)
}

async fn apply(global: &GlobalArgs, args: &ApplyArgs) -> Result<u8> {
    let target = Target {
        members: args.members.clone(),
        vnodes: args.vnodes,
        replication_factor: args.replication_factor,
    };
    let seeds = if args.seeds.is_empty() {
        args.members.clone()
    } else {
        args.seeds.clone()
    };
    let started = Instant::now();
    let mut last_line = String::new();
    let mut report = |p: &Progress| {
        let line = progress_line(p);
        // One line per change, not per poll.
        if line != last_line && !global.json {
            eprintln!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64());
            last_line = line;
        }
    };
    let coordinator = Coordinator::new(args.request_timeout);
    let done = coordinator
        .run(
            &seeds,
            &target,
            Duration::from_millis(200),
            args.timeout,
            &mut report,
        )
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    let took = started.elapsed().as_secs_f64();
    if global.json {
        println!(
            "{}",
            serde_json::json!({"epoch": done.epoch, "seconds": took,
                "members": target.members.iter().map(|m| &m.name).collect::<Vec<_>>()})
        );
    } else {
        println!("ring epoch {} in force after {took:.1} s", done.epoch);
    }
    Ok(exit::SUCCESS)
}

fn progress_line(p: &Progress) -> String {
    let mut line = format!("{:<10} {}", p.phase.as_str(), p.message);
    if p.phase == Phase::Copying {
        line.push_str(&format!(
            " ({}/{} servers copied, {} versions)",
            p.copied_servers.0, p.copied_servers.1, p.copied_versions
        ));
    }
    if !p.waiting_for.is_empty() {
        line.push_str(&format!(" [{}]", p.waiting_for.join(", ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_as_name_equals_url() {
        let m = parse_member("s1=http://127.0.0.1:9001/").unwrap();
        assert_eq!(m.name, "s1");
        assert_eq!(m.url, "http://127.0.0.1:9001");
        for bad in ["s1", "=http://x:1", "s1=x:1", "s1=https://x:1"] {
            assert!(parse_member(bad).is_err(), "{bad}");
        }
    }
}
