//! The database clean-up command: dry run, confirmation, closed stdin, a running server.

use std::io::Cursor;
use std::path::Path;

use kv_server::clean::{self, CleanArgs, CleanOutcome};
use kv_server::http::AppState;

use crate::support::config;

/// Two server data directories with a few versions each; servers closed again.
async fn two_databases(root: &Path) {
    for (server, keys) in [("server-1", 2), ("server-2", 3)] {
        let state = AppState::open(config(&root.join(server))).unwrap();
        for k in 0..keys {
            for v in 0..2 {
                let req = kv_server::store::PutRequest {
                    key: format!("k{k}").into(),
                    value: v.to_string().into(),
                    if_version: None,
                };
                state.store.put(req).await.unwrap();
            }
        }
        state.store.close().await;
    }
}

fn run(root: &Path, dry_run: bool, yes: bool, stdin: &str) -> (CleanOutcome, String) {
    let args = CleanArgs {
        data_dir: root.to_owned(),
        dry_run,
        yes,
    };
    let mut out = Vec::new();
    let outcome = clean::run(&args, &mut Cursor::new(stdin.as_bytes()), &mut out).unwrap();
    (outcome, String::from_utf8(out).unwrap())
}

fn count(db: &Path) -> (i64, i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        r#"SELECT (SELECT COUNT(*) FROM keys), (SELECT COUNT(*) FROM "values"),
                  (SELECT COUNT(*) FROM sqlite_sequence WHERE name = 'values')"#,
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

#[tokio::test]
async fn dry_run_shows_per_database_stats_and_totals_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    two_databases(root.path()).await;
    let (outcome, out) = run(root.path(), true, false, "");
    assert_eq!(outcome, CleanOutcome::DryRun);
    assert!(
        out.contains("server-1/kv_store.db:\n  - 2 keys\n  - 4 values"),
        "{out}"
    );
    assert!(
        out.contains("server-2/kv_store.db:\n  - 3 keys\n  - 6 values"),
        "{out}"
    );
    assert!(out.contains("Total: 5 keys, 10 values"), "{out}");
    assert!(out.contains("Dry run complete"), "{out}");
    assert_eq!(count(&root.path().join("server-1/kv_store.db")).1, 4);
}

#[tokio::test]
async fn only_yes_cleans_and_a_closed_stdin_cancels() {
    let root = tempfile::tempdir().unwrap();
    two_databases(root.path()).await;
    let db = root.path().join("server-2/kv_store.db");
    let (outcome, out) = run(root.path(), false, false, "");
    assert_eq!(outcome, CleanOutcome::Cancelled);
    assert!(out.contains("standard input is closed"), "{out}");
    let (outcome, _) = run(root.path(), false, false, "no\n");
    assert_eq!(outcome, CleanOutcome::Cancelled);
    assert_eq!(count(&db).1, 6);

    let (outcome, out) = run(root.path(), false, false, "yes\n");
    assert_eq!(
        outcome,
        CleanOutcome::Cleaned {
            cleaned: 2,
            failed: 0
        }
    );
    assert_eq!(outcome.exit_code(), 0);
    assert!(out.contains("Cleaned 2/2 databases"), "{out}");
    assert_eq!(
        count(&db),
        (0, 0, 0),
        "tables and the AUTOINCREMENT counter are reset"
    );

    // A cleaned database serves again from version 1.
    let state = AppState::open(config(db.parent().unwrap())).unwrap();
    let req = kv_server::store::PutRequest {
        key: "k0".into(),
        value: "1".into(),
        if_version: None,
    };
    assert_eq!(state.store.put(req).await.unwrap().version, 1);
    state.store.close().await;
}

#[tokio::test]
async fn a_database_held_by_a_running_server_is_refused_and_nothing_is_cleaned() {
    let root = tempfile::tempdir().unwrap();
    two_databases(root.path()).await;
    let running = AppState::open(config(&root.path().join("server-1"))).unwrap();
    let (outcome, out) = run(root.path(), false, true, "");
    assert!(
        matches!(&outcome, CleanOutcome::InUse(paths) if paths.len() == 1),
        "{outcome:?}"
    );
    assert_eq!(outcome.exit_code(), 2);
    assert!(out.contains("in use by a running kv-server"), "{out}");
    assert_eq!(count(&root.path().join("server-2/kv_store.db")).1, 6);
    running.store.close().await;
}

#[test]
fn no_databases_is_not_an_error() {
    let root = tempfile::tempdir().unwrap();
    let (outcome, out) = run(&root.path().join("missing"), false, true, "");
    assert_eq!(outcome, CleanOutcome::NothingFound);
    assert!(out.contains("No database files found"), "{out}");
}
