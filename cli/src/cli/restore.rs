//! `kvstore restore --from BACKUP --data-dir DIR` and `kvstore migrate-seed --from SEED_DATA
//! --data-dir DIR`: put databases where `kvstore up` (and `kv-server --data-dir DIR/NAME`)
//! finds them, `DIR/<name>/kv_store.db`, keeping server names so every key stays where the
//! ring places it.
//!
//! Restore checks the whole backup before touching anything: the manifest, then every file's
//! size, SHA-256 and key and version counts. Both commands refuse a target database a running
//! server holds (its `.lock`), or one that exists unless `--force`; they hold the locks while
//! writing, so no server can start on a half-written directory.

use std::path::{Path, PathBuf};

use clap::Args;
use kv_server::Error as ServerError;
use kv_server::store::DB_FILE;
use kv_server::store::lock::DbLock;
use kv_server::store::snapshot;

use super::backup::{FORMAT, FORMAT_VERSION, MANIFEST, Manifest, safe_name};
use super::exit;
use crate::{Error, Result};

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// Backup folder written by `kvstore backup`.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Data directory to restore into: each server's database goes to `DIR/<name>/kv_store.db`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Replace databases that already exist there (never one a running server holds).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateSeedArgs {
    /// The seed's data folder, holding `server-N/kv_store.db` (one folder per server).
    #[arg(long, value_name = "SEED_DATA_DIR")]
    pub from: PathBuf,
    /// kvstore data directory to create: `DIR/server-N/kv_store.db`, same names.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Replace databases that already exist there (never one a running server holds).
    #[arg(long)]
    pub force: bool,
}

/// Why a backup cannot be restored; the message names the file.
fn refuse(why: String) -> Result<u8> {
    eprintln!("error: {why}; nothing was restored");
    Ok(exit::FAILURE)
}

pub fn restore(args: &RestoreArgs) -> Result<u8> {
    let manifest_path = args.from.join(MANIFEST);
    let text = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => text,
        Err(e) => {
            return refuse(format!(
                "the backup is incomplete or not a backup: cannot read {} ({e})",
                manifest_path.display()
            ));
        }
    };
    let manifest: Manifest = match serde_json::from_str(&text) {
        Ok(m) => m,
        Err(e) => return refuse(format!("{} is damaged: {e}", manifest_path.display())),
    };
    if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
        return refuse(format!(
            "{} is format {:?} version {}; this kvstore reads {FORMAT:?} version {FORMAT_VERSION}",
            manifest_path.display(),
            manifest.format,
            manifest.format_version
        ));
    }
    let mut listed: Vec<&str> = manifest.servers.iter().map(|s| s.name.as_str()).collect();
    listed.sort_unstable();
    let mut ring: Vec<&str> = manifest.ring.servers.iter().map(String::as_str).collect();
    ring.sort_unstable();
    if listed != ring || listed.is_empty() {
        return refuse(format!(
            "{} is incomplete: the ring has {ring:?}, the files are for {listed:?}",
            manifest_path.display()
        ));
    }
    for server in &manifest.servers {
        if !safe_name(&server.name) || server.file != format!("{}.db", server.name) {
            return refuse(format!(
                "{} is damaged: bad entry for server {:?} (file {:?})",
                manifest_path.display(),
                server.name,
                server.file
            ));
        }
        let file = args.from.join(&server.file);
        eprintln!("restore: checking {}", file.display());
        if !file.is_file() {
            return refuse(format!(
                "the backup is incomplete: {} is missing",
                file.display()
            ));
        }
        let (bytes, sha) = match snapshot::sha256_file(&file) {
            Ok(found) => found,
            Err(e) => return refuse(format!("cannot read {}: {e}", file.display())),
        };
        if bytes != server.bytes || sha != server.sha256 {
            return refuse(format!(
                "{} is corrupted: {bytes} bytes with sha256 {sha}, the manifest says {} bytes \
                 with sha256 {}",
                file.display(),
                server.bytes,
                server.sha256
            ));
        }
        match snapshot::inspect(&file) {
            Ok(info) if (info.keys, info.versions) == (server.keys, server.versions) => {}
            Ok(info) => {
                return refuse(format!(
                    "{} holds {} keys and {} versions, the manifest says {} and {}",
                    file.display(),
                    info.keys,
                    info.versions,
                    server.keys,
                    server.versions
                ));
            }
            Err(e) => return refuse(format!("{} is not a usable database: {e}", file.display())),
        }
    }
    eprintln!(
        "restore: backup of {} ({} servers) verified",
        manifest.created,
        manifest.servers.len()
    );
    let sources: Vec<(String, PathBuf)> = manifest
        .servers
        .iter()
        .map(|s| (s.name.clone(), args.from.join(&s.file)))
        .collect();
    write_all(
        &sources,
        &args.data_dir,
        args.force,
        "restore",
        |from, to| {
            std::fs::copy(from, to).map_err(|source| ServerError::Io {
                context: format!("copy {} to {}", from.display(), to.display()),
                source,
            })?;
            snapshot::inspect(to)
        },
        Some(&manifest),
    )
}

