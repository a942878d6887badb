//! The one client the gateway talks to members with: over the pipelined link (`mux`,
//! `--backend-transport link`) or pooled keep-alive HTTP/1.1 connections; connect and
//! request timeouts, bounded response bodies, per-member metrics, and passive health marking
//! when a member cannot be reached, the same for both.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use kv_common::mux::{self, RequestFrame, ResponseFrame};

use crate::config::Transport;
use crate::health;
use crate::large_answers::LargeAnswers;
use crate::membership::{Backend, Topology};
use crate::metrics::GatewayMetrics;
use crate::mux::{LinkError, Links};

/// Why a call to a member got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made: the member is down (and is now marked so).
    #[error("cannot connect: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
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

/// `x-kv-to` (`kv_common::api::ADDRESSEE_HEADER`), parsed once.
const ADDRESSEE: HeaderName = HeaderName::from_static(kv_common::api::ADDRESSEE_HEADER);

/// The detail of a `421 wrong_server` answer; `None` for any other answer.
fn wrong_server(answer: &Response<Bytes>) -> Option<String> {
    if answer.status() != http::StatusCode::MISDIRECTED_REQUEST {
        return None;
    }
    let body: kv_common::ErrorBody = serde_json::from_slice(answer.body()).ok()?;
    (body.code == kv_common::ErrorCode::WrongServer).then_some(body.detail)
}

/// Request bodies above this go over HTTP even with the link in use. A frame is written whole
/// and read whole, so a large value would hold up every request behind it on that server's
/// link: 64 MiB takes tens of milliseconds even on loopback. Answers cannot be sized before
/// they come: a GET tells the server this limit (`mux::MAX_ANSWER`), and a larger answer
/// comes back as "ask over HTTP" (`mux::USE_HTTP`), which the gateway then does, and
/// remembers, so that the next read of that GET goes over HTTP at once ([`LargeAnswers`]).
/// Other methods are never asked twice, and their answers are small.
pub const LINK_MAX_BODY: usize = 64 << 10;

/// [`LINK_MAX_BODY`] as the value of `mux::MAX_ANSWER`, formatted once.
static MAX_ANSWER_VALUE: LazyLock<HeaderValue> = LazyLock::new(|| HeaderValue::from(LINK_MAX_BODY));

/// A cheap-to-clone handle on the pooled client.
#[derive(Clone)]
pub struct BackendClient {
    http: Client<HttpConnector, Full<Bytes>>,
    /// The pipelined links, when `--backend-transport link`.
    links: Option<Arc<Links>>,
    request_timeout: Duration,
    max_response_bytes: usize,
    metrics: Arc<GatewayMetrics>,
    /// GETs whose last answer did not fit the link (only used with the link).
    large_answers: Arc<LargeAnswers>,
}

