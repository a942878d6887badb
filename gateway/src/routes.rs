//! The router: every public route, the JSON 404/405 fallbacks, auth and metrics layers.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kv_common::http_metrics::TrackLayer;
use serde_json::json;

use crate::error::Error;
use crate::state::AppState;
use crate::{admin, auth, openapi, proxy, stats};

/// The gateway's HTTP application. Tests drive it with `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    let router = Router::new()
        .route(
            "/put/{key}",
            axum::routing::put(proxy::put).post(proxy::put),
        )
        .route("/get/{key}", get(proxy::get))
        .route("/versions/{key}", get(proxy::versions))
        .route(
            "/put/",
            axum::routing::put(proxy::empty_key).post(proxy::empty_key),
        )
        .route("/get/", get(proxy::empty_key))
        .route("/versions/", get(proxy::empty_key))
        .route("/servers", get(stats::servers))
        .route("/cache/stats", get(stats::cache_stats))
        .route("/db/stats", get(stats::db_stats))
        .route("/admin/snapshot", get(admin::snapshot))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(openapi::docs())
        // The seed forwarded unknown paths to its first server; here they end at the gateway.
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // Without a token the check is not installed at all: a layer costs every request a
    // clone of the service below it and a boxed future.
    let router = if state.token.is_some() {
        router.layer(from_fn_with_state(state.clone(), auth::require_token))
    } else {
        router
    };
    router
        .layer(TrackLayer::new(state.http_metrics.clone()))
        .with_state(state)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, description = "The gateway is alive")))]
pub async fn health() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// Readiness: a ring with at least one healthy member.
#[utoipa::path(get, path = "/ready", tag = "operations", security(()),
    responses((status = 200, description = "Serving"),
              (status = 503, description = "No healthy member yet", body = kv_common::ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let topology = state.topology.load();
    if topology.is_ready() {
        axum::Json(json!({ "status": "ready", "epoch": topology.epoch })).into_response()
    } else if topology.ring.is_empty() {
        Error::NoServers.into_response()
    } else {
        Error::NotReady.into_response()
    }
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        kv_common::http_metrics::render(&state.registry),
    )
        .into_response()
}

async fn not_found() -> Error {
    Error::NotFound
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}
