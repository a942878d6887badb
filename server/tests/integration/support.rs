//! Shared test helpers: a router over a fresh store, and one-call request helpers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use kv_server::ServerConfig;
use kv_server::config::{Peer, ReplicationConfig};
use kv_server::http::{AppState, app};
use kv_server::store::SyncMode;
use serde_json::Value;
use tokio::sync::oneshot;
use tower::ServiceExt;

use crate::ports::free_port;

/// One in-process server of a test cluster: a port and a data directory that outlive its
/// restarts.
pub struct Node {
    pub port: u16,
    pub dir: PathBuf,
    running: Option<(
        oneshot::Sender<()>,
        tokio::task::JoinHandle<kv_server::Result<()>>,
    )>,
}

impl Node {
    pub fn new(dir: PathBuf) -> Node {
        Node {
            port: free_port(),
            dir,
            running: None,
        }
    }

    /// Starts it as replicated server `name` (R = `factor`, W = min(2, R), catch-up every
    /// 50 ms, no fsync) and returns once it answers `/health`.
    pub async fn start(
        &mut self,
        name: &str,
        peers: Vec<Peer>,
        factor: usize,
        http: &reqwest::Client,
    ) {
        assert!(self.running.is_none(), "{name} is running");
        let mut config = ServerConfig::new(&self.dir);
        config.node_name = name.into();
        config.sync = SyncMode::Normal;
        config.replication = ReplicationConfig {
            peers,
            replication_factor: Some(factor),
            write_quorum: Some(factor.min(2)),
            catch_up_interval_ms: 50,
            replication_timeout_ms: 2_000,
            ..ReplicationConfig::default()
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(kv_server::run(listener, config, async {
            let _ = stopped.await;
        }));
        self.running = Some((stop, task));
        let url = format!("http://127.0.0.1:{}/health", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while http.get(&url).send().await.is_err() {
            assert!(Instant::now() < deadline, "{name} did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it gracefully (queued writes finish) and checks it stopped without error.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            task.await.unwrap().unwrap();
        }
    }
}

pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &std::path::Path) -> ServerConfig {
    let mut config = ServerConfig::new(dir);
    config.node_name = "test-node".into();
    // Tests check behaviour, not durability against power loss: skip the fsync.
    config.sync = SyncMode::Normal;
    config
}

pub fn test_app_with(edit: impl FnOnce(&mut ServerConfig)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    edit(&mut config);
    let state = AppState::open(config).unwrap();
    TestApp {
        router: app(state.clone()),
        state,
        dir,
    }
}

pub fn test_app() -> TestApp {
    test_app_with(|_| {})
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
    /// Asserts the status and the error code of an error answer.
    pub fn assert_error(&self, status: StatusCode, code: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        let json = self.json();
        assert_eq!(json["code"], code, "body: {}", self.text);
        assert!(json["detail"].is_string(), "body: {}", self.text);
        json
    }
}

impl TestApp {
    pub async fn call(&self, method: Method, uri: &str, body: Option<&str>) -> Answer {
        self.call_with(method, uri, &[], body).await
    }

    /// [`TestApp::call`] with extra request headers.
    pub async fn call_with(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, None).await
    }

    pub async fn put(&self, key_path: &str, value_json: &str) -> Answer {
        self.call(
            Method::PUT,
            &format!("/put/{key_path}"),
            Some(&format!(r#"{{"value": {value_json}}}"#)),
        )
        .await
    }
}
