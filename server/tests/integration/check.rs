//! `kv-server check`: a sound database passes; an unreadable value, missing versions and a
//! damaged file are each reported, never a panic; the binary's exit code says which. A
//! server reading a damaged page answers `500 database_corrupt`.

use std::path::Path;
use std::process::Command;

use axum::http::StatusCode;
use kv_server::check::{self, CheckArgs};
use rusqlite::Connection;

use crate::support::test_app_with;

/// A database of 300 keys written through the router, closed, its WAL folded into the file.
async fn database(dir: &Path) {
    let app = test_app_with(|c| c.data_dir = dir.to_owned());
    for i in 0..300 {
        let value = format!("\"{}\"", "x".repeat(300));
        app.put(&format!("k{i}"), &value).await;
    }
    app.put("k0", "2").await;
    app.put("k0", "3").await;
    drop(app);
    // The writer and readers close on their own threads: wait until the file is ours.
    for _ in 0..100 {
        let conn = Connection::open(dir.join("kv_store.db")).unwrap();
        if conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
            == 0
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the database stayed busy");
}

fn run(dir: &Path) -> (check::Report, String) {
    let mut out = Vec::new();
    let args = CheckArgs {
        data_dir: dir.to_owned(),
        full: true,
    };
    let mut reports = check::run(&args, &mut out).unwrap();
    assert_eq!(reports.len(), 1);
    let (path, report) = reports.pop().unwrap();
    assert_eq!(path, dir.join("kv_store.db"));
    (report, String::from_utf8(out).unwrap())
}

fn binary_exit_code(dir: &Path) -> i32 {
    let output = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .arg("check")
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    output.status.code().unwrap()
}

#[tokio::test]
async fn a_sound_database_passes() {
    let dir = tempfile::tempdir().unwrap();
    database(dir.path()).await;
    let (report, text) = run(dir.path());
    assert!(report.is_sound(), "{text}");
    assert_eq!((report.keys, report.versions), (300, 302), "{text}");
    assert_eq!(report.gap_count, 0, "{text}");
    assert!(text.contains("verdict: sound"), "{text}");
    assert_eq!(binary_exit_code(dir.path()), 0);
}

#[tokio::test]
async fn unreadable_values_and_missing_versions_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    database(dir.path()).await;
    {
        let conn = Connection::open(dir.path().join("kv_store.db")).unwrap();
        conn.execute(
            r#"UPDATE "values" SET value = 'Infinity' WHERE key = 'k7'"#,
            [],
        )
        .unwrap();
        conn.execute(
            r#"DELETE FROM "values" WHERE key = 'k0' AND version = 2"#,
            [],
        )
        .unwrap();
    }
    let (report, text) = run(dir.path());
    assert!(!report.is_sound(), "{text}");
    assert!(report.structure.is_empty(), "{text}");
    assert_eq!(report.invalid_values, [("k7".to_owned(), 1)], "{text}");
    assert_eq!(report.gaps, [("k0".to_owned(), 2, 3)], "{text}");
    assert!(text.contains("verdict: DAMAGED"), "{text}");
    assert_eq!(binary_exit_code(dir.path()), 1);
}

#[tokio::test]
async fn a_damaged_file_is_reported_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    database(dir.path()).await;
    let path = dir.path().join("kv_store.db");
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 64 << 10, "{} bytes", bytes.len());
    // Pages 11 and 12 (4 KiB each): table or index pages of the data.
    for b in &mut bytes[40 << 10..48 << 10] {
        *b = 0xde;
    }
    std::fs::write(&path, bytes).unwrap();
    let (report, text) = run(dir.path());
    assert!(!report.structure.is_empty(), "{text}");
    assert!(text.contains("structure: DAMAGED"), "{text}");
    assert!(!text.contains("values: ok"), "{text}");
    assert_eq!(binary_exit_code(dir.path()), 1);

    // A server on it answers what it can read, and says what it cannot: a 500 that names
    // the damage, never a panic.
    let app = test_app_with(|c| c.data_dir = dir.path().to_owned());
    let mut damaged = 0;
    for i in 0..300 {
        let answer = app.get(&format!("/get/k{i}")).await;
        if answer.status != StatusCode::OK {
            let body = answer.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "database_corrupt");
            assert!(
                body["detail"].as_str().unwrap().contains("kv-server check"),
                "{body}"
            );
            damaged += 1;
        }
    }
    assert!(damaged > 0 && damaged < 300, "{damaged} keys unreadable");
}

#[test]
fn a_missing_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let args = CheckArgs {
        data_dir: dir.path().to_owned(),
        full: false,
    };
    let err = check::run(&args, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("no database"), "{err}");
}

#[tokio::test]
async fn every_database_under_a_cluster_directory_is_checked() {
    // A local cluster's layout: one data directory per server.
    let dir = tempfile::tempdir().unwrap();
    database(&dir.path().join("server-1")).await;
    database(&dir.path().join("server-2")).await;
    let conn = Connection::open(dir.path().join("server-2/kv_store.db")).unwrap();
    conn.execute(r#"UPDATE "values" SET value = '{' WHERE key = 'k9'"#, [])
        .unwrap();
    drop(conn);
    let mut out = Vec::new();
    let args = CheckArgs {
        data_dir: dir.path().to_owned(),
        full: false,
    };
    let reports = check::run(&args, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let verdicts: Vec<(String, bool)> = reports
        .iter()
        .map(|(path, r)| {
            (
                path.strip_prefix(dir.path()).unwrap().display().to_string(),
                r.is_sound(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("server-1/kv_store.db".to_owned(), true),
            ("server-2/kv_store.db".to_owned(), false)
        ],
        "{text}"
    );
    assert_eq!(check::exit_code(&reports), 1);
    assert_eq!(binary_exit_code(dir.path()), 1);
}
