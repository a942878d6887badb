//! `kvstore backup --out DIR`: a consistent snapshot of every server of the ring, taken
//! through the gateway's `/admin/snapshot?server=NAME` while the cluster serves, one
//! `<name>.db` per server plus `manifest.json` (written last: a folder without it is an
//! incomplete backup). Each file is consistent on its own (one commit of that server); the
//! servers are snapshotted one after the other, not at one instant.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as Pool;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kv_server::http::admin::{KEYS_HEADER, SHA256_HEADER, VERSIONS_HEADER};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{GlobalArgs, block_on, exit, output};
use crate::bench::config::parse_duration;
use crate::{Error, Result};

/// Name of the manifest in a backup folder.
pub const MANIFEST: &str = "manifest.json";
/// What `format` says in a manifest; `format_version` is [`FORMAT_VERSION`].
pub const FORMAT: &str = "kvstore-backup";
pub const FORMAT_VERSION: u32 = 1;

/// What a backup folder holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// When the backup finished, Unix seconds, and the same as text (UTC).
    pub created_at: f64,
    pub created: String,
    pub gateway_url: String,
    pub ring: Ring,
    pub servers: Vec<ServerFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ring {
    pub epoch: Option<u64>,
    pub vnodes: Option<usize>,
    /// Member names: they place keys, so a restore keeps them.
    pub servers: Vec<String>,
    /// Servers holding each key when the backup was taken: with more than one, every key is
    /// in that many of the files. Absent in backups of gateways that do not say it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerFile {
    pub name: String,
    /// File name inside the backup folder: `<name>.db`.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub keys: u64,
    pub versions: u64,
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Folder to write the backup to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace a backup already in that folder.
    #[arg(long)]
    pub force: bool,
    /// API token of the gateway, when it requires one.
    #[arg(long, env = "KVSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Time a server may take to start sending its snapshot (it copies its database first);
    /// the transfer itself has no time limit.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A server name usable as a file name (`server-1`, the seed's `host:port`).
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 200
}

pub fn command(global: &GlobalArgs, args: &BackupArgs) -> Result<u8> {
    let io = |context: String| move |source| Error::Io { context, source };
    if args.out.join(MANIFEST).exists() && !args.force {
        eprintln!(
            "error: {} already holds a backup ({MANIFEST}); choose another --out or pass --force",
            args.out.display()
        );
        return Ok(exit::USAGE);
    }
    std::fs::create_dir_all(&args.out).map_err(io(format!("create {}", args.out.display())))?;
    let http = Http::new(&global.url, args.token.clone(), args.timeout)?;
    block_on(async {
        let ring: ServersAnswer = http.get_json("/servers").await?;
        if let Some(bad) = ring.servers.iter().find(|n| !safe_name(n)) {
            return Err(Error::Protocol {
                url: global.url.clone(),
                why: format!("server name {bad:?} cannot be a file name"),
            });
        }
        eprintln!(
            "backup: {} servers on the ring of {} (epoch {})",
            ring.servers.len(),
            global.url,
            ring.epoch.map_or("?".into(), |e| e.to_string())
        );
        let mut files = Vec::new();
        for (i, name) in ring.servers.iter().enumerate() {
            eprintln!(
                "backup: [{}/{}] {name}: snapshot...",
                i + 1,
                ring.servers.len()
            );
            let file = http.snapshot(name, &args.out).await?;
            eprintln!(
                "backup: [{}/{}] {name}: {} ({} keys, {} versions), sha256 {}",
                i + 1,
                ring.servers.len(),
                output::bytes(file.bytes),
                file.keys,
                file.versions,
                &file.sha256[..12]
            );
            files.push(file);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            created_at: now,
            created: output::time(now),
            gateway_url: global.url.clone(),
            ring: Ring {
                epoch: ring.epoch,
                vnodes: ring.vnodes,
                servers: ring.servers.clone(),
                replication_factor: ring.replication_factor,
            },
            servers: files,
        };
        let text = serde_json::to_string_pretty(&manifest)
            .map_err(|e| Error::Internal(format!("manifest: {e}")))?;
        let path = args.out.join(MANIFEST);
        let partial = args.out.join(format!("{MANIFEST}.partial"));
        std::fs::write(&partial, text + "\n")
            .map_err(io(format!("write {}", partial.display())))?;
        std::fs::rename(&partial, &path).map_err(io(format!("write {}", path.display())))?;
        println!("{}", summary(&manifest, &args.out));
        Ok(exit::SUCCESS)
    })
}

