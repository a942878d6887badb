//! `kvstore versions KEY [--after N] [--limit M] [--all]`: a key's history, oldest first, one
//! page at a time as the API serves it, or every page with `--all`.

use clap::Args;
use serde_json::value::RawValue;

use super::{ClientArgs, GlobalArgs, block_on, client, exit, output};
use crate::Result;
use crate::client::encode_key;

/// The API's largest page.
const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Clone, Args)]
pub struct VersionsArgs {
    /// The key.
    pub key: String,
    /// Only versions after this one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub after: u64,
    /// Versions per page (1-1000; the service's default is 100).
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LIMIT)))]
    pub limit: Option<u32>,
    /// Follow `next_after` to the latest version (`--json`: one object with every version).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Page {
    key: String,
    latest_version: u64,
    versions: Vec<Entry>,
    next_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_used: Option<String>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Entry {
    version: u64,
    value: Box<RawValue>,
    timestamp: f64,
}

pub fn command(global: &GlobalArgs, args: &VersionsArgs) -> Result<u8> {
    let client = client(global, &args.client)?;
    let key = encode_key(&args.key);
    block_on(async {
        let mut after = args.after;
        let mut all: Option<Page> = None;
        loop {
            let mut path = format!("/versions/{key}?after={after}");
            // `--all` takes the largest pages: fewer round trips.
            match (args.limit, args.all) {
                (Some(limit), _) => path.push_str(&format!("&limit={limit}")),
                (None, true) => path.push_str(&format!("&limit={MAX_LIMIT}")),
                (None, false) => {}
            }
            let answer = client.get(&path).await?.ok()?;
            if !args.all {
                if global.json {
                    println!("{}", answer.text());
                } else {
                    print_page(&answer.parse()?, false);
                }
                return Ok(exit::SUCCESS);
            }
            let page: Page = answer.parse()?;
            let next = page.next_after;
            all = Some(match all {
                None => page,
                Some(mut so_far) => {
                    so_far.versions.extend(page.versions);
                    so_far.latest_version = page.latest_version;
                    so_far.next_after = page.next_after;
                    so_far
                }
            });
            match next {
                // A service that does not move forward would loop forever.
                Some(next) if next > after => after = next,
                _ => break,
            }
        }
        let all = all.expect("at least one page");
        if global.json {
            println!(
                "{}",
                serde_json::to_string(&all).expect("a page serializes")
            );
        } else {
            print_page(&all, true);
        }
        Ok(exit::SUCCESS)
    })
}

fn print_page(page: &Page, whole: bool) {
    let server = page
        .server_used
        .as_ref()
        .map(|s| format!(", on {s}"))
        .unwrap_or_default();
    println!(
        "{:?}: latest version {}{server}",
        page.key, page.latest_version
    );
    if page.versions.is_empty() {
        println!("no versions in this range");
    } else {
        let mut rows = vec![vec!["VERSION".into(), "WRITTEN".into(), "VALUE".into()]];
        rows.extend(page.versions.iter().map(|e| {
            vec![
                e.version.to_string(),
                output::time(e.timestamp),
                output::one_line(&e.value, 60),
            ]
        }));
        print!("{}", output::table(&rows));
    }
    if let (Some(next), false) = (page.next_after, whole) {
        println!("more: --after {next} (or --all)");
    }
}
