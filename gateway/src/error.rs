//! The crate's one error type, and how each error answers an HTTP request.
//!
//! Client faults are 4xx with a clear JSON body and are not logged as errors; a member that
//! cannot answer is a 502/503/504 naming the member; internal faults are a generic 500 whose
//! real cause goes to the log. Every body is a `kv_common::ErrorBody` (`detail` + `code`).

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use kv_common::{ErrorBody, ErrorCode};
use serde::Serialize;

use crate::client::CallError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- start-up ---
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot read the API token file {path}: {source}")]
    TokenFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the Kubernetes client: {0}")]
    Kube(#[source] Box<kube::Error>),

    // --- answers to requests ---
    #[error("Not Found")]
    NotFound,
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    #[error("Missing or invalid API token")]
    Unauthorized,
    #[error("Empty key")]
    EmptyKey,
    #[error("Request body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("Cannot read the request body: {0}")]
    BadBody(String),
    #[error("{}", kv_common::api::body_encoding_detail(.0))]
    BodyEncoding(String),
    #[error("The request body did not arrive within {0} s; send it at once after the head")]
    BodyTimeout(u64),
    #[error("Invalid key: {0}")]
    InvalidKey(String),
    #[error("Invalid query: {0}")]
    InvalidQuery(String),
    #[error("Server parameter is required. Available servers: {valid:?}")]
    MissingServer { valid: Vec<String> },
    #[error("Server '{name}' not found. Available servers: {valid:?}")]
    UnknownServer { name: String, valid: Vec<String> },
    #[error("No servers in the ring yet")]
    NoServers,
    #[error("No server has answered a health check yet")]
    NotReady,
    #[error("Server '{name}' is unavailable; retry later")]
    ServerDown { name: String, retry_after_secs: u64 },
    #[error("Server '{name}' did not answer in time")]
    ServerTimeout { name: String },
    #[error("Server '{name}' failed: {source}")]
    BadGateway {
        name: String,
        #[source]
        source: CallError,
    },
}

/// An error body that also names the member concerned, like the successful answers do.
#[derive(Serialize)]
struct MemberErrorBody<'a> {
    #[serde(flatten)]
    body: ErrorBody,
    server_used: &'a str,
}

impl Error {
    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            Error::NotFound => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            Error::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
            }
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            Error::EmptyKey => (StatusCode::BAD_REQUEST, ErrorCode::EmptyKey),
            Error::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::ValueTooLarge),
            Error::BadBody(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidBody),
            Error::BodyEncoding(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedEncoding,
            ),
            Error::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, ErrorCode::BodyTimeout),
            Error::InvalidKey(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidKey),
            Error::InvalidQuery(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery),
            Error::MissingServer { .. } => (StatusCode::BAD_REQUEST, ErrorCode::MissingParameter),
            Error::UnknownServer { .. } => (StatusCode::BAD_REQUEST, ErrorCode::UnknownServer),
            Error::NoServers | Error::NotReady => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            Error::ServerDown { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServerUnavailable,
            ),
            Error::ServerTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::ServerTimeout),
            Error::BadGateway { .. } => (StatusCode::BAD_GATEWAY, ErrorCode::BadGateway),
            Error::Config(_) | Error::TokenFile { .. } | Error::Kube(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        }
    }

    fn member(&self) -> Option<&str> {
        match self {
            Error::ServerDown { name, .. }
            | Error::ServerTimeout { name }
            | Error::BadGateway { name, .. } => Some(name),
            _ => None,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let detail = if status.is_server_error() && code == ErrorCode::Internal {
            tracing::error!(error = %self, "internal error");
            "Internal Server Error".to_owned()
        } else {
            // A down member is logged once, when it goes down (see `health`); logging each
            // refused request would flood the log exactly when it matters.
            // `/ready` polled before the first health check is expected at start-up.
            if let Error::ServerDown { .. } | Error::NotReady = self {
                tracing::debug!(error = %self, "member unavailable");
            } else if status.is_server_error() {
                tracing::warn!(error = %self, "member unavailable");
            }
            self.to_string()
        };
        let body = ErrorBody { detail, code };
        let mut response = match self.member() {
            Some(name) => {
                let mut response = (
                    status,
                    Json(MemberErrorBody {
                        body,
                        server_used: name,
                    }),
                )
                    .into_response();
                if let Ok(value) = HeaderValue::from_str(name) {
                    response
                        .headers_mut()
                        .insert(crate::proxy::SERVER_USED, value);
                }
                response
            }
            None => (status, Json(body)).into_response(),
        };
        match self {
            Error::ServerDown {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Error::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // RFC 9110 15.5.16: the codings a request body may have.
            Error::BodyEncoding(_) => {
                response.headers_mut().insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
            }
            // RFC 9110 15.5.9: the rest of the body may still come; the connection ends here.
            Error::BodyTimeout(_) => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(response: Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn server_down_names_the_server_and_says_when_to_retry() {
        let response = Error::ServerDown {
            name: "kv-1".into(),
            retry_after_secs: 2,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()["x-server-used"], "kv-1");
        let json = body(response).await;
        assert_eq!(json["code"], "server_unavailable");
        assert_eq!(json["server_used"], "kv-1");
        assert!(json["detail"].as_str().unwrap().contains("'kv-1'"));
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let response = Error::Config("secret path".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let json = body(response).await;
        assert_eq!(json["detail"], "Internal Server Error");
        assert_eq!(json["code"], "internal");
    }
}
