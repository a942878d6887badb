//! The link's short way to the key handlers. Puts and gets are nearly all a link carries, and
//! the router around them (matching, the boxed route service, the trace and metrics layers, a
//! request built from the frame) was a fifth of the servers' CPU per put through the gateway
//! and a third per cached GET (`docs/benchmarks.md`). A put or get frame of the plain shape goes straight to [`routes::put`] or
//! [`routes::get`], the handlers HTTP uses, with the same checks and answers, and is counted
//! in the same metrics; every other frame, and any put or get this module is not sure it
//! reads exactly as axum would, goes through the router.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method};
use kv_common::mux::RequestFrame;
use tower_http::classify::ServerErrorsFailureClass;

use super::{AppState, routes};

/// A frame the short way takes, with its percent-decoded key.
#[derive(Debug, PartialEq)]
pub(super) enum Direct {
    Put(String),
    Get(String),
}

impl Direct {
    /// The short way for `frame`, if it has the plain shape: `PUT` or `POST` of `/put/{key}`
    /// with a body within the put route's limit (`body_limit`; a larger one gets the router's
    /// answer), or `GET /get/{key}`; no query string; a key that percent-decodes to UTF-8.
    pub(super) fn of(frame: &RequestFrame, body_limit: usize) -> Option<Direct> {
        let put = if frame.method == Method::PUT || frame.method == Method::POST {
            true
        } else if frame.method == Method::GET {
            false
        } else {
            return None;
        };
        if put && frame.body.len() > body_limit {
            return None;
        }
        let segment = frame
            .path
            .strip_prefix(if put { "/put/" } else { "/get/" })?;
        if segment.is_empty() || segment.contains(['/', '?', '#']) {
            return None;
        }
        // What axum's `Path` does with a segment; a key that is not UTF-8 gets the router's
        // error.
        let key = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .ok()?;
        let key = key.into_owned();
        Some(if put {
            Direct::Put(key)
        } else {
            Direct::Get(key)
        })
    }

    /// Runs the frame through its handler, counts the answer as the metrics layer would, and
    /// logs a failure as the trace layer would. The trace layer's per-request debug lines are
    /// not written for these: at debug level a link's plain puts and gets show in the
    /// metrics only, not as a line each.
    pub(super) async fn serve(self, state: AppState, frame: RequestFrame) -> Response {
        let started = Instant::now();
        let metrics = state.metrics.http.clone();
        let headers: HeaderMap = frame.headers.into_iter().collect();
        let no_query = || Ok(Query(Vec::new()));
        let (route, response) = match self {
            Direct::Put(key) => (
                "/put/{key}",
                routes::put(
                    State(state),
                    Ok(Path(key)),
                    no_query(),
                    headers,
                    Ok(frame.body),
                )
                .await
                .into_response(),
            ),
            Direct::Get(key) => (
                "/get/{key}",
                routes::get(State(state), Ok(Path(key)), no_query(), headers)
                    .await
                    .into_response(),
            ),
        };
        let status = response.status();
        let latency = started.elapsed();
        metrics.record(
            route,
            frame.method.as_str(),
            status.as_u16(),
            latency.as_secs_f64(),
        );
        if status.is_server_error() {
            super::log_failure(
                ServerErrorsFailureClass::StatusCode(status),
                latency,
                &tracing::Span::none(),
            );
        }
        response
    }
}

/// [`Direct::of`]'s `body_limit` for this server: the put route's.
pub(super) fn body_limit(state: &AppState) -> usize {
    super::put_body_limit(&state.config)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Method;
    use kv_common::mux::RequestFrame;

    use super::Direct;

    fn frame(method: Method, path: &str, body: &'static str) -> RequestFrame {
        RequestFrame {
            id: 1,
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn plain_puts_and_gets_go_the_short_way_with_their_key_decoded() {
        let body = r#"{"value": 1}"#;
        let put = |key: &str| Some(Direct::Put(key.into()));
        let get = |key: &str| Some(Direct::Get(key.into()));
        for (method, path, direct) in [
            (Method::PUT, "/put/k", put("k")),
            (Method::POST, "/put/k", put("k")),
            (Method::PUT, "/put/a%2Fb", put("a/b")),
            (Method::PUT, "/put/%C3%A9t%C3%A9%20x", put("été x")),
            (Method::GET, "/get/k", get("k")),
            (Method::GET, "/get/a%2Fb", get("a/b")),
        ] {
            assert_eq!(Direct::of(&frame(method, path, body), 100), direct);
        }
    }

    #[test]
    fn anything_else_goes_through_the_router() {
        let body = r#"{"value": 1}"#;
        for (method, path) in [
            (Method::GET, "/put/k"),
            (Method::DELETE, "/put/k"),
            (Method::PUT, "/get/k"),
            (Method::HEAD, "/get/k"),
            (Method::GET, "/versions/k"),
            (Method::PUT, "/put/"),
            (Method::GET, "/get/"),
            (Method::PUT, "/put/a/b"),
            (Method::PUT, "/put/k?if_version=1"),
            (Method::GET, "/get/k?version=1"),
            (Method::PUT, "/put/k#x"),
            (Method::PUT, "/put/%FF"),
            (Method::GET, "/get/%FF"),
            (Method::PUT, "/putk"),
        ] {
            let frame = frame(method.clone(), path, body);
            assert_eq!(Direct::of(&frame, 100), None, "{method} {path}");
        }
        // Over the route's body limit: the router's limit gives the answer.
        let put = frame(Method::PUT, "/put/k", body);
        assert_eq!(Direct::of(&put, body.len() - 1), None);
        assert!(Direct::of(&put, body.len()).is_some());
    }
}