pub fn migrate_seed(args: &MigrateSeedArgs) -> Result<u8> {
    let entries = std::fs::read_dir(&args.from).map_err(|source| Error::Io {
        context: format!("read the seed's data folder {}", args.from.display()),
        source,
    })?;
    let mut sources: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().join(DB_FILE).is_file())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name, e.path().join(DB_FILE)))
        })
        .filter(|(name, _)| safe_name(name))
        .collect();
    sources.sort();
    if sources.is_empty() {
        eprintln!(
            "error: no seed databases in {}: expected {}/server-N/{DB_FILE}",
            args.from.display(),
            args.from.display()
        );
        return Ok(exit::USAGE);
    }
    write_all(
        &sources,
        &args.data_dir,
        args.force,
        "migrate-seed",
        snapshot::copy_database,
        None,
    )
}

/// Refuses if any target is held or (without `force`) exists, then writes each through a
/// temporary file renamed into place, holding every lock until the end.
fn write_all(
    sources: &[(String, PathBuf)],
    data_dir: &Path,
    force: bool,
    what: &str,
    copy: impl Fn(&Path, &Path) -> kv_server::Result<snapshot::SnapshotInfo>,
    manifest: Option<&Manifest>,
) -> Result<u8> {
    let io = |context: String| move |source| Error::Io { context, source };
    let mut locks = Vec::new();
    let mut in_use = Vec::new();
    let mut existing = Vec::new();
    for (name, _) in sources {
        let dir = data_dir.join(name);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let db = dir.join(DB_FILE);
        match DbLock::acquire(&db) {
            Ok(lock) => locks.push(lock),
            Err(ServerError::DatabaseInUse { path }) => in_use.push(path),
            Err(source) => {
                return Err(Error::Server {
                    name: name.clone(),
                    source,
                });
            }
        }
        if db.exists() {
            existing.push(db);
        }
    }
    if !in_use.is_empty() {
        for path in &in_use {
            eprintln!(
                "error: {} is in use by a running server; stop it first",
                path.display()
            );
        }
        eprintln!("{what}: nothing was written");
        return Ok(exit::USAGE);
    }
    if !existing.is_empty() && !force {
        for path in &existing {
            eprintln!("error: {} already exists", path.display());
        }
        eprintln!("{what}: nothing was written; --force replaces existing databases");
        return Ok(exit::USAGE);
    }
    for (i, (name, from)) in sources.iter().enumerate() {
        let dir = data_dir.join(name);
        let db = dir.join(DB_FILE);
        let temp = dir.join(format!("{DB_FILE}.{what}"));
        let _ = std::fs::remove_file(&temp);
        let info = copy(from, &temp).map_err(|source| Error::Server {
            name: format!("{what} of {name}"),
            source,
        })?;
        if let Some(expected) = manifest.and_then(|m| m.servers.iter().find(|s| &s.name == name))
            && expected.sha256 != info.sha256
        {
            let _ = std::fs::remove_file(&temp);
            return Err(Error::Internal(format!(
                "{} changed while it was copied (sha256 {})",
                from.display(),
                info.sha256
            )));
        }
        std::fs::File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("sync {}", temp.display())))?;
        // A WAL left by the database being replaced would be replayed into the new one.
        for suffix in ["-wal", "-shm"] {
            let stale = dir.join(format!("{DB_FILE}{suffix}"));
            match std::fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Io {
                        context: format!("remove {}", stale.display()),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        std::fs::rename(&temp, &db).map_err(io(format!("write {}", db.display())))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        eprintln!(
            "{what}: [{}/{}] {name}: {} keys, {} versions -> {}",
            i + 1,
            sources.len(),
            info.keys,
            info.versions,
            db.display()
        );
    }
    drop(locks);
    let names: Vec<&str> = sources.iter().map(|(n, _)| n.as_str()).collect();
    let local = (1..=names.len())
        .map(|i| format!("server-{i}"))
        .collect::<Vec<_>>();
    let mut sorted_local = local.clone();
    sorted_local.sort();
    let mut sorted_names = names.clone();
    sorted_names.sort_unstable();
    println!("Wrote {} databases to {}", names.len(), data_dir.display());
    if sorted_names == sorted_local.iter().map(String::as_str).collect::<Vec<_>>() {
        println!(
            "Start it with: kvstore up --data-dir {} --servers {}",
            data_dir.display(),
            names.len()
        );
    } else {
        println!(
            "Start one kv-server per folder (--data-dir {}/NAME) and give the gateway the same \
             names (--backend NAME=URL) so keys stay where they are: {names:?}",
            data_dir.display()
        );
    }
    Ok(exit::SUCCESS)
}
