//! The operator's own HTTP endpoints: `/health` (liveness: the process serves) and `/metrics`
//! (Prometheus text). It has no readiness of its own: a standby replica is healthy too.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// The router, separate from the listener so tests can call it with `oneshot`.
pub fn app(registry: Arc<Registry>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        kv_common::http_metrics::render(&registry),
                    )
                        .into_response()
                }
            }),
        )
}
