//! `kvstore servers`: the gateway's ring members, their health and their share of the keys.

use clap::Args;

use super::{ClientArgs, GlobalArgs, block_on, client, exit, output};
use crate::Result;

#[derive(Debug, Clone, Args)]
pub struct ServersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `GET /servers`, read loosely (only `servers` is required) so an older gateway still works.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ServersAnswer {
    pub servers: Vec<String>,
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    vnodes: Option<usize>,
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Debug, serde::Deserialize)]
struct Member {
    name: String,
    url: String,
    health: String,
    ring_share: f64,
}

pub fn command(global: &GlobalArgs, args: &ServersArgs) -> Result<u8> {
    let client = client(global, &args.client)?;
    block_on(async {
        let answer = client.get("/servers").await?.ok()?;
        if global.json {
            println!("{}", answer.text());
            return Ok(exit::SUCCESS);
        }
        let servers: ServersAnswer = answer.parse()?;
        let mut rows = vec![vec![
            "NAME".into(),
            "HEALTH".into(),
            "KEYS".into(),
            "URL".into(),
        ]];
        for name in &servers.servers {
            let row = match servers.members.iter().find(|m| &m.name == name) {
                Some(m) => vec![
                    m.name.clone(),
                    m.health.clone(),
                    format!("{:.1}%", m.ring_share * 100.0),
                    m.url.clone(),
                ],
                None => vec![name.clone(), "?".into(), "?".into(), "?".into()],
            };
            rows.push(row);
        }
        print!("{}", output::table(&rows));
        let mut summary = format!("{} servers", servers.servers.len());
        if let Some(vnodes) = servers.vnodes {
            summary.push_str(&format!(", {vnodes} virtual nodes each"));
        }
        if let Some(epoch) = servers.epoch {
            summary.push_str(&format!(", ring epoch {epoch}"));
        }
        println!("{summary} (KEYS: share of the hash ring)");
        Ok(exit::SUCCESS)
    })
}
