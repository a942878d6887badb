//! Model test: random sequences of operations, run against the real store and against a
//! `BTreeMap` of key -> versions; proptest shrinks any difference to a minimal sequence.
//! A shrunk failure is kept below as a named regression test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kv_server::Error;
use kv_server::metrics::StoreMetrics;
use kv_server::store::{CacheCounters, PutRequest, Store, StoreConfig, SyncMode};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: u8,
        value: u16,
    },
    CondPut {
        key: u8,
        if_version: u64,
        value: u16,
    },
    Get {
        key: u8,
    },
    GetVersion {
        key: u8,
        version: u64,
    },
    List {
        key: u8,
        after: u64,
        limit: u32,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    // Few keys and a tiny cache, so evictions (by count and by bytes), cache fills and restarts all interleave.
    let key = 0u8..4;
    prop_oneof![
        4 => (key.clone(), any::<u16>()).prop_map(|(key, value)| Op::Put { key, value }),
        2 => (key.clone(), 0u64..5, any::<u16>())
            .prop_map(|(key, if_version, value)| Op::CondPut { key, if_version, value }),
        3 => key.clone().prop_map(|key| Op::Get { key }),
        3 => (key.clone(), 1u64..6).prop_map(|(key, version)| Op::GetVersion { key, version }),
        1 => (key.clone(), 0u64..5, 1u32..4).prop_map(|(key, after, limit)| Op::List { key, after, limit }),
        1 => Just(Op::Restart),
    ]
}

fn open(dir: &std::path::Path) -> Store {
    let config = StoreConfig {
        data_dir: dir.to_owned(),
        // Both limits bite: three keys of one small version fit in 700 bytes (about 226
        // each), and an exact version read into one of them pushes another out by bytes.
        cache_size: 3,
        cache_max_bytes: 700,
        cache_ttl: Duration::from_secs(60),
        sync: SyncMode::Normal,
        readers: 2,
        queue_depth: 16,
    };
    Store::open(&config, StoreMetrics::default(), CacheCounters::default()).unwrap()
}

fn key_name(key: u8) -> String {
    format!("key-{key}")
}

async fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut model: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Put { key, value } | Op::CondPut { key, value, .. } => {
                let if_version = match op {
                    Op::CondPut { if_version, .. } => Some(if_version),
                    _ => None,
                };
                let name = key_name(key);
                let versions = model.entry(name.clone()).or_default();
                let current = versions.len() as u64;
                let result = store
                    .put(PutRequest {
                        key: Arc::from(name.as_str()),
                        value: Arc::from(value.to_string()),
                        if_version,
                    })
                    .await;
                if if_version.is_some_and(|v| v != current) {
                    let conflict = matches!(result, Err(Error::VersionConflict { actual, .. }) if actual == current);
                    prop_assert!(
                        conflict,
                        "expected a conflict at {}, got {:?}",
                        current,
                        result
                    );
                } else {
                    let outcome = result.unwrap();
                    prop_assert_eq!(outcome.version, current + 1);
                    prop_assert_eq!(outcome.previous_version, (current > 0).then_some(current));
                    prop_assert_eq!(outcome.total_versions, current + 1);
                    versions.push(value.to_string());
                }
            }
            Op::Get { key } => {
                let name = key_name(key);
                let got = store.get(&name, None).await;
                match model.get(&name).filter(|v| !v.is_empty()) {
                    Some(versions) => {
                        let (found, _) = got.unwrap();
                        prop_assert_eq!(found.version, versions.len() as u64);
                        prop_assert_eq!(&*found.value, versions.last().unwrap().as_str());
                    }
                    None => {
                        let missing = matches!(got, Err(Error::KeyNotFound { .. }));
                        prop_assert!(missing, "expected key not found, got {:?}", got);
                    }
                }
            }
            Op::GetVersion { key, version } => {
                let name = key_name(key);
                let got = store.get(&name, Some(version)).await;
                let expected = model.get(&name).and_then(|v| v.get(version as usize - 1));
                match expected {
                    Some(value) => {
                        let (found, _) = got.unwrap();
                        prop_assert_eq!(found.version, version);
                        prop_assert_eq!(&*found.value, value.as_str());
                    }
                    None => {
                        let missing = matches!(got, Err(Error::VersionNotFound { .. }));
                        prop_assert!(missing, "expected version not found, got {:?}", got);
                    }
                }
            }
            Op::List { key, after, limit } => {
                let name = key_name(key);
                let got = store.versions(&name, after, limit).await;
                match model.get(&name).filter(|v| !v.is_empty()) {
                    Some(versions) => {
                        let page = got.unwrap();
                        prop_assert_eq!(page.latest_version, versions.len() as u64);
                        let expected: Vec<(u64, &str)> = versions
                            .iter()
                            .enumerate()
                            .map(|(i, v)| (i as u64 + 1, v.as_str()))
                            .filter(|(v, _)| *v > after)
                            .take(limit as usize)
                            .collect();
                        let actual: Vec<(u64, &str)> = page
                            .versions
                            .iter()
                            .map(|v| (v.version, &*v.value))
                            .collect();
                        prop_assert_eq!(actual, expected);
                    }
                    None => {
                        let missing = matches!(got, Err(Error::KeyNotFound { .. }));
                        prop_assert!(missing, "expected key not found, got {:?}", got);
                    }
                }
            }
            Op::Restart => {
                store.close().await;
                drop(store);
                store = open(dir.path());
            }
        }
    }
    store.close().await;
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_a_map_of_version_lists(ops in proptest::collection::vec(op(), 1..60)) {
        runtime().block_on(check(ops))?;
    }
}

/// Regression: an exact read must not become the cached latest (the seed's stale read),
/// across an eviction and a restart.
#[test]
fn regression_exact_read_then_eviction_then_restart() {
    use Op::*;
    runtime()
        .block_on(check(vec![
            Put { key: 0, value: 1 },
            Put { key: 0, value: 2 },
            GetVersion { key: 0, version: 1 },
            Put { key: 1, value: 1 },
            Put { key: 2, value: 1 },
            Get { key: 0 },
            Restart,
            GetVersion { key: 0, version: 1 },
            Get { key: 0 },
            CondPut {
                key: 0,
                if_version: 2,
                value: 3,
            },
            List {
                key: 0,
                after: 1,
                limit: 3,
            },
        ]))
        .unwrap();
}
