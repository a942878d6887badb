//! Per-route HTTP metrics (requests by route, method and status; latency by route), as a
//! tower layer both the server and the gateway install the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::response::Response;
use http::{Method, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// Request counters and latency histograms, registered under `http_`.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let requests = Family::<RequestLabels, Counter>::default();
        // 50 µs .. ~1.6 s: the interesting range is sub-millisecond.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        Arc::new(HttpMetrics { requests, latency })
    }

    /// Counts one answer (the link's short way to a handler counts through this too).
    pub fn record(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }
}

/// The metrics middleware: `router.layer(TrackLayer::new(metrics))`. Routes are labelled by
/// their pattern (`/get/{key}`), never by the raw path, so keys do not explode the label
/// space; unmatched paths share the label `unmatched`.
///
/// A tower layer rather than `axum::middleware::from_fn`: `from_fn` clones the service below
/// it and boxes a future on every request, which showed in the gateway's CPU per proxied GET
/// (docs/benchmarks.md, "The load generator's client and the gateway's layers"); this one
/// adds a clock read and its own unboxed future.
#[derive(Clone)]
pub struct TrackLayer(Arc<HttpMetrics>);

impl TrackLayer {
    pub fn new(metrics: Arc<HttpMetrics>) -> TrackLayer {
        TrackLayer(metrics)
    }
}

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`TrackLayer`] wraps each route in.
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S, B> tower::Service<Request<B>> for Track<S>
where
    S: tower::Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        TrackFuture {
            started: Instant::now(),
            inner: self.inner.call(req),
            route,
            method,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, recorded in the metrics when it is ready.
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Option<MatchedPath>,
        method: Method,
        metrics: Arc<HttpMetrics>,
    }
}

impl<F, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        // An `Err` is not an answer (axum's routes cannot fail): nothing to count.
        if let Ok(response) = &result {
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            this.metrics.record(
                route,
                this.method.as_str(),
                response.status().as_u16(),
                this.started.elapsed().as_secs_f64(),
            );
        }
        Poll::Ready(result)
    }
}

/// Renders a registry as Prometheus text exposition.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn answers_are_counted_by_route_pattern_method_and_status() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let app = Router::new()
            .route("/get/{key}", get(|| async { "ok" }))
            .layer(TrackLayer::new(metrics));
        for uri in ["/get/a", "/get/b%20c", "/nowhere"] {
            let request = Request::get(uri).body(Body::empty()).unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
        let put = Request::put("/get/a").body(Body::empty()).unwrap();
        app.oneshot(put).await.unwrap();

        let text = render(&registry);
        for line in [
            r#"http_requests_total{route="/get/{key}",method="GET",status="200"} 2"#,
            r#"http_requests_total{route="/get/{key}",method="PUT",status="405"} 1"#,
            r#"http_requests_total{route="unmatched",method="GET",status="404"} 1"#,
            r#"http_request_duration_seconds_count{route="/get/{key}"} 3"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
