//! `kvstore backup`, `restore` and `migrate-seed` with the real binary against local clusters:
//! a backup under concurrent writes restores into a new cluster holding every version
//! acknowledged before it started; damaged or incomplete backups are refused, naming the file;
//! a seed cluster's databases migrate and serve with their placement.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestCluster, assert_code, stderr, stdout};
use http::Method;
use kvstore::client::{Client, encode_key};

/// key -> values of versions 1, 2, ... as acknowledged.
type Written = BTreeMap<String, Vec<String>>;

fn put(rt: &tokio::runtime::Runtime, client: &Client, key: &str, value: &str) -> u64 {
    let body = format!(r#"{{"value": {value:?}}}"#);
    let answer = rt
        .block_on(client.send(
            Method::PUT,
            &format!("/put/{}", encode_key(key)),
            Some(body.into()),
        ))
        .unwrap()
        .ok()
        .unwrap();
    let json: serde_json::Value = answer.parse().unwrap();
    json["version"].as_u64().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn write_some(url: &str, keys: usize, versions: usize) -> Written {
    let rt = runtime();
    let client = Client::new(url, Duration::from_secs(10)).unwrap();
    let mut written = Written::new();
    for v in 1..=versions {
        for k in 0..keys {
            let key = format!("key/{k}");
            let value = format!("{k}-{v}");
            assert_eq!(put(&rt, &client, &key, &value), v as u64);
            written.entry(key).or_default().push(value);
        }
    }
    written
}

/// Every acknowledged version reads back exactly.
fn check_all(url: &str, written: &Written) {
    let rt = runtime();
    let client = Client::new(url, Duration::from_secs(10)).unwrap();
    for (key, values) in written {
        for (i, value) in values.iter().enumerate() {
            let path = format!("/get/{}?version={}", encode_key(key), i + 1);
            let answer = rt.block_on(client.get(&path)).unwrap().ok().unwrap();
            let json: serde_json::Value = answer.parse().unwrap();
            assert_eq!(json["value"], value.as_str(), "{key} version {}", i + 1);
        }
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_backup_under_writes_restores_every_acknowledged_version() {
    let data = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(data.path());
    let before = write_some(&cluster.url, 20, 3);

    // Writers keep going during the backup; what they write may or may not be in it.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (cluster.url.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            let client = Client::new(&url, Duration::from_secs(10)).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                put(&rt, &client, &format!("during/{}", n % 13), &n.to_string());
                n += 1;
            }
            n
        })
    };
    let backup = tempfile::tempdir().unwrap();
    let out = cluster.kvstore(&["backup", "--out", arg(backup.path())]);
    stop.store(true, Ordering::Relaxed);
    let during = writer.join().unwrap();
    assert_code(&out, 0);
    let progress = stderr(&out);
    for name in ["server-1", "server-2", "server-3"] {
        assert!(
            progress.contains(&format!("{name}: snapshot...")),
            "{progress}"
        );
    }
    // The cluster replicates, so the summed counts are copies, and the line says it.
    let (r, _) = cluster.replication();
    let summary = stdout(&out);
    assert!(summary.starts_with("Backed up 3 servers"), "{summary}");
    assert_eq!(
        summary.contains(&format!("each key is on {r} servers")),
        r > 1,
        "{summary}"
    );
    assert!(during > 0, "no write ran during the backup");

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["format_version"], 1);
    assert_eq!(manifest["gateway_url"], cluster.url.as_str());
    assert_eq!(manifest["ring"]["vnodes"], 150);
    assert_eq!(manifest["ring"]["replication_factor"], r);
    assert_eq!(
        manifest["ring"]["servers"],
        serde_json::json!(["server-1", "server-2", "server-3"])
    );
    let files = manifest["servers"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    let versions: u64 = files.iter().map(|f| f["versions"].as_u64().unwrap()).sum();
    assert!(versions >= 60, "{manifest}");
    for f in files {
        let name = f["name"].as_str().unwrap();
        assert_eq!(f["file"], format!("{name}.db").as_str());
        assert_eq!(f["sha256"].as_str().unwrap().len(), 64);
        let len = std::fs::metadata(backup.path().join(format!("{name}.db")))
            .unwrap()
            .len();
        assert_eq!(f["bytes"], len);
    }
    // Refused while the live cluster holds its databases.
    let out = cluster.kvstore(&[
        "restore",
        "--from",
        arg(backup.path()),
        "--data-dir",
        arg(data.path()),
        "--force",
    ]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("in use by a running server"),
        "{}",
        stderr(&out)
    );
    cluster.stop();

    let fresh = tempfile::tempdir().unwrap();
    let restore = |force: bool| {
        let mut args = vec![
            "restore",
            "--from",
            arg(backup.path()),
            "--data-dir",
            arg(fresh.path()),
        ];
        if force {
            args.push("--force");
        }
        common::kvstore_at("http://127.0.0.1:1", &args, None)
    };
    let out = restore(false);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("kvstore up --data-dir"),
        "{}",
        stdout(&out)
    );
    // A second restore onto it is refused without --force, done with it.
    let out = restore(false);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_code(&restore(true), 0);

    let restored = TestCluster::start(fresh.path());
    check_all(&restored.url, &before);
    restored.stop();
}

