//! `kvstore put KEY VALUE`: stores a new version. The value is JSON when it parses as JSON
//! (`42`, `true`, `{"a": 1}`, `"text"`), otherwise the text as a JSON string, so that
//! `kvstore put greeting hello` just works.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::{ArgGroup, Args};
use http::Method;
use serde_json::value::RawValue;

use super::{ClientArgs, GlobalArgs, block_on, client, exit};
use crate::client::encode_key;
use crate::{Error, Result};

#[derive(Debug, Clone, Args)]
#[command(
    group(ArgGroup::new("input").required(true).args(["value", "file"])),
    override_usage = "kvstore put [OPTIONS] <KEY> <VALUE | - | --file PATH>"
)]
pub struct PutArgs {
    /// The key: any UTF-8 text, `/` and spaces included.
    pub key: String,
    /// The value: JSON if it parses as JSON, else a string. `-` reads standard input.
    #[arg(allow_negative_numbers = true)]
    pub value: Option<String>,
    /// Read the value from a file (`-`: standard input). Text read this way loses one final
    /// newline, as in a shell's `$(...)`.
    #[arg(long, short, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Store the text as a string even if it parses as JSON (`--string 42` stores "42").
    #[arg(long, short)]
    pub string: bool,
    /// Store only if the key's latest version is N (0: only if the key is new); otherwise
    /// nothing is stored and the exit code is 4.
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(serde::Deserialize)]
struct PutAnswer {
    key: String,
    version: u64,
    previous_version: Option<u64>,
    server_used: Option<String>,
}

pub fn command(global: &GlobalArgs, args: &PutArgs) -> Result<u8> {
    let text = match (&args.value, &args.file) {
        (Some(value), _) if value == "-" => read_input(Path::new("-"))?,
        (Some(value), _) => value.clone(),
        (None, Some(path)) => read_input(path)?,
        (None, None) => unreachable!("clap requires VALUE or --file"),
    };
    let body = Bytes::from(format!(r#"{{"value":{}}}"#, json_value(&text, args.string)));
    let mut path = format!("/put/{}", encode_key(&args.key));
    if let Some(version) = args.if_version {
        path.push_str(&format!("?if_version={version}"));
    }
    let client = client(global, &args.client)?;
    block_on(async {
        let answer = client.send(Method::PUT, &path, Some(body)).await?.ok()?;
        if global.json {
            println!("{}", answer.text());
            return Ok(exit::SUCCESS);
        }
        let put: PutAnswer = answer.parse()?;
        let server = put
            .server_used
            .map(|s| format!(" on {s}"))
            .unwrap_or_default();
        match put.previous_version {
            None => println!("created {:?} version {}{server}", put.key, put.version),
            Some(previous) => println!(
                "updated {:?} to version {} (was {previous}){server}",
                put.key, put.version
            ),
        }
        Ok(exit::SUCCESS)
    })
}

/// The JSON text to send for `text`: itself when it is JSON (surrounding whitespace trimmed),
/// else a JSON string.
fn json_value(text: &str, force_string: bool) -> String {
    if !force_string && let Ok(raw) = serde_json::from_str::<&RawValue>(text.trim()) {
        return raw.get().to_owned();
    }
    serde_json::to_string(text).expect("a string serializes")
}

/// The text of a file, or of standard input for `-`, without one final newline.
fn read_input(path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    let (result, name) = if path == Path::new("-") {
        (
            std::io::stdin().lock().read_to_end(&mut bytes),
            "standard input".to_owned(),
        )
    } else {
        (
            std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)),
            path.display().to_string(),
        )
    };
    result.map_err(|source| Error::Io {
        context: format!("cannot read the value from {name}"),
        source,
    })?;
    let mut text = String::from_utf8(bytes).map_err(|_| {
        Error::Config(format!(
            "the value in {name} is not UTF-8 text (values are JSON)"
        ))
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_when_it_parses_else_a_string() {
        assert_eq!(json_value("42", false), "42");
        assert_eq!(json_value(" {\"a\": 1}\n", false), "{\"a\": 1}");
        assert_eq!(
            json_value("12345678901234567890123", false),
            "12345678901234567890123"
        );
        assert_eq!(json_value("\"quoted\"", false), "\"quoted\"");
        assert_eq!(json_value("hello world", false), "\"hello world\"");
        assert_eq!(json_value("", false), "\"\"");
        assert_eq!(json_value("{broken", false), "\"{broken\"");
        assert_eq!(json_value("42", true), "\"42\"");
        assert_eq!(json_value("a\"b\n", true), "\"a\\\"b\\n\"");
    }
}
