//! Internal admin routes. `GET /admin/snapshot` streams a consistent copy of this server's
//! database (a SQLite file) while the server keeps serving. The gateway exposes it per member
//! (`?server=NAME`), behind its API token when one is configured; `kvstore backup` uses it.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::AppState;
use super::error::ApiError;

/// Rows of `keys` in the snapshot.
pub const KEYS_HEADER: &str = "x-snapshot-keys";
/// Rows of `"values"` (every version of every key) in the snapshot.
pub const VERSIONS_HEADER: &str = "x-snapshot-versions";
/// SHA-256 of the snapshot file, lowercase hex.
pub const SHA256_HEADER: &str = "x-snapshot-sha256";
/// The server's `--node-name`.
pub const NODE_HEADER: &str = "x-snapshot-node";

const CHUNK: usize = 256 * 1024;

/// A consistent snapshot of the database (online backup API), streamed as a SQLite file.
#[utoipa::path(get, path = "/admin/snapshot", tag = "operations",
    responses(
        (status = 200, description = "The database file, as of one commit; `X-Snapshot-Keys`, \
            `X-Snapshot-Versions` and `X-Snapshot-Sha256` describe it", content_type = "application/vnd.sqlite3"),
        (status = 500, description = "The copy failed", body = kv_common::ErrorBody),
    ))]
pub async fn snapshot(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (file, info) = state.store.snapshot().await?;
    tracing::info!(
        keys = info.keys,
        versions = info.versions,
        bytes = info.bytes,
        "snapshot taken"
    );
    // The file's name is already gone: the open handle keeps the data until it is dropped.
    let file = tokio::fs::File::from_std(file);
    let chunks = futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.sqlite3"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.bytes));
    headers.insert(KEYS_HEADER, HeaderValue::from(info.keys));
    headers.insert(VERSIONS_HEADER, HeaderValue::from(info.versions));
    if let Ok(sha) = HeaderValue::from_str(&info.sha256) {
        headers.insert(SHA256_HEADER, sha);
    }
    if let Ok(node) = HeaderValue::from_str(&state.config.node_name) {
        headers.insert(NODE_HEADER, node);
    }
    Ok(response)
}