/// The last line of a backup. The files' keys and versions are summed as they are: with
/// replication a key is in several files, so the sum counts its copies, and the line says so
/// rather than pass copies off as keys.
fn summary(manifest: &Manifest, out: &Path) -> String {
    let (keys, versions) = manifest
        .servers
        .iter()
        .fold((0, 0), |(k, v), s| (k + s.keys, v + s.versions));
    let servers = manifest.servers.len();
    let copies = match manifest.ring.replication_factor {
        Some(r) if r > 1 && servers > 1 => format!(
            " (copies: each key is on {} servers, and counts once on each)",
            r.min(servers)
        ),
        _ => String::new(),
    };
    format!(
        "Backed up {servers} servers to {}: {keys} keys, {versions} versions{copies}",
        out.display()
    )
}

#[derive(Debug, Deserialize)]
struct ServersAnswer {
    servers: Vec<String>,
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    vnodes: Option<usize>,
    #[serde(default)]
    replication_factor: Option<usize>,
}

/// Requests to the gateway that may carry a token and stream their answer.
struct Http {
    base: String,
    token: Option<String>,
    timeout: Duration,
    pool: Pool<HttpConnector, Empty<Bytes>>,
}

impl Http {
    fn new(url: &str, token: Option<String>, timeout: Duration) -> Result<Http> {
        crate::bench::config::parse_url(url)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        Ok(Http {
            base: url.trim_end_matches('/').to_owned(),
            token,
            timeout,
            pool: Pool::builder(TokioExecutor::new()).build(connector),
        })
    }

    async fn request(&self, path: &str) -> Result<http::Response<hyper::body::Incoming>> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::get(&url);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::new()).map_err(|e| Error::Url {
            url: url.clone(),
            why: e.to_string(),
        })?;
        let answer = tokio::time::timeout(self.timeout, self.pool.request(request))
            .await
            .map_err(|_| Error::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            })?;
        answer.map_err(|e| {
            if e.is_connect() {
                Error::Unreachable {
                    url: self.base.clone(),
                    cause: e.to_string(),
                }
            } else {
                Error::Request {
                    url,
                    cause: e.to_string(),
                }
            }
        })
    }

    /// A JSON answer; the service's error on a non-2xx status.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let response = self.request(path).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Request {
                url: url.clone(),
                cause: e.to_string(),
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(http_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| Error::Protocol {
            url,
            why: format!("not the expected JSON ({e})"),
        })
    }

    /// Streams `name`'s snapshot into `dir/<name>.db` and checks it against the headers.
    async fn snapshot(&self, name: &str, dir: &Path) -> Result<ServerFile> {
        let path = format!("/admin/snapshot?server={}", crate::client::encode_key(name));
        let url = format!("{}{path}", self.base);
        let response = self.request(&path).await?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(http_error(status, &body));
        }
        let header = |name: &str| -> Option<String> {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let expected_sha = header(SHA256_HEADER);
        let expected_counts = (
            header(KEYS_HEADER).and_then(|v| v.parse::<u64>().ok()),
            header(VERSIONS_HEADER).and_then(|v| v.parse::<u64>().ok()),
        );
        let file_name = format!("{name}.db");
        let target = dir.join(&file_name);
        let partial = dir.join(format!("{file_name}.partial"));
        let io = |context: String| move |source| Error::Io { context, source };
        let mut out = tokio::fs::File::create(&partial)
            .await
            .map_err(io(format!("create {}", partial.display())))?;
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Request {
                url: url.clone(),
                cause: format!("the snapshot of {name} broke off: {e}"),
            })?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)
                    .await
                    .map_err(io(format!("write {}", partial.display())))?;
            }
        }
        out.sync_all()
            .await
            .map_err(io(format!("sync {}", partial.display())))?;
        drop(out);
        let checked = partial.clone();
        let info =
            tokio::task::spawn_blocking(move || kv_server::store::snapshot::inspect(&checked))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
                .map_err(|source| Error::Server {
                    name: format!("the snapshot of {name}"),
                    source,
                })?;
        let mismatch = |why: String| Error::Protocol {
            url: url.clone(),
            why: format!("the snapshot of {name} arrived damaged: {why}"),
        };
        if let Some(sha) = expected_sha
            && sha != info.sha256
        {
            return Err(mismatch(format!("sha256 {} instead of {sha}", info.sha256)));
        }
        if expected_counts != (Some(info.keys), Some(info.versions)) {
            return Err(mismatch(format!(
                "{} keys and {} versions instead of {expected_counts:?}",
                info.keys, info.versions
            )));
        }
        std::fs::rename(&partial, &target).map_err(io(format!("write {}", target.display())))?;
        Ok(ServerFile {
            name: name.to_owned(),
            file: file_name,
            bytes: info.bytes,
            sha256: info.sha256,
            keys: info.keys,
            versions: info.versions,
        })
    }
}

