//! The coordinator's HTTP client: pooled, one timeout over each whole exchange, answers
//! bounded in size (ring views and statuses are small).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const MAX_ANSWER_BYTES: usize = 4 << 20;

#[derive(Clone)]
pub struct HttpClient {
    http: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(timeout: Duration) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(2))));
        connector.set_nodelay(true);
        kv_common::net::keepalive_connector(&mut connector);
        HttpClient {
            // Below the servers' 75 s client timeout: a pooled connection is dropped here
            // before a server closes it, so no request is sent on one being closed.
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
            timeout,
        }
    }

    /// One exchange: status and body, or why there was none.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        json: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut request = Request::builder().method(method).uri(url);
        if json.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|e| format!("invalid request to {url}: {e}"))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| format!("cannot reach {url}: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer of {url}: {e}"))?
                .to_bytes();
            Ok((parts.status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {:?}", self.timeout))?
    }
}