#[test]
fn damaged_or_incomplete_backups_are_refused_naming_the_file() {
    let data = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(data.path());
    write_some(&cluster.url, 6, 1);
    let backup = tempfile::tempdir().unwrap();
    assert_code(
        &cluster.kvstore(&["backup", "--out", arg(backup.path())]),
        0,
    );
    // A second backup into the same folder needs --force.
    assert_code(
        &cluster.kvstore(&["backup", "--out", arg(backup.path())]),
        2,
    );
    cluster.stop();

    let target = tempfile::tempdir().unwrap();
    let restore = |from: &Path| {
        common::kvstore_at(
            "http://127.0.0.1:1",
            &[
                "restore",
                "--from",
                arg(from),
                "--data-dir",
                arg(target.path()),
            ],
            None,
        )
    };
    let copy = || {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(backup.path()).unwrap().flatten() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        dir
    };

    // One byte flipped.
    let flipped = copy();
    let file = flipped.path().join("server-2.db");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    let out = restore(flipped.path());
    assert_code(&out, 1);
    let message = stderr(&out);
    assert!(message.contains("server-2.db is corrupted"), "{message}");
    assert!(message.contains("nothing was restored"), "{message}");

    // A file missing.
    let missing = copy();
    std::fs::remove_file(missing.path().join("server-3.db")).unwrap();
    let out = restore(missing.path());
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("server-3.db is missing"),
        "{}",
        stderr(&out)
    );

    // No manifest (the backup stopped before its end).
    let unfinished = copy();
    std::fs::remove_file(unfinished.path().join("manifest.json")).unwrap();
    let out = restore(unfinished.path());
    assert_code(&out, 1);
    assert!(stderr(&out).contains("manifest.json"), "{}", stderr(&out));
    assert!(stderr(&out).contains("incomplete"), "{}", stderr(&out));

    // Nothing was written by any of them.
    for name in ["server-1", "server-2", "server-3"] {
        assert!(!target.path().join(name).join("kv_store.db").exists());
    }
    assert_code(&restore(backup.path()), 0);
}

/// A database in the seed's exact schema (`server/database.py`), with its JSON text.
fn seed_database(path: &Path, rows: &[(&str, Vec<String>)]) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        r#"CREATE TABLE IF NOT EXISTS keys (
               key TEXT PRIMARY KEY, created_at REAL, updated_at REAL);
           CREATE TABLE IF NOT EXISTS "values" (
               id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, value TEXT,
               version INTEGER, timestamp REAL);
           CREATE INDEX IF NOT EXISTS idx_key_version ON "values"(key, version);"#,
    )
    .unwrap();
    for (key, values) in rows {
        conn.execute(
            "INSERT INTO keys VALUES (?1, 1795420824.5, 1795420830.5)",
            [key],
        )
        .unwrap();
        for (i, value) in values.iter().enumerate() {
            conn.execute(
                r#"INSERT INTO "values"(key, value, version, timestamp) VALUES (?1, ?2, ?3, ?4)"#,
                rusqlite::params![key, value, i as i64 + 1, 1795420824.5 + i as f64],
            )
            .unwrap();
        }
    }
}

#[test]
fn a_seed_cluster_migrates_and_serves_with_its_placement() {
    let names = ["server-1", "server-2", "server-3"];
    let ring = kv_gateway::ring::Ring::new(names, kv_gateway::ring::DEFAULT_VNODES);
    let mut written = Written::new();
    let mut by_owner: BTreeMap<&str, Vec<(&str, Vec<String>)>> = BTreeMap::new();
    let keys: Vec<String> = (0..15).map(|i| format!("seed-key-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let values: Vec<String> = (0..=i % 3)
            .map(|v| format!("\"{key} v{}\"", v + 1))
            .collect();
        written.insert(
            key.clone(),
            values
                .iter()
                .map(|v| v.trim_matches('"').to_owned())
                .collect(),
        );
        by_owner
            .entry(ring.owner(key).unwrap())
            .or_default()
            .push((key, values));
    }
    let seed = tempfile::tempdir().unwrap();
    for name in names {
        let dir = seed.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        seed_database(
            &dir.join("kv_store.db"),
            by_owner.get(name).map_or(&[][..], Vec::as_slice),
        );
    }

    let data = tempfile::tempdir().unwrap();
    let out = common::kvstore_at(
        "http://127.0.0.1:1",
        &[
            "migrate-seed",
            "--from",
            arg(seed.path()),
            "--data-dir",
            arg(data.path()),
        ],
        None,
    );
    assert_code(&out, 0);
    assert!(stderr(&out).contains("[3/3] server-3"), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("kvstore up --data-dir"),
        "{}",
        stdout(&out)
    );

    let cluster = TestCluster::start(data.path());
    check_all(&cluster.url, &written);
    // Writes continue each key's version sequence on its owner.
    let rt = runtime();
    let client = Client::new(&cluster.url, Duration::from_secs(10)).unwrap();
    assert_eq!(put(&rt, &client, "seed-key-2", "next"), 4);
    cluster.stop();
}
