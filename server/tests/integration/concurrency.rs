//! Many writers on one key get unique, gap-free versions.

use std::collections::BTreeSet;

use axum::http::StatusCode;

use crate::support::test_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_to_one_key_get_gap_free_unique_versions() {
    let app = std::sync::Arc::new(test_app());
    let tasks: Vec<_> = (0..50)
        .map(|t| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for i in 0..20 {
                    let answer = app.put("hot", &format!(r#""{t}-{i}""#)).await;
                    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
                    versions.push(answer.json()["version"].as_u64().unwrap());
                }
                versions
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), 1000, "duplicate versions were handed out");
    assert_eq!(unique, (1..=1000).collect(), "versions have gaps");
    assert_eq!(app.get("/get/hot").await.json()["version"], 1000);
}
