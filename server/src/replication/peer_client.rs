//! The one HTTP client a server talks to its peers with: pooled keep-alive connections, a
//! connect timeout, a whole-exchange timeout and a bound on answer size.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest answer read from a peer: a change page is bounded by bytes on the sending side
/// (see `CHANGES_PAGE_BYTES`), plus one value of the largest size a server may accept.
const MAX_ANSWER_BYTES: usize = kv_common::api::MAX_VALUE_BYTES_LIMIT + (16 << 20);

#[derive(Clone)]
pub struct PeerClient {
    http: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl PeerClient {
    pub fn new(connect_timeout: Duration, timeout: Duration) -> PeerClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        kv_common::net::keepalive_connector(&mut connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        PeerClient { http, timeout }
    }

    /// One exchange: status and whole body, or why there was none.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        json_body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), String> {
        let exchange = async {
            let mut request = Request::builder().method(method).uri(url);
            let body = match json_body {
                Some(bytes) => {
                    request = request.header(header::CONTENT_TYPE, "application/json");
                    Full::new(Bytes::from(bytes))
                }
                None => Full::new(Bytes::new()),
            };
            let request = request.body(body).map_err(|e| e.to_string())?;
            let response = self.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    format!("cannot connect: {e}")
                } else {
                    format!("request failed: {e}")
                }
            })?;
            let (parts, body) = response.into_parts();
            let bytes = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((parts.status, bytes))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
    }
}
