//! Optional API-token authentication: `Authorization: Bearer TOKEN` on every route but the
//! probes and metrics. Off unless a token is configured.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header;

use crate::config::GatewayConfig;
use crate::error::{Error, Result};
use crate::state::AppState;

/// Paths anyone may call: probes (kubelets send no token) and Prometheus scrapes.
const EXEMPT: [&str; 3] = ["/health", "/ready", "/metrics"];

/// The configured token.
#[derive(Clone)]
pub struct ApiToken(Arc<str>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// The token from `--api-token-file` (which wins) or `--api-token`, if any. Surrounding
    /// whitespace is ignored, so a file ending in a newline works.
    pub fn load(config: &GatewayConfig) -> Result<Option<ApiToken>> {
        let token = match (&config.api_token_file, &config.api_token) {
            (Some(path), _) => {
                std::fs::read_to_string(path).map_err(|source| Error::TokenFile {
                    path: path.clone(),
                    source,
                })?
            }
            (None, Some(token)) => token.clone(),
            (None, None) => return Ok(None),
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::Config("the API token is empty".into()));
        }
        Ok(Some(ApiToken(token.into())))
    }

    /// Compares in time independent of where the first difference is, so the token cannot be
    /// guessed byte by byte from response times.
    fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut diff = expected.len() ^ presented.len();
        for (i, &byte) in expected.iter().enumerate() {
            diff |= usize::from(byte ^ presented.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

/// Middleware: `from_fn_with_state(state, require_token)`, installed only with a token.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    if EXEMPT.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(presented) if token.matches(presented) => next.run(request).await,
        _ => Error::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_file_first_and_must_match_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut config = GatewayConfig::with_backends([("a", "http://x:1")]).unwrap();
        assert!(ApiToken::load(&config).unwrap().is_none());
        config.api_token = Some("from-env".into());
        config.api_token_file = Some(path);
        let token = ApiToken::load(&config).unwrap().unwrap();
        assert!(token.matches(b"s3cret"));
        for wrong in [&b"s3cre"[..], b"s3cret2", b"", b"from-env"] {
            assert!(!token.matches(wrong));
        }
        config.api_token_file = Some(dir.path().join("missing"));
        assert!(ApiToken::load(&config).is_err());
    }
}
