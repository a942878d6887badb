//! The HTTP face of the server: `app(state)` builds the whole router, so tests drive it with
//! `oneshot` and `run` serves it.

pub mod admin;
mod direct;
mod error;
mod extract;
mod internal;
pub mod mux;
mod openapi;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::middleware::from_fn_with_state;
use axum::routing::{any, get, put};
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub use error::ApiError;
pub use openapi::ApiDoc;

use kv_common::body_budget::BodyBudget;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::replication::Replication;
use crate::store::Store;

/// Largest `/internal/replicate` body: a sender's push of up to 512 versions stops at 16 MiB
/// of records plus one (`replication/sender.rs` checks the sum against this).
pub(crate) const REPLICATE_BODY_LIMIT: usize = 256 << 20;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub config: Arc<ServerConfig>,
    /// `None` on a standalone server (no `--peers`).
    pub replication: Option<Arc<Replication>>,
    /// Put bodies held at once (`--max-inflight-body-bytes`).
    pub body_budget: BodyBudget,
}

impl AppState {
    /// Validates the configuration and opens the store. Blocking (it may migrate a large
    /// database): call it from `spawn_blocking` in async code.
    pub fn open(config: ServerConfig) -> crate::Result<AppState> {
        config.validate().map_err(crate::Error::Config)?;
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(
            &config.store_config(),
            metrics.store.clone(),
            metrics.cache.clone(),
        )?;
        let body_budget = BodyBudget::new(
            config.max_inflight_body_bytes,
            put_body_limit(&config),
            metrics.body_bytes.clone(),
            metrics.body_waits.clone(),
        );
        Ok(AppState {
            store,
            metrics,
            config: Arc::new(config),
            replication: None,
            body_budget,
        })
    }

    /// Opens the store (on a blocking thread) and starts replication when `--peers` is set.
    pub async fn start(config: ServerConfig) -> crate::Result<AppState> {
        let mut state = tokio::task::spawn_blocking(move || AppState::open(config))
            .await
            .map_err(|e| crate::Error::Internal(format!("open task failed: {e}")))??;
        state.replication = Replication::start(
            &state.config,
            &state.store,
            state.metrics.replication.clone(),
        )
        .await?;
        Ok(state)
    }
}

/// The `--metrics-listen` port: metrics and liveness only, nothing that reads or writes data.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(routes::metrics))
        .route("/health", get(routes::health))
        .fallback(routes::not_found)
        .with_state(state)
}

/// Reads a put's body only once it fits in the budget, and holds its room until answered.
/// (The gateway's links carry bodies up to 64 KiB, read already; only HTTP puts come here.)
async fn admit_body(
    State(budget): State<BodyBudget>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let _admitted = budget.admit(request.headers()).await;
    next.run(request).await
}

/// The largest put body: the largest value and room for its JSON envelope.
fn put_body_limit(config: &ServerConfig) -> usize {
    config.max_value_bytes + kv_common::api::PUT_BODY_OVERHEAD
}

pub fn app(state: AppState) -> Router {
    let body_limit = put_body_limit(&state.config);
    let http_metrics = state.metrics.http.clone();
    Router::new()
        .route(
            "/put/{key}",
            put(routes::put)
                .post(routes::post)
                .layer(DefaultBodyLimit::max(body_limit))
                .layer(from_fn_with_state(state.body_budget.clone(), admit_body)),
        )
        .route("/get/{key}", get(routes::get))
        .route("/versions/{key}", get(routes::versions))
        .route("/put/", any(routes::empty_key))
        .route("/get/", any(routes::empty_key))
        .route("/versions/", any(routes::empty_key))
        .route("/cache/stats", get(routes::cache_stats))
        .route("/db/stats", get(routes::db_stats))
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .route("/admin/snapshot", get(admin::snapshot))
        .route(
            "/internal/replicate",
            axum::routing::post(internal::replicate)
                .layer(DefaultBodyLimit::max(REPLICATE_BODY_LIMIT)),
        )
        .route("/internal/changes", get(internal::changes))
        .route("/internal/status", get(internal::status))
        .route(
            "/internal/ring",
            get(internal::ring).put(internal::put_ring),
        )
        .route("/internal/cleanup", axum::routing::post(internal::cleanup))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .with_state(state)
        .layer(kv_common::http_metrics::TrackLayer::new(http_metrics))
        .layer(TraceLayer::new_for_http().on_failure(log_failure))
}

/// tower-http logs every 5xx at error. A `503` is this server's answer to a request it must
/// not serve yet (syncing, a ring move, a newer epoch, too few replicas) and names its cause
/// in its body, counted in the metrics: during a move there are hundreds, and an operator
/// must not read them as faults. Other 5xx and failures stay errors.
fn log_failure(class: ServerErrorsFailureClass, latency: std::time::Duration, _: &tracing::Span) {
    let latency_ms = latency.as_millis();
    match class {
        ServerErrorsFailureClass::StatusCode(http::StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::debug!(latency_ms, "answered 503 (see its code)");
        }
        other => tracing::error!(classification = %other, latency_ms, "response failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tower_http::classify::ServerErrorsFailureClass::StatusCode;

    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_503_is_not_logged_as_an_error_a_500_is() {
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = text.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Captured(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::Span::none();
            super::log_failure(
                StatusCode(http::StatusCode::SERVICE_UNAVAILABLE),
                Duration::ZERO,
                &span,
            );
            super::log_failure(
                StatusCode(http::StatusCode::INTERNAL_SERVER_ERROR),
                Duration::ZERO,
                &span,
            );
        });
        let text = String::from_utf8(text.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("ERROR") && text.contains("500"), "{text}");
    }
}
