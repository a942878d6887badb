//! `GET /admin/snapshot`: a consistent copy of the database while puts go on, described by
//! its headers, and no temporary file left behind.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use kv_server::http::admin::{KEYS_HEADER, NODE_HEADER, SHA256_HEADER, VERSIONS_HEADER};
use tower::ServiceExt;

use crate::support::test_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_writes_holds_every_acknowledged_version() {
    let app = test_app();
    for i in 0..50 {
        app.put(&format!("before{}", i % 10), &i.to_string()).await;
    }
    // Writers keep going while the snapshot is taken.
    let writer = {
        let router = app.router.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                let request = Request::put(format!("/put/during{}", i % 7))
                    .body(Body::from(format!(r#"{{"value": {i}}}"#)))
                    .unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            }
        })
    };
    let response = app
        .router
        .clone()
        .oneshot(Request::get("/admin/snapshot").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/vnd.sqlite3");
    assert_eq!(headers[NODE_HEADER], "test-node");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    writer.await.unwrap();
    assert_eq!(headers["content-length"], bytes.len().to_string().as_str());

    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("snap.db");
    std::fs::write(&file, &bytes).unwrap();
    let info = kv_server::store::snapshot::inspect(&file).unwrap();
    assert_eq!(headers[SHA256_HEADER], info.sha256.as_str());
    assert_eq!(headers[KEYS_HEADER], info.keys.to_string().as_str());
    assert_eq!(headers[VERSIONS_HEADER], info.versions.to_string().as_str());
    assert!(info.versions >= 50, "{info:?}");

    // Every version acknowledged before the request is there, whole; versions of each key
    // are 1..=n with no gap (the copy is one commit's state, never a torn one).
    let conn = rusqlite::Connection::open(&file).unwrap();
    for k in 0..10 {
        let key = format!("before{k}");
        let versions: Vec<i64> = conn
            .prepare(r#"SELECT version FROM "values" WHERE key = ?1 ORDER BY version"#)
            .unwrap()
            .query_map([&key], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(versions, (1..=5).collect::<Vec<i64>>(), "{key}");
    }
    let mut stmt = conn
        .prepare(r#"SELECT key, COUNT(*), MAX(version) FROM "values" GROUP BY key"#)
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (key, count, max) = row.unwrap();
        assert_eq!(count, max, "{key}: versions with a gap");
    }

    // The snapshot's temporary file is gone; the server still serves.
    let leftovers: Vec<_> = std::fs::read_dir(app.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(kv_server::store::snapshot::TEMP_PREFIX))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(app.put("after", "1").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_copy_is_a_new_database_instance() {
    use kv_server::store::{SyncMode, db, snapshot};
    let app = test_app();
    app.put("k", "1").await;
    let original = app.state.store.open_info().instance.clone();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.db");
    let info = snapshot::copy_database(app.state.store.db_path(), &first).unwrap();
    assert_eq!(info.versions, 1);
    // Opened, the copy gets its own instance id and counts as new to the cluster, so peers
    // read its change sequence from the start and it catches up before serving.
    let (_conn, opened) = db::open_writer(&first, SyncMode::Normal).unwrap();
    assert_ne!(opened.instance, original);
    assert!(opened.fresh);
}
