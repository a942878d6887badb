//! `kvstore get KEY [--version N]`: the latest version of a key, or an exact one.

use clap::Args;
use serde_json::value::RawValue;

use super::{ClientArgs, GlobalArgs, block_on, client, exit, output};
use crate::Result;
use crate::client::encode_key;

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// An exact version instead of the latest (exit code 3 if it does not exist).
    #[arg(long, value_name = "N")]
    pub version: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(serde::Deserialize)]
struct GetAnswer {
    value: Box<RawValue>,
    version: u64,
    timestamp: f64,
    source: Option<String>,
    server_used: Option<String>,
}

pub fn command(global: &GlobalArgs, args: &GetArgs) -> Result<u8> {
    let mut path = format!("/get/{}", encode_key(&args.key));
    if let Some(version) = args.version {
        path.push_str(&format!("?version={version}"));
    }
    let client = client(global, &args.client)?;
    block_on(async {
        let answer = client.get(&path).await?.ok()?;
        if global.json {
            println!("{}", answer.text());
            return Ok(exit::SUCCESS);
        }
        let got: GetAnswer = answer.parse()?;
        let mut rows = vec![
            vec!["key".to_owned(), format!("{:?}", args.key)],
            vec![
                "version".to_owned(),
                format!("{} (written {})", got.version, output::time(got.timestamp)),
            ],
        ];
        let from = got.source.map(|s| format!("from {s}"));
        let server = match (got.server_used, from) {
            (Some(server), Some(from)) => Some(format!("{server} ({from})")),
            (server, from) => server.or(from),
        };
        if let Some(server) = server {
            rows.push(vec!["server".to_owned(), server]);
        }
        let value = output::pretty(&got.value);
        // A multi-line value goes below, unindented, so it can be copied as it is.
        let multi_line = value.contains('\n');
        rows.push(vec![
            "value".to_owned(),
            if multi_line {
                String::new()
            } else {
                value.clone()
            },
        ]);
        print!("{}", output::table(&rows));
        if multi_line {
            println!("{value}");
        }
        Ok(exit::SUCCESS)
    })
}
