//! WAL checkpoints stay paced under a stream of commits. They once ran after nearly every
//! commit (each commit notice cut the pause short) and took a quarter of the server's CPU
//! under a write load; `kv_server_wal_checkpoints` counts them.

use std::time::{Duration, Instant};

use kv_server::metrics::StoreMetrics;
use kv_server::store::{CacheCounters, PutRequest, Store, StoreConfig, SyncMode};

/// The checkpoint thread's least time between checkpoints under load.
const PACE: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_paced_under_a_stream_of_commits() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        data_dir: dir.path().to_owned(),
        cache_size: 16,
        cache_max_bytes: 1 << 20,
        cache_ttl: Duration::from_secs(60),
        sync: SyncMode::Normal,
        readers: 1,
        queue_depth: 16,
    };
    let metrics = StoreMetrics::default();
    let store = Store::open(&config, metrics.clone(), CacheCounters::default()).unwrap();
    let started = Instant::now();
    // One put at a time: every put is its own commit, so its own commit notice.
    let mut commits = 0u64;
    while started.elapsed() < Duration::from_millis(700) {
        let key = format!("k{}", commits % 10);
        let put = PutRequest {
            key: key.into(),
            value: "1".into(),
            if_version: None,
        };
        store.put(put).await.unwrap();
        commits += 1;
    }
    // Let the last pause end, so at least one checkpoint has run whatever the machine's speed.
    tokio::time::sleep(PACE + Duration::from_millis(100)).await;
    let elapsed = started.elapsed();
    let ran = metrics.checkpoints.get();
    let allowed = (elapsed.as_millis() / PACE.as_millis()) as u64 + 1;
    assert!(ran >= 1, "no checkpoint ran after {commits} commits");
    assert!(
        ran <= allowed,
        "{ran} checkpoints for {commits} commits in {elapsed:?}: more than one per {PACE:?}"
    );
    assert!(
        commits > 2 * allowed,
        "too few commits ({commits}) to tell paced from not"
    );
}