/// The service's `{"detail", "code"}` error as [`Error::Http`] (the status alone otherwise).
fn http_error(status: StatusCode, body: &[u8]) -> Error {
    #[derive(Deserialize)]
    struct ErrorBody {
        detail: String,
        #[serde(default)]
        code: String,
    }
    let (detail, code) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (e.detail, e.code),
        Err(_) => (
            status.canonical_reason().unwrap_or("error").to_owned(),
            String::new(),
        ),
    };
    Error::Http {
        status: status.as_u16(),
        code,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(keys: &[u64], replication_factor: Option<usize>) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            created_at: 0.0,
            created: String::new(),
            gateway_url: "http://gw".into(),
            ring: Ring {
                epoch: Some(1),
                vnodes: Some(150),
                servers: (1..=keys.len()).map(|i| format!("server-{i}")).collect(),
                replication_factor,
            },
            servers: keys
                .iter()
                .enumerate()
                .map(|(i, &k)| ServerFile {
                    name: format!("server-{}", i + 1),
                    file: format!("server-{}.db", i + 1),
                    bytes: 4096,
                    sha256: String::new(),
                    keys: k,
                    versions: 2 * k,
                })
                .collect(),
        }
    }

    #[test]
    fn the_summary_says_when_its_sums_count_copies() {
        let out = Path::new("/b");
        assert_eq!(
            summary(&manifest(&[5, 5, 5], Some(3)), out),
            "Backed up 3 servers to /b: 15 keys, 30 versions \
             (copies: each key is on 3 servers, and counts once on each)"
        );
        // R above the number of servers: every key is on each of them.
        assert!(summary(&manifest(&[5, 5], Some(3)), out).contains("each key is on 2 servers"));
        for plain in [
            manifest(&[2, 3, 4], Some(1)),
            manifest(&[2, 3, 4], None),
            manifest(&[9], Some(3)),
        ] {
            let line = summary(&plain, out);
            assert!(!line.contains("copies"), "{line}");
        }
        assert_eq!(
            summary(&manifest(&[2, 3, 4], None), out),
            "Backed up 3 servers to /b: 9 keys, 18 versions"
        );
    }

    #[test]
    fn manifests_without_a_replication_factor_still_read() {
        let mut value = serde_json::to_value(manifest(&[1], None)).unwrap();
        assert!(value["ring"].get("replication_factor").is_none());
        value["ring"]["replication_factor"] = 3.into();
        let read: Manifest = serde_json::from_value(value).unwrap();
        assert_eq!(read.ring.replication_factor, Some(3));
    }
}
