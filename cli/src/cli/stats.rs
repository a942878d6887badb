//! `kvstore stats [--server NAME]`: each server's cache and database statistics, asked through
//! the gateway (`/cache/stats?server=NAME`, `/db/stats?server=NAME`). Pointed at a single
//! server (`--url` of a kv-server, which has no `/servers`), it shows that server's.

use clap::Args;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use super::servers::ServersAnswer;
use super::{ClientArgs, GlobalArgs, block_on, client, exit, output};
use crate::client::Client;
use crate::{Error, Result};

#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Only this server (a name from `kvstore servers`).
    #[arg(long, value_name = "NAME")]
    pub server: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One server's statistics, as the service sent them.
struct ServerStats {
    name: String,
    result: Result<(Value, Value)>,
}

pub fn command(global: &GlobalArgs, args: &StatsArgs) -> Result<u8> {
    let client = client(global, &args.client)?;
    block_on(async {
        let all = match &args.server {
            // One server asked for: its error is the command's error (exit 2 for a bad name).
            Some(name) => {
                let stats = fetch(&client, Some(name)).await?;
                vec![ServerStats {
                    name: name.clone(),
                    result: Ok(stats),
                }]
            }
            None => every_server(&client).await?,
        };
        print(&all, global.json);
        let failed: Vec<&str> = all
            .iter()
            .filter(|s| s.result.is_err())
            .map(|s| s.name.as_str())
            .collect();
        if failed.is_empty() {
            Ok(exit::SUCCESS)
        } else {
            Err(Error::Internal(format!(
                "no statistics from {}",
                failed.join(", ")
            )))
        }
    })
}

async fn every_server(client: &Client) -> Result<Vec<ServerStats>> {
    let names = match client.get("/servers").await?.ok() {
        Ok(answer) => answer.parse::<ServersAnswer>()?.servers,
        // A kv-server, not a gateway: its own statistics.
        Err(Error::Http {
            status: 404, code, ..
        }) if code == "not_found" => {
            let stats = fetch(client, None).await?;
            let name = stats.0["node_name"].as_str().unwrap_or("server").to_owned();
            return Ok(vec![ServerStats {
                name,
                result: Ok(stats),
            }]);
        }
        Err(e) => return Err(e),
    };
    let mut all = Vec::new();
    for name in names {
        let result = fetch(client, Some(&name)).await;
        all.push(ServerStats { name, result });
    }
    Ok(all)
}

/// `(cache stats, db stats)` of `server`, or of the server at the URL when `None`.
async fn fetch(client: &Client, server: Option<&str>) -> Result<(Value, Value)> {
    let query = server
        .map(|s| format!("?server={}", utf8_percent_encode(s, NON_ALPHANUMERIC)))
        .unwrap_or_default();
    let cache = client.get(&format!("/cache/stats{query}")).await?.ok()?;
    let db = client.get(&format!("/db/stats{query}")).await?.ok()?;
    Ok((cache.parse()?, db.parse()?))
}

fn print(all: &[ServerStats], json: bool) {
    if json {
        let servers: Vec<Value> = all
            .iter()
            .map(|s| match &s.result {
                Ok((cache, db)) => serde_json::json!({"name": s.name, "cache": cache, "db": db}),
                Err(e) => serde_json::json!({"name": s.name, "error": e.to_string()}),
            })
            .collect();
        println!("{}", serde_json::json!({ "servers": servers }));
        return;
    }
    for s in all {
        println!("{}", s.name);
        match &s.result {
            Ok((cache, db)) => {
                println!("  cache  {}", describe_cache(cache));
                println!("  db     {}", describe_db(db));
            }
            Err(e) => println!("  error  {e}"),
        }
    }
}

fn describe_cache(c: &Value) -> String {
    let n = |field: &str| c[field].as_u64().unwrap_or(0);
    format!(
        "{}/{} keys, {} hits, {} misses ({:.1}% hits), {} evictions, entries expire after {} min",
        n("current_size"),
        n("max_size"),
        n("hits"),
        n("misses"),
        c["hit_ratio"].as_f64().unwrap_or(0.0) * 100.0,
        n("evictions"),
        c["expiration_minutes"].as_f64().unwrap_or(0.0),
    )
}

fn describe_db(d: &Value) -> String {
    let n = |field: &str| d[field].as_u64().unwrap_or(0);
    let mut line = format!(
        "{} keys, {} versions, {} (+ {} write-ahead log)",
        n("total_keys"),
        n("total_versions"),
        output::bytes(n("database_size_bytes")),
        output::bytes(n("wal_size_bytes")),
    );
    // Older servers do not say.
    if let (Some(available), Some(size)) = (
        d["volume_available_bytes"].as_u64(),
        d["volume_size_bytes"].as_u64(),
    ) {
        line += &format!(
            "; volume {} free of {}",
            output::bytes(available),
            output::bytes(size)
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_db_line_says_the_volume_when_the_server_does() {
        let older = serde_json::json!({
            "total_keys": 2, "total_versions": 3,
            "database_size_bytes": 4096, "wal_size_bytes": 0,
        });
        assert_eq!(
            describe_db(&older),
            "2 keys, 3 versions, 4.0 KiB (+ 0 B write-ahead log)"
        );
        let mut newer = older.clone();
        newer["volume_available_bytes"] = (3u64 << 30).into();
        newer["volume_size_bytes"] = (10u64 << 30).into();
        assert_eq!(
            describe_db(&newer),
            "2 keys, 3 versions, 4.0 KiB (+ 0 B write-ahead log); volume 3.0 GiB free of 10.0 GiB"
        );
    }
}
