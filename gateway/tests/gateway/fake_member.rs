//! A fake member for routing tests: canned `/health` and key answers from a script, every
//! other request recorded. Enough of a kv-server to see where the gateway sends what,
//! including answers a real server gives only in states hard to reach (`503 syncing`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One request a fake member received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query, as sent.
    pub uri: String,
    pub write_quorum: Option<String>,
    /// The ring epoch the gateway routed by (`x-kv-ring-epoch`).
    pub ring_epoch: Option<String>,
    /// The member the gateway meant to reach (`x-kv-to`).
    pub addressee: Option<String>,
}

/// A canned answer: status, JSON body, extra headers.
pub type Canned = (u16, Value, Vec<(&'static str, String)>);

#[derive(Default)]
struct Script {
    health: Mutex<Value>,
    /// By path and query; anything else is a 404 `key_not_found`.
    answers: Mutex<HashMap<String, Canned>>,
    seen: Mutex<Vec<Seen>>,
}

/// A member that answers from a script: enough of a kv-server to test routing.
pub struct Fake {
    pub addr: SocketAddr,
    script: Arc<Script>,
}

impl Fake {
    pub async fn start(health: Value) -> Fake {
        let script = Arc::new(Script::default());
        *script.health.lock().unwrap() = health;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(script.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { addr, script }
    }

    /// What `/health` answers from now on.
    pub fn set_health(&self, health: Value) {
        *self.script.health.lock().unwrap() = health;
    }

    pub fn answer(&self, uri: &str, status: u16, body: Value) {
        self.answer_with(uri, (status, body, Vec::new()));
    }

    pub fn answer_with(&self, uri: &str, canned: Canned) {
        self.script
            .answers
            .lock()
            .unwrap()
            .insert(uri.to_owned(), canned);
    }

    /// Requests received, `/health` checks left out.
    pub fn seen(&self) -> Vec<Seen> {
        self.script.seen.lock().unwrap().clone()
    }
}

async fn answer(
    State(script): State<Arc<Script>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if uri.path() == "/health" {
        return axum::Json(script.health.lock().unwrap().clone()).into_response();
    }
    let uri = uri.path_and_query().map_or("", |p| p.as_str()).to_owned();
    script.seen.lock().unwrap().push(Seen {
        method,
        uri: uri.clone(),
        write_quorum: headers
            .get("x-kv-write-quorum")
            .map(|v| v.to_str().unwrap().to_owned()),
        ring_epoch: headers
            .get("x-kv-ring-epoch")
            .map(|v| v.to_str().unwrap().to_owned()),
        addressee: headers
            .get("x-kv-to")
            .map(|v| v.to_str().unwrap().to_owned()),
    });
    let (status, body, extra) = script
        .answers
        .lock()
        .unwrap()
        .get(&uri)
        .cloned()
        .unwrap_or((404, not_found(), Vec::new()));
    let mut response = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    for (name, value) in extra {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

pub fn not_found() -> Value {
    json!({"detail": "Key not found", "code": "key_not_found"})
}

pub fn stored(version: u64, value: Value) -> Value {
    json!({"value": value, "version": version, "timestamp": 1.5, "source": "database"})
}

pub fn replicated(lag: u64, synced: bool) -> Value {
    json!({"status": "ok", "replication": {"factor": 3, "lag": lag, "synced": synced}})
}
