//! The one HTTP client the gateway talks to members with: pooled keep-alive connections,
//! connect and request timeouts, bounded response bodies, per-member metrics, and passive
//! health marking when a member cannot be reached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::health;
use crate::membership::Backend;
use crate::metrics::GatewayMetrics;

/// Why a call to a member got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made: the member is down (and is now marked so).
    #[error("cannot connect: {0}")]
    Connect(#[source] hyper_util::client::legacy::Error),
    /// Connected, but no whole answer within the request timeout. Not a health verdict: a
    /// slow answer may still have been applied.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed mid-request.
    #[error("request failed: {0}")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The answer was larger than the gateway forwards.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}

/// A cheap-to-clone handle on the pooled client.
#[derive(Clone)]
pub struct BackendClient {
    http: Client<HttpConnector, Full<Bytes>>,
    request_timeout: Duration,
    max_response_bytes: usize,
    metrics: Arc<GatewayMetrics>,
}

impl BackendClient {
    pub fn new(
        connect_timeout: Duration,
        request_timeout: Duration,
        max_response_bytes: usize,
        metrics: Arc<GatewayMetrics>,
    ) -> BackendClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        // Requests are small and latency-bound: never wait for Nagle.
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        BackendClient {
            http,
            request_timeout,
            max_response_bytes,
            metrics,
        }
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// Sends one request to `backend` and reads the whole answer (bounded). `body` is the
    /// request body with its content type.
    pub async fn send(
        &self,
        backend: &Backend,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, HeaderValue)>,
    ) -> Result<Response<Bytes>, CallError> {
        self.send_with_headers(backend, method, path_and_query, body, &[])
            .await
    }

    /// [`BackendClient::send`] with request headers of the gateway's own (the write quorum of
    /// a put); client headers are never passed on.
    pub async fn send_with_headers(
        &self,
        backend: &Backend,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, HeaderValue)>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Response<Bytes>, CallError> {
        let started = Instant::now();
        let result = tokio::time::timeout(
            self.request_timeout,
            self.exchange(backend, method, path_and_query, body, headers),
        )
        .await
        .unwrap_or(Err(CallError::Timeout(self.request_timeout)));
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CallError::Connect(_)) => "connect_error",
            Err(CallError::Timeout(_)) => "timeout",
            Err(CallError::Transport(_)) => "error",
            Err(CallError::TooLarge(_)) => "too_large",
        };
        let seconds = result.is_ok().then(|| started.elapsed().as_secs_f64());
        self.metrics.request(&backend.name, outcome, seconds);
        if let Err(CallError::Connect(_)) = &result {
            // Passive marking: the next requests for this member's keys get a quick 503
            // instead of waiting on a dead address; the active check brings it back.
            health::set(self, backend, false);
        }
        result
    }

    async fn exchange(
        &self,
        backend: &Backend,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, HeaderValue)>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Response<Bytes>, CallError> {
        let uri = backend
            .url
            .join(path_and_query)
            .map_err(|e| CallError::Transport(e.into()))?;
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let body = match body {
            Some((bytes, content_type)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                Full::new(bytes)
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|e| CallError::Transport(e.into()))?;
        let response = self.http.request(request).await.map_err(|e| {
            if e.is_connect() {
                CallError::Connect(e)
            } else {
                CallError::Transport(e.into())
            }
        })?;
        let (parts, body) = response.into_parts();
        let bytes = Limited::new(body, self.max_response_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    CallError::TooLarge(self.max_response_bytes)
                } else {
                    CallError::Transport(e)
                }
            })?
            .to_bytes();
        Ok(Response::from_parts(parts, bytes))
    }
}
