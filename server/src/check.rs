//! `kv-server check` (and `kvstore check`): is a database sound? First SQLite's own check of the file's structure
//! (`quick_check`, or `integrity_check` with `--full`), then kvstore's: every stored value is
//! JSON a reader can serve, and every key's versions run 1, 2, ... with none missing.
//!
//! Read-only, so it may run beside a server using the database (it reads one snapshot). What
//! to do with a damaged database is in the README: on a replicated cluster, move it away and
//! restart the server, which then copies its keys back from its peers.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::store::db;
use crate::store::model::validate_json;

/// Problems listed in full; beyond that they are only counted.
const SHOWN: usize = 10;

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Directory searched, recursively, for `*.db` files (a server's data directory, or a
    /// local cluster's, which holds one per server).
    #[arg(long, env = "KV_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// SQLite's `integrity_check` (every index entry against its table; slower) instead of
    /// `quick_check`.
    #[arg(long)]
    pub full: bool,
}

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    /// SQLite's findings about the file's structure; empty when it said `ok`.
    pub structure: Vec<String>,
    pub keys: u64,
    pub versions: u64,
    /// Versions whose stored text is not JSON a reader can serve: (key, version), the first
    /// [`SHOWN`], and how many in all.
    pub invalid_values: Vec<(String, i64)>,
    pub invalid_count: u64,
    /// Keys whose versions are not exactly 1..=latest: (key, versions held, latest), the
    /// first [`SHOWN`], and how many in all.
    pub gaps: Vec<(String, u64, i64)>,
    pub gap_count: u64,
    /// Whether the scans of values and of versions read to the end (a damaged page stops
    /// them; the structure findings then say where).
    pub values_read: bool,
    pub versions_read: bool,
}

impl Report {
    /// No damage: the structure is sound and every value can be served. Missing versions
    /// alone do not count (see [`Report::write`]).
    pub fn is_sound(&self) -> bool {
        self.structure.is_empty() && self.invalid_count == 0
    }

    /// 0 sound, 1 damaged; the binaries exit with it.
    pub fn exit_code(&self) -> i32 {
        if self.is_sound() { 0 } else { 1 }
    }

    pub fn write(&self, path: &Path, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "{}", path.display())?;
        if self.structure.is_empty() {
            writeln!(out, "  structure: ok")?;
        } else {
            writeln!(out, "  structure: DAMAGED")?;
            for line in &self.structure {
                writeln!(out, "    {line}")?;
            }
        }
        let partly = if self.values_read { "" } else { " readable" };
        writeln!(
            out,
            "  {} keys, {} versions{partly}",
            self.keys, self.versions
        )?;
        if !self.values_read {
            writeln!(out, "  values: not all readable")?;
        }
        if self.invalid_count > 0 {
            writeln!(
                out,
                "  values: {} not valid JSON (reads of them answer 500):",
                self.invalid_count
            )?;
            for (key, version) in &self.invalid_values {
                writeln!(out, "    {key:?} version {version}")?;
            }
        } else if self.values_read {
            writeln!(out, "  values: ok")?;
        }
        if self.gap_count > 0 {
            writeln!(
                out,
                "  versions: {} keys miss some (normal on a replica still catching up; \
                 on a standalone server, versions were lost):",
                self.gap_count
            )?;
            for (key, held, latest) in &self.gaps {
                writeln!(out, "    {key:?}: {held} of versions 1..={latest}")?;
            }
        } else if self.versions_read {
            writeln!(out, "  versions: ok")?;
        } else {
            writeln!(out, "  versions: not checked (unreadable)")?;
        }
        let verdict = if self.is_sound() { "sound" } else { "DAMAGED" };
        writeln!(out, "  verdict: {verdict}")
    }
}

/// Checks every database under `args.data_dir` and writes a report per file to `out`; one
/// report per file, in path order.
pub fn run(args: &CheckArgs, out: &mut impl Write) -> Result<Vec<(PathBuf, Report)>> {
    let paths = crate::clean::find_databases(&args.data_dir)?;
    if paths.is_empty() {
        return Err(Error::Config(format!(
            "no database (*.db) under {}",
            args.data_dir.display()
        )));
    }
    let mut reports = Vec::with_capacity(paths.len());
    for path in paths {
        let conn = db::open_reader(&path)?;
        let report = check(&conn, args.full);
        report.write(&path, out).map_err(|source| Error::Io {
            context: "write the report".into(),
            source,
        })?;
        reports.push((path, report));
    }
    Ok(reports)
}

/// 0 when every database is sound, 1 otherwise; the binaries exit with it.
pub fn exit_code(reports: &[(PathBuf, Report)]) -> i32 {
    reports
        .iter()
        .map(|(_, r)| r.exit_code())
        .max()
        .unwrap_or(0)
}

/// Every check, in one read transaction. A query that fails on a damaged file is a finding,
/// not an error: the report says what could not be read.
pub fn check(conn: &Connection, full: bool) -> Report {
    let mut report = Report::default();
    if let Err(e) = conn.execute_batch("BEGIN") {
        report.structure.push(format!("cannot start a read: {e}"));
        return report;
    }
    let pragma = if full {
        "PRAGMA integrity_check(20)"
    } else {
        "PRAGMA quick_check(20)"
    };
    match rows(conn, pragma, |r| r.get::<_, String>(0)) {
        Ok(lines) if lines == ["ok"] => {}
        Ok(lines) => report.structure.extend(lines),
        Err(e) => report.structure.push(format!("{pragma}: {e}")),
    }
    match conn.query_row("SELECT COUNT(*) FROM keys", [], |r| r.get::<_, i64>(0)) {
        Ok(n) => report.keys = n as u64,
        Err(e) => report.structure.push(format!("counting keys: {e}")),
    }
    match values(conn, &mut report) {
        Ok(()) => report.values_read = true,
        Err(e) => report.structure.push(format!("reading values: {e}")),
    }
    match gaps(conn, &mut report) {
        Ok(()) => report.versions_read = true,
        Err(e) => report.structure.push(format!("reading versions: {e}")),
    }
    let _ = conn.execute_batch("COMMIT");
    report
}

fn rows<T>(
    conn: &Connection,
    sql: &str,
    read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    conn.prepare(sql)?.query_map([], read)?.collect()
}

fn values(conn: &Connection, report: &mut Report) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(r#"SELECT key, version, value FROM "values""#)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        report.versions += 1;
        let value: Option<String> = row.get(2)?;
        // NULL reads as JSON null (seed databases may hold it).
        if value.as_deref().is_some_and(|v| validate_json(v).is_err()) {
            report.invalid_count += 1;
            if report.invalid_values.len() < SHOWN {
                report.invalid_values.push((row.get(0)?, row.get(1)?));
            }
        }
    }
    Ok(())
}

fn gaps(conn: &Connection, report: &mut Report) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        r#"SELECT key, COUNT(*), MAX(version) FROM "values" GROUP BY key
           HAVING MIN(version) != 1 OR MAX(version) != COUNT(*)"#,
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        report.gap_count += 1;
        if report.gaps.len() < SHOWN {
            report
                .gaps
                .push((row.get(0)?, row.get::<_, i64>(1)? as u64, row.get(2)?));
        }
    }
    Ok(())
}