impl BackendClient {
    pub fn new(
        connect_timeout: Duration,
        request_timeout: Duration,
        max_response_bytes: usize,
        transport: Transport,
        links_per_server: usize,
        metrics: Arc<GatewayMetrics>,
    ) -> BackendClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        // Requests are small and latency-bound: never wait for Nagle.
        connector.set_nodelay(true);
        kv_common::net::keepalive_connector(&mut connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let links = (transport == Transport::Link).then(|| {
            Arc::new(Links::new(
                connect_timeout,
                max_response_bytes,
                links_per_server,
                metrics.clone(),
            ))
        });
        BackendClient {
            http,
            links,
            request_timeout,
            max_response_bytes,
            metrics,
            large_answers: Arc::default(),
        }
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// Whether this client talks to servers over links (else everything goes over HTTP).
    pub fn uses_links(&self) -> bool {
        self.links.is_some()
    }

    /// Whether `backend` answers `GET path` with a success over the HTTP pool, past its
    /// link, within `timeout`. Not counted in the per-member request metrics: it is the
    /// health check's second opinion on a link (see [`BackendClient::suspect_links`]).
    pub async fn answers_over_http(
        &self,
        backend: &Backend,
        path: &str,
        timeout: Duration,
    ) -> bool {
        let exchange = self.over_http(backend, Method::GET, path, None, &[], false);
        matches!(
            tokio::time::timeout(timeout, exchange).await,
            Ok(Ok(response)) if response.status().is_success()
        )
    }

    /// See [`Links::mark`].
    pub fn mark_links(&self, backend: &Backend) {
        if let Some(links) = &self.links {
            links.mark(&backend.url);
        }
    }

    /// `backend` answered over HTTP while a request on its link went unanswered: see
    /// [`Links::suspect`].
    pub fn suspect_links(&self, backend: &Backend) -> bool {
        self.links
            .as_ref()
            .is_some_and(|links| links.suspect(&backend.url))
    }

    /// Closes the links to servers that are not members of `topology` (see [`Links::retain`]).
    /// Over HTTP nothing to do: the pool closes idle connections by itself.
    pub fn forget_former_members(&self, topology: &Topology) {
        if let Some(links) = &self.links {
            links.retain(|address| {
                topology
                    .backends
                    .values()
                    .any(|backend| backend.url.host_port() == address)
            });
        }
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
        let mut wrong = false;
        let result = result.and_then(|answer| match wrong_server(&answer) {
            // Refused before anything was read or stored: as if the member were unreachable,
            // which it is at this address (reads go to its replicas, writes answer 503).
            Some(detail) => {
                tracing::warn!(member = %backend.name, url = %backend.url, %detail,
                    "another server answers at this member's address: it gets no requests");
                wrong = true;
                Err(CallError::Connect(detail.into()))
            }
            None => Ok(answer),
        });
        let outcome = match &result {
            _ if wrong => "wrong_server",
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

    /// The gateway's own headers of a request to `backend`: `headers` and the member meant.
    fn own_headers<'a>(
        backend: &'a Backend,
        headers: &'a [(HeaderName, HeaderValue)],
    ) -> impl Iterator<Item = (HeaderName, HeaderValue)> + 'a {
        let addressee = backend.addressee.clone().map(|name| (ADDRESSEE, name));
        headers.iter().cloned().chain(addressee)
    }

    async fn exchange(
        &self,
        backend: &Backend,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, HeaderValue)>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Response<Bytes>, CallError> {
        // A GET whose last answer was too large for the link: straight over HTTP.
        let known_large = self.links.is_some()
            && method == Method::GET
            && self.large_answers.contains(&backend.name, path_and_query);
        if known_large {
            self.metrics.link_event("known_large_over_http");
        }
        if let Some(links) = &self.links
            && !known_large
            && mux::carries(&method)
            && body
                .as_ref()
                .is_none_or(|(bytes, _)| bytes.len() <= LINK_MAX_BODY)
        {
            let mut frame_headers: Vec<_> = Self::own_headers(backend, headers).collect();
            if method == Method::GET {
                frame_headers.push((mux::MAX_ANSWER, MAX_ANSWER_VALUE.clone()));
            }
            let payload = match body.clone() {
                Some((bytes, content_type)) => {
                    frame_headers.push((header::CONTENT_TYPE, content_type));
                    bytes
                }
                None => Bytes::new(),
            };
            let request = RequestFrame {
                id: 0,
                method: method.clone(),
                path: path_and_query.to_owned(),
                headers: frame_headers,
                body: payload,
            };
            match links.call(&backend.url, request).await {
                // Too large for the link: the same GET over HTTP below.
                Ok(answer) if mux::is_use_http(&answer) => {
                    self.metrics.link_event("answer_over_http");
                    self.large_answers.mark(&backend.name, path_and_query);
                }
                Ok(answer) => return self.answer_of(answer),
                // A server without the link: HTTP below.
                Err(LinkError::Refused | LinkError::Unanswered) => {}
                // Announced by the server as never taken, even after trying a new link: it
                // is shutting down, as good as down.
                Err(err @ (LinkError::Connect(_) | LinkError::NotTaken)) => {
                    return Err(CallError::Connect(err.into()));
                }
                Err(LinkError::TooLarge) => {
                    return Err(CallError::TooLarge(self.max_response_bytes));
                }
                Err(err @ (LinkError::Lost(_) | LinkError::Frame(_))) => {
                    return Err(CallError::Transport(err.into()));
                }
            }
        }
        self.over_http(backend, method, path_and_query, body, headers, known_large)
            .await
    }

    /// One exchange over the HTTP pool. `known_large`: a GET sent over HTTP because its last
    /// answer was too large for the link.
    async fn over_http(
        &self,
        backend: &Backend,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, HeaderValue)>,
        headers: &[(HeaderName, HeaderValue)],
        known_large: bool,
    ) -> Result<Response<Bytes>, CallError> {
        let uri = backend
            .url
            .join(path_and_query)
            .map_err(|e| CallError::Transport(e.into()))?;
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in Self::own_headers(backend, headers) {
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
                CallError::Connect(e.into())
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
        if known_large && bytes.len() <= LINK_MAX_BODY {
            // The value became small again (or the key went): back to the link.
            self.large_answers.forget(&backend.name, path_and_query);
        }
        Ok(Response::from_parts(parts, bytes))
    }

    fn answer_of(&self, answer: ResponseFrame) -> Result<Response<Bytes>, CallError> {
        if answer.body.len() > self.max_response_bytes {
            return Err(CallError::TooLarge(self.max_response_bytes));
        }
        let mut response = Response::new(answer.body);
        *response.status_mut() = answer.status;
        let headers = response.headers_mut();
        for (name, value) in answer.headers {
            headers.append(name, value);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::{Buf, BytesMut};
    use kv_common::mux::{PREFACE, ResponseFrame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::membership::BackendUrl;

    /// A server that speaks both transports and records, for each request, which one
    /// carried it and the length of its body.
    async fn both_transports() -> (BackendUrl, Arc<Mutex<Vec<(&'static str, usize)>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = BackendUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(stream, record.clone()));
            }
        });
        (url, seen)
    }

    async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Vec<(&'static str, usize)>>>) {
        let mut buf = BytesMut::new();
        while buf.len() < PREFACE.len() {
            if stream.read_buf(&mut buf).await.unwrap() == 0 {
                return;
            }
        }
        if buf.starts_with(PREFACE) {
            buf.advance(PREFACE.len());
            stream.write_all(PREFACE).await.unwrap();
            loop {
                while let Some(frame) = mux::decode_request(&mut buf, 1 << 30).unwrap() {
                    seen.lock().unwrap().push(("link", frame.body.len()));
                    let mut out = BytesMut::new();
                    let answer = ResponseFrame {
                        id: frame.id,
                        status: http::StatusCode::OK,
                        headers: vec![],
                        body: Bytes::from_static(b"{}"),
                    };
                    mux::encode_response(&mut out, &answer).unwrap();
                    stream.write_all(&out).await.unwrap();
                }
                if stream.read_buf(&mut buf).await.unwrap() == 0 {
                    return;
                }
            }
        }
        // HTTP: one request with a Content-Length body per exchange.
        loop {
            let head_end = loop {
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                if stream.read_buf(&mut buf).await.unwrap() == 0 {
                    return;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < head_end + length {
                assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
            }
            buf.advance(head_end + length);
            seen.lock().unwrap().push(("http", length));
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn large_request_bodies_go_over_http_the_rest_over_the_link() {
        let (url, seen) = both_transports().await;
        let backend = Backend::new("s".into(), url);
        let metrics =
            GatewayMetrics::register(&mut prometheus_client::registry::Registry::default());
        let client = BackendClient::new(
            Duration::from_secs(2),
            Duration::from_secs(5),
            1 << 20,
            Transport::Link,
            1,
            metrics,
        );
        let json = HeaderValue::from_static("application/json");
        for size in [10, LINK_MAX_BODY, LINK_MAX_BODY + 1, 4 << 20] {
            let body = Some((Bytes::from(vec![b'x'; size]), json.clone()));
            let answer = client.send(&backend, Method::PUT, "/put/k", body).await;
            assert_eq!(answer.unwrap().status(), 200);
        }
        client
            .send(&backend, Method::GET, "/get/k", None)
            .await
            .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("link", 10),
                ("link", LINK_MAX_BODY),
                ("http", LINK_MAX_BODY + 1),
                ("http", 4 << 20),
                ("link", 0),
            ]
        );
    }
}
