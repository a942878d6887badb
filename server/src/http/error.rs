//! How errors become HTTP answers: always JSON `{"detail", "code"}` with the right status.
//! Client mistakes are 4xx and logged at debug; only server faults are 5xx and logged as
//! errors, inside the request's span.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kv_common::ring_config::RingConfig;
use kv_common::{ErrorBody, ErrorCode};

use crate::error::Error;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub detail: String,
    /// `stale_ring`: the server's current ring, so the caller can route by it and retry.
    pub ring: Option<Box<RingConfig>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            ring: None,
        }
    }

    pub fn bad_request(code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> ApiError {
        let (status, code) = match &err {
            Error::KeyNotFound { .. } => (StatusCode::NOT_FOUND, ErrorCode::KeyNotFound),
            Error::VersionNotFound { .. } => (StatusCode::NOT_FOUND, ErrorCode::VersionNotFound),
            Error::VersionConflict { .. } => {
                (StatusCode::PRECONDITION_FAILED, ErrorCode::VersionConflict)
            }
            Error::VersionOverflow { .. } => (StatusCode::CONFLICT, ErrorCode::VersionConflict),
            Error::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            Error::StorageFull(_) => (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::StorageFull),
            // A stored value no reader accepts (a seed's `Infinity`) is damage too, and the
            // same check finds it.
            e if e.is_corruption() || matches!(e, Error::CorruptValue { .. }) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::DatabaseCorrupt,
            ),
            Error::QuorumFailed { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::QuorumFailed)
            }
            Error::QuorumUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::QuorumUnavailable,
            ),
            Error::Syncing(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Syncing),
            Error::NotPrimary { .. } => (StatusCode::MISDIRECTED_REQUEST, ErrorCode::NotPrimary),
            Error::StaleRing { .. } => (StatusCode::CONFLICT, ErrorCode::StaleRing),
            Error::RingBehind { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::RingBehind),
            Error::Rebalancing { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Rebalancing),
            Error::InvalidRing(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidBody),
            Error::TransitionUnderway { .. } => (StatusCode::CONFLICT, ErrorCode::Rebalancing),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        };
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %err, kind = err.metric_label(), "request failed");
        }
        let mut detail = err.to_string();
        if let Error::CorruptValue { .. } = err {
            detail.push_str("; `kv-server check` lists every such value");
        } else if code == ErrorCode::DatabaseCorrupt {
            detail.push_str(": the database file is damaged; see `kv-server check`");
        }
        let mut api = ApiError::new(status, code, detail);
        if let Error::StaleRing { ring, .. } = err {
            api.ring = Some(ring);
        }
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_client_error() {
            tracing::debug!(status = %self.status, code = self.code.as_str(), detail = %self.detail);
        }
        let unavailable = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = match self.ring {
            Some(ring) => {
                let body = serde_json::json!({
                    "detail": self.detail,
                    "code": self.code,
                    "ring": ring,
                });
                (self.status, axum::Json(body)).into_response()
            }
            None => {
                let body = ErrorBody {
                    detail: self.detail,
                    code: self.code,
                };
                (self.status, axum::Json(body)).into_response()
            }
        };
        if unavailable {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // RFC 9110 15.5.16: the codings a request body may have.
        if self.code == ErrorCode::UnsupportedEncoding {
            response.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        response
    }
}
