//! The operator's `/health` and `/metrics`.

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use kv_operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use tower::ServiceExt;

async fn get(app: axum::Router, path: &str) -> (StatusCode, String) {
    let response = app
        .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn health_answers_ok() {
    let app = kv_operator::http::app(Arc::new(Registry::default()));
    let (status, body) = get(app, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("ok"));
}

#[tokio::test]
async fn metrics_expose_failures_by_reason() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics.reconcile_failed("kube_api");
    drop(metrics.reconcile_started());
    let app = kv_operator::http::app(Arc::new(registry));
    let (status, body) = get(app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains(r#"kv_operator_reconcile_failures_total{reason="kube_api"} 1"#),
        "{body}"
    );
    assert!(
        body.contains("kv_operator_reconciliations_total 1"),
        "{body}"
    );
    assert!(
        body.contains("kv_operator_reconcile_duration_seconds_count 1"),
        "{body}"
    );
}
