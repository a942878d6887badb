//! The HTTP client behind `kvstore put/get/versions/servers/stats` (and `kvstore up`'s readiness
//! checks): a pooled hyper-util client, one timeout over the whole exchange, and errors that
//! say what to do (`cannot reach ...: is `kvstore up` running?`) instead of hyper's chain.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Pool;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::utf8_percent_encode;
use serde::de::DeserializeOwned;

use crate::bench::config::parse_url;
use crate::bench::workload::KEY_ESCAPE;
use crate::{Error, Result};

/// Time a whole request may take (connect, send, read the answer), unless `--timeout` says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A key as one path segment: `a/b` becomes `a%2Fb`, so it is one key, not a path.
pub fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, KEY_ESCAPE).to_string()
}

/// A client for one base URL. Cloning is cheap and shares the connection pool.
#[derive(Clone, Debug)]
pub struct Client {
    /// `http://host:port[/prefix]`, without a trailing slash.
    base: String,
    http: Pool<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// A complete answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    url: String,
}

impl Client {
    /// Checks `url` (`http://host[:port][/prefix]`; no TLS) and builds the pool.
    pub fn new(url: &str, timeout: Duration) -> Result<Client> {
        parse_url(url)?;
        let mut connector = HttpConnector::new();
        // A refused or unroutable address fails fast instead of eating the whole timeout.
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(3))));
        connector.set_nodelay(true);
        let http = Pool::builder(TokioExecutor::new()).build(connector);
        Ok(Client {
            base: url.trim_end_matches('/').to_owned(),
            http,
            timeout,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path_and_query: &str) -> Result<Answer> {
        self.send(Method::GET, path_and_query, None).await
    }

    /// Sends one request; `body`, when given, is sent as JSON. Any status is an `Ok` answer:
    /// see [`Answer::ok`].
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
    ) -> Result<Answer> {
        let url = format!("{}{path_and_query}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Error::Url {
                url: url.clone(),
                why: e.to_string(),
            })?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    Error::Unreachable {
                        url: self.base.clone(),
                        cause: innermost(&e),
                    }
                } else {
                    Error::Request {
                        url: url.clone(),
                        cause: innermost(&e),
                    }
                }
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Request {
                    url: url.clone(),
                    cause: format!("reading the answer: {}", innermost(&e)),
                })?
                .to_bytes();
            Ok(Answer {
                status,
                body,
                url: url.clone(),
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            })?
    }
}

impl Answer {
    /// The answer itself on 2xx; otherwise [`Error::Http`] with the service's `detail` and
    /// `code` (or the start of the body, if it is not a kvstore error).
    pub fn ok(self) -> Result<Answer> {
        if self.status.is_success() {
            return Ok(self);
        }
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            detail: String,
            #[serde(default)]
            code: String,
        }
        let (detail, code) = match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(body) => (body.detail, body.code),
            Err(_) => {
                let text = String::from_utf8_lossy(&self.body);
                let text: String = text.trim().chars().take(200).collect();
                let reason = self.status.canonical_reason().unwrap_or("error");
                let detail = if text.is_empty() {
                    reason.to_owned()
                } else {
                    format!("{reason}: {text}")
                };
                (detail, String::new())
            }
        };
        Err(Error::Http {
            status: self.status.as_u16(),
            code,
            detail,
        })
    }

    /// The body as `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Protocol {
            url: self.url.clone(),
            why: format!("not the expected JSON ({e})"),
        })
    }

    /// The body as text, for `--json`: the service's JSON, unchanged.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim_end().to_owned()
    }
}

/// The last cause of an error chain ("Connection refused (os error 111)"): hyper's outer
/// layers ("client error (Connect)") tell a user nothing.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_path_segment() {
        assert_eq!(encode_key("a/b c?d%"), "a%2Fb%20c%3Fd%25");
        assert_eq!(encode_key("é-._~"), "%C3%A9-._~");
    }

    #[test]
    fn error_answers_become_http_errors() {
        let answer = |status: u16, body: &str| Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_owned()),
            url: "http://x/get/k".into(),
        };
        let err = answer(
            404,
            r#"{"detail":"Key 'k' not found","code":"key_not_found"}"#,
        )
        .ok()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Key 'k' not found (HTTP 404, key_not_found)"
        );
        assert_eq!(err.exit_code(), crate::cli::exit::NOT_FOUND);
        let err = answer(502, "<html>bad gateway</html>").ok().unwrap_err();
        assert_eq!(
            err.to_string(),
            "Bad Gateway: <html>bad gateway</html> (HTTP 502)"
        );
        assert_eq!(err.exit_code(), crate::cli::exit::FAILURE);
        assert!(answer(200, "{}").ok().is_ok());
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = Client::new(&url, DEFAULT_TIMEOUT)
            .unwrap()
            .get("/health")
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot reach {url} (")),
            "{message}"
        );
        assert!(message.ends_with("is `kvstore up` running?"), "{message}");
    }
}
