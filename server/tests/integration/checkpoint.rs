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

/// Under a steady stream of commits the WAL must still start over from its beginning. It
/// once never did: each checkpoint pass copied the frames there were when it began, the
/// writer added more meanwhile, so the WAL was never all in the database and grew until the
/// writer's 20,000-page backstop (80 MiB). Now the writer finishes each pass.
///
/// A start-over is seen in the WAL file itself: SQLite writes a new salt into the header
/// each time. The backstop starts it over too, but only every 20,000 frames. Measured here
/// (fsync on, so commits come at the disk's pace): one start-over per pass with the writer
/// finishing them (9 in 2 s, about 2,500 frames each), 1 without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_under_a_stream_of_commits() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        data_dir: dir.path().to_owned(),
        cache_size: 16,
        cache_max_bytes: 1 << 20,
        cache_ttl: Duration::from_secs(60),
        sync: SyncMode::Full,
        readers: 1,
        queue_depth: 64,
    };
    let metrics = StoreMetrics::default();
    let store = Store::open(&config, metrics.clone(), CacheCounters::default()).unwrap();
    let wal = store.db_path().with_extension("db-wal");
    let until = Instant::now() + Duration::from_secs(2);
    // Four writers, so the writer thread always has the next batch waiting.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    let put = PutRequest {
                        key: format!("w{w}-{}", n % 50).into(),
                        value: "1".into(),
                        if_version: None,
                    };
                    store.put(put).await.unwrap();
                    n += 1;
                }
            })
        })
        .collect();
    // Salts 1 and 2 are bytes 16..24 of the WAL header.
    let salt = || {
        std::fs::read(&wal)
            .ok()
            .filter(|header| header.len() >= 32)
            .map(|header| header[16..24].to_vec())
    };
    let mut salts = Vec::new();
    while Instant::now() < until {
        if let Some(s) = salt()
            && salts.last() != Some(&s)
        {
            salts.push(s);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let passes = metrics.checkpoints.get();
    let starts = salts.len().saturating_sub(1);
    assert!(
        starts >= 4,
        "the WAL started over {starts} times in 2 s of commits ({passes} checkpoint passes, \
         {} frames at the last)",
        metrics.wal_frames.get()
    );
}
