//! `kv-server clean` (and `kvstore clean`): the seed's `scripts/clean_databases.py`, made safe.
//! Finds every `*.db` under a data directory, shows what each holds, and empties them after
//! a confirmation: both tables cleared, the AUTOINCREMENT counter reset, the file VACUUMed.
//! With replication, a cleaned database is a new one to its peers (see `clean_one`): clean
//! every server of a cluster to empty it, or the others give a cleaned server its keys back.
//! A database a running server holds (its `.lock` is taken) is refused before anything is
//! touched, and the locks are held while cleaning so no server can start mid-way.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::store::lock::DbLock;

#[derive(Debug, Clone, clap::Args)]
pub struct CleanArgs {
    /// Directory searched, recursively, for `*.db` files.
    #[arg(long, env = "KV_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Only show what would be cleaned.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (`--confirm` is the seed's spelling).
    #[arg(long, short = 'y', visible_alias = "confirm")]
    pub yes: bool,
}

/// How a clean-up ended; the binaries map it to an exit code with [`CleanOutcome::exit_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanOutcome {
    NothingFound,
    DryRun,
    Cancelled,
    /// Some databases are held by running servers; nothing was cleaned.
    InUse(Vec<PathBuf>),
    Cleaned {
        cleaned: usize,
        failed: usize,
    },
}

impl CleanOutcome {
    /// 0 on success or when the user said no; 1 when a database failed; 2 when refused.
    pub fn exit_code(&self) -> i32 {
        match self {
            CleanOutcome::InUse(_) => 2,
            CleanOutcome::Cleaned { failed, .. } if *failed > 0 => 1,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FileStats {
    keys: u64,
    values: u64,
    bytes: u64,
}

/// Every `*.db` file below `dir`, sorted; none when `dir` does not exist.
pub fn find_databases(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Io {
                    context: format!("read directory {}", current.display()),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(path),
                Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "db") => {
                    found.push(path)
                }
                _ => {}
            }
        }
    }
    found.sort();
    Ok(found)
}

fn stats(path: &Path) -> std::result::Result<FileStats, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let (keys, values): (i64, i64) = conn
        .query_row(
            r#"SELECT (SELECT COUNT(*) FROM keys), (SELECT COUNT(*) FROM "values")"#,
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| format!("not a kvstore database ({e})"))?;
    Ok(FileStats {
        keys: keys as u64,
        values: values as u64,
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    })
}

fn clean_one(path: &Path) -> rusqlite::Result<()> {
    let mut conn = Connection::open(path)?;
    let tx = conn.transaction()?;
    tx.execute_batch(
        r#"DELETE FROM "values";
           DELETE FROM keys;
           DELETE FROM sqlite_sequence WHERE name = 'values';"#,
    )?;
    // With the counter reset, this database's change sequence starts again at 1: to its
    // peers it is a new database, not the old one gone back in time. Without a new instance
    // id, peers would keep their cursors into the old sequence and skip the new versions,
    // and the server itself, thinking it was not new, would serve at once and give out
    // versions its peers already hold (a fork). So drop the id (the next open makes one and
    // catches up before serving, as for a lost disk) and this server's own cursors (it reads
    // its peers again from the start). The ring state in `kv_meta` stays: the server is still
    // the member it was.
    let has_table = |name: &str| {
        tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            [name],
            |r| r.get::<_, bool>(0),
        )
    };
    if has_table("kv_meta")? {
        tx.execute("DELETE FROM kv_meta WHERE name = 'instance'", [])?;
    }
    if has_table("peer_cursors")? {
        tx.execute("DELETE FROM peer_cursors", [])?;
    }
    tx.commit()?;
    // Fold the WAL back into the file before VACUUM so the space is really returned.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    conn.execute_batch("VACUUM")
}

/// Runs the clean-up, reading the confirmation from `input` and reporting to `out`.
pub fn run(args: &CleanArgs, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<CleanOutcome> {
    let io = |source| Error::Io {
        context: "write output".into(),
        source,
    };
    let files = find_databases(&args.data_dir)?;
    if files.is_empty() {
        writeln!(
            out,
            "No database files found in {}",
            args.data_dir.display()
        )
        .map_err(io)?;
        return Ok(CleanOutcome::NothingFound);
    }
    // Take every lock first: refuse the whole run rather than clean half of a cluster.
    let mut locks = Vec::new();
    let mut in_use = Vec::new();
    for file in &files {
        match DbLock::acquire(file) {
            Ok(lock) => locks.push(lock),
            Err(Error::DatabaseInUse { path }) => in_use.push(path),
            Err(other) => return Err(other),
        }
    }
    if !in_use.is_empty() {
        for path in &in_use {
            writeln!(
                out,
                "Refusing: {} is in use by a running kv-server. Stop it first.",
                path.display()
            )
            .map_err(io)?;
        }
        writeln!(out, "Nothing was cleaned.").map_err(io)?;
        return Ok(CleanOutcome::InUse(in_use));
    }

    writeln!(out, "Found database files:").map_err(io)?;
    let mut total = FileStats::default();
    let mut cleanable = Vec::new();
    let verb = if args.dry_run {
        "Would clean"
    } else {
        "Will clean"
    };
    for file in &files {
        match stats(file) {
            Ok(s) => {
                writeln!(
                    out,
                    "{verb} {}:\n  - {} keys\n  - {} values\n  - {} bytes",
                    file.display(),
                    s.keys,
                    s.values,
                    s.bytes
                )
                .map_err(io)?;
                total.keys += s.keys;
                total.values += s.values;
                total.bytes += s.bytes;
                cleanable.push(file);
            }
            Err(why) => writeln!(out, "Skipping {}: {why}", file.display()).map_err(io)?,
        }
    }
    writeln!(
        out,
        "Total: {} keys, {} values, {} bytes in {} databases",
        total.keys,
        total.values,
        total.bytes,
        cleanable.len()
    )
    .map_err(io)?;
    if args.dry_run {
        writeln!(
            out,
            "Dry run complete. Use without --dry-run to actually clean the databases."
        )
        .map_err(io)?;
        return Ok(CleanOutcome::DryRun);
    }
    if !args.yes {
        write!(
            out,
            "WARNING: This will permanently delete ALL data from ALL databases listed above!\n\
             Are you sure you want to continue? (yes/no): "
        )
        .map_err(io)?;
        out.flush().map_err(io)?;
        let mut answer = String::new();
        let read = input.read_line(&mut answer).map_err(|source| Error::Io {
            context: "read the answer".into(),
            source,
        })?;
        if read == 0 {
            writeln!(
                out,
                "\nNo answer (standard input is closed). Operation cancelled."
            )
            .map_err(io)?;
            return Ok(CleanOutcome::Cancelled);
        }
        let answer = answer.trim().to_ascii_lowercase();
        if answer != "yes" && answer != "y" {
            writeln!(out, "Operation cancelled.").map_err(io)?;
            return Ok(CleanOutcome::Cancelled);
        }
    }
    let mut cleaned = 0;
    for file in &cleanable {
        match clean_one(file) {
            Ok(()) => {
                cleaned += 1;
                writeln!(out, "Cleaned {}", file.display()).map_err(io)?;
            }
            Err(e) => writeln!(out, "FAILED to clean {}: {e}", file.display()).map_err(io)?,
        }
    }
    let failed = cleanable.len() - cleaned;
    writeln!(out, "Cleaned {cleaned}/{} databases.", cleanable.len()).map_err(io)?;
    drop(locks);
    Ok(CleanOutcome::Cleaned { cleaned, failed })
}
