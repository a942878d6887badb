//! A database in the seed's exact shape opens and serves as it is, and writes continue its
//! version sequence.

use axum::http::StatusCode;
use kv_server::http::{AppState, app};

use crate::support::{TestApp, config};

/// Builds `kv_store.db` the way the seed's `server/database.py` did, with rows as its
/// `json.dumps` wrote them (spaces after separators, non-ASCII escaped).
fn seed_database(dir: &std::path::Path) {
    let conn = rusqlite::Connection::open(dir.join("kv_store.db")).unwrap();
    conn.execute_batch(
        r#"CREATE TABLE IF NOT EXISTS keys (
               key TEXT PRIMARY KEY, created_at REAL, updated_at REAL);
           CREATE TABLE IF NOT EXISTS "values" (
               id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, value TEXT,
               version INTEGER, timestamp REAL);
           CREATE INDEX IF NOT EXISTS idx_key_version ON "values"(key, version);
           INSERT INTO keys VALUES ('mykey', 1795420824.0726242, 1795420824.1108882);
           INSERT INTO "values"(key, value, version, timestamp)
               VALUES ('mykey', '"hello world"', 1, 1795420824.0726242);
           INSERT INTO "values"(key, value, version, timestamp)
               VALUES ('mykey', '{"a": [1, 2.5, null, true]}', 2, 1795420824.1108882);
           INSERT INTO keys VALUES ('k2', 1795420830.5, 1795420830.5);
           INSERT INTO "values"(key, value, version, timestamp)
               VALUES ('k2', '"\u00e9t\u00e9"', 1, 1795420830.5);"#,
    )
    .unwrap();
}

#[tokio::test]
async fn a_seed_database_serves_and_continues_its_versions() {
    let dir = tempfile::tempdir().unwrap();
    seed_database(dir.path());
    let state = AppState::open(config(dir.path())).unwrap();
    let app = TestApp {
        router: app(state.clone()),
        state,
        dir,
    };
    let latest = app.get("/get/mykey").await.json();
    assert_eq!(latest["version"], 2);
    assert_eq!(
        latest["value"],
        serde_json::json!({"a": [1, 2.5, null, true]})
    );
    assert_eq!(latest["timestamp"], 1795420824.1108882);
    assert_eq!(
        app.get("/get/mykey?version=1").await.json()["value"],
        "hello world"
    );
    assert_eq!(app.get("/get/k2").await.json()["value"], "été");
    let put = app.put("mykey", "3").await.json();
    assert_eq!(
        (put["operation"].as_str(), put["version"].as_u64()),
        (Some("update"), Some(3))
    );
    let db = app.get("/db/stats").await.json();
    assert_eq!(
        (db["total_keys"].as_u64(), db["total_versions"].as_u64()),
        (Some(2), Some(4))
    );

    // The migration added what kvstore relies on: WAL and a unique (key, version).
    app.state.store.close().await;
    let conn = rusqlite::Connection::open(app.dir.path().join("kv_store.db")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let dup = conn.execute(
        r#"INSERT INTO "values"(key, value, version, timestamp) VALUES ('mykey', '0', 3, 0)"#,
        [],
    );
    assert!(dup.is_err(), "a second version 3 must be refused by SQLite");
}

#[tokio::test]
async fn a_seed_infinity_is_reported_not_sent_as_broken_json() {
    let dir = tempfile::tempdir().unwrap();
    seed_database(dir.path());
    rusqlite::Connection::open(dir.path().join("kv_store.db"))
        .unwrap()
        .execute_batch(
            r#"INSERT INTO "values"(key, value, version, timestamp) VALUES ('inf', 'Infinity', 1, 0);"#,
        )
        .unwrap();
    let state = AppState::open(config(dir.path())).unwrap();
    let app = TestApp {
        router: app(state.clone()),
        state,
        dir,
    };
    let e = app
        .get("/get/inf")
        .await
        .assert_error(StatusCode::INTERNAL_SERVER_ERROR, "database_corrupt");
    let detail = e["detail"].as_str().unwrap();
    assert!(detail.contains("not valid JSON"), "{detail}");
    assert!(detail.contains("kv-server check"), "{detail}");
}
