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
    replication_factor: Option<usize>,
    #[serde(default)]
    write_quorum: Option<usize>,
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Debug, serde::Deserialize)]
struct Member {
    name: String,
    url: String,
    health: String,
    ring_share: f64,
    /// Absent without replication; `false` while a new database catches up with its peers.
    #[serde(default)]
    synced: Option<bool>,
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
        print!("{}", render(&servers));
        Ok(exit::SUCCESS)
    })
}

/// The table and its summary line. With replication every server holds the keys of several
/// ring ranges, so the share column is the keys each is the primary of, and says so.
fn render(servers: &ServersAnswer) -> String {
    let replicated = servers.replication_factor.filter(|&r| r > 1);
    let share = if replicated.is_some() {
        "PRIMARY"
    } else {
        "KEYS"
    };
    let mut rows = vec![vec![
        "NAME".into(),
        "HEALTH".into(),
        share.into(),
        "URL".into(),
    ]];
    for name in &servers.servers {
        let row = match servers.members.iter().find(|m| &m.name == name) {
            Some(m) => vec![
                m.name.clone(),
                match m.synced {
                    Some(false) if m.health == "up" => "up, syncing".into(),
                    _ => m.health.clone(),
                },
                format!("{:.1}%", m.ring_share * 100.0),
                m.url.clone(),
            ],
            None => vec![name.clone(), "?".into(), "?".into(), "?".into()],
        };
        rows.push(row);
    }
    let mut text = output::table(&rows);
    let count = servers.servers.len();
    text.push_str(&format!(
        "{count} server{}",
        if count == 1 { "" } else { "s" }
    ));
    if let Some(vnodes) = servers.vnodes {
        text.push_str(&format!(", {vnodes} virtual nodes each"));
    }
    if let Some(epoch) = servers.epoch {
        text.push_str(&format!(", ring epoch {epoch}"));
    }
    match replicated {
        Some(r) => {
            let held = r.min(count);
            text.push_str(&format!(
                " (PRIMARY: share of the hash ring; each key is also kept on the next {} \
                 servers clockwise",
                held.saturating_sub(1)
            ));
            if let Some(w) = servers.write_quorum {
                text.push_str(&format!(", a put is answered once {w} hold it"));
            }
            text.push_str(")\n");
        }
        None => text.push_str(" (KEYS: share of the hash ring)\n"),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: serde_json::Value) -> ServersAnswer {
        serde_json::from_value(json).unwrap()
    }

    fn member(name: &str, health: &str, synced: Option<bool>) -> serde_json::Value {
        let mut m = serde_json::json!({"name": name, "url": format!("http://{name}"),
            "health": health, "ring_share": 0.5});
        if let Some(synced) = synced {
            m["synced"] = synced.into();
        }
        m
    }

    #[test]
    fn without_replication_the_share_is_of_the_keys() {
        let text = render(&answer(serde_json::json!({
            "servers": ["a", "b"], "vnodes": 150, "epoch": 1, "replication_factor": 1,
            "members": [member("a", "up", None), member("b", "down", None)]})));
        assert!(text.starts_with("NAME  HEALTH  KEYS"), "{text}");
        assert!(text.contains("b     down    50.0%"), "{text}");
        assert!(
            text.ends_with(
                "2 servers, 150 virtual nodes each, ring epoch 1 (KEYS: share of the hash ring)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn with_replication_the_share_is_of_the_primaries_and_syncing_shows() {
        let text = render(&answer(serde_json::json!({
            "servers": ["a", "b", "c"], "replication_factor": 3, "write_quorum": 2,
            "members": [member("a", "up", Some(true)), member("b", "up", Some(false)),
                        member("c", "down", Some(false))]})));
        assert!(text.starts_with("NAME  HEALTH       PRIMARY"), "{text}");
        assert!(text.contains("b     up, syncing  50.0%"), "{text}");
        assert!(text.contains("c     down         50.0%"), "{text}");
        assert!(
            text.ends_with(
                "3 servers (PRIMARY: share of the hash ring; each key is also kept on the next \
                 2 servers clockwise, a put is answered once 2 hold it)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_older_gateway_answer_still_reads() {
        let text = render(&answer(serde_json::json!({"servers": ["a"]})));
        assert!(text.contains("a     ?"), "{text}");
        assert!(
            text.ends_with("1 server (KEYS: share of the hash ring)\n"),
            "{text}"
        );
    }
}
