//! Starting and stopping servers and gateways in-process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kv_gateway::GatewayConfig;
use kv_gateway::ring::Ring;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running kv-server; can be stopped and restarted on the same port and data.
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    dir: PathBuf,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Server {
    pub async fn start(name: &str, dir: &Path) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut server = Server {
            name: name.to_owned(),
            addr: listener.local_addr().unwrap(),
            dir: dir.join(name),
            running: None,
        };
        server.serve(listener);
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let mut config = kv_server::ServerConfig::new(&self.dir);
        config.node_name = self.name.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            kv_server::run(listener, config, shutdown)
                .await
                .expect("kv-server failed");
        });
        self.running = Some((stop, task));
    }

    /// Stops the server and waits until its port and database are released.
    pub async fn stop(&mut self) {
        let (stop, task) = self.running.take().expect("server is running");
        let _ = stop.send(());
        task.await.unwrap();
    }

    /// Starts it again on the same address and data directory.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

/// A running gateway.
pub struct Gateway {
    pub url: String,
    pub http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Gateway {
    pub async fn start(config: GatewayConfig) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            kv_gateway::run(listener, config, shutdown)
                .await
                .expect("gateway failed");
        });
        Gateway {
            url,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    /// GETs `path` and parses the answer as JSON, whatever its status.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).send().await.unwrap().json().await.unwrap()
    }

    /// The gateway's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `/servers` with the API token (for gateways started with authentication on).
    pub async fn servers_with_token(&self) -> serde_json::Value {
        let request = self.get("/servers").bearer_auth(TOKEN);
        request.send().await.unwrap().json().await.unwrap()
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.url))
    }

    pub fn put(&self, path: &str, value: serde_json::Value) -> reqwest::RequestBuilder {
        self.http
            .put(format!("{}{path}", self.url))
            .json(&serde_json::json!({ "value": value }))
    }
}

/// The token of the tests that turn authentication on (ignored when it is off).
pub const TOKEN: &str = "s3cret";

/// A cluster of named servers behind one gateway, with fast health checks.
pub struct Cluster {
    pub servers: Vec<Server>,
    pub gateway: Gateway,
    pub ring: Ring,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(names: &[&str]) -> Cluster {
        Cluster::start_with(names, |_| {}).await
    }

    pub async fn start_with(names: &[&str], tweak: impl FnOnce(&mut GatewayConfig)) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut servers = Vec::new();
        for name in names {
            servers.push(Server::start(name, dir.path()).await);
        }
        let mut config =
            GatewayConfig::with_backends(servers.iter().map(|s| (s.name.clone(), s.url())))
                .unwrap();
        config.health_interval_ms = 100;
        config.connect_timeout_ms = 500;
        tweak(&mut config);
        let gateway = Gateway::start(config).await;
        wait_until("every member is up", || async {
            let Ok(response) = gateway.get("/servers").bearer_auth(TOKEN).send().await else {
                return false;
            };
            let servers: serde_json::Value = response.json().await.unwrap_or_default();
            servers["members"]
                .as_array()
                .is_some_and(|m| m.len() == names.len() && m.iter().all(|m| m["health"] == "up"))
        })
        .await;
        let ring = Ring::new(names.iter().copied(), kv_gateway::ring::DEFAULT_VNODES);
        Cluster {
            servers,
            gateway,
            ring,
            _dir: dir,
        }
    }

    /// A key owned by `server`, from `key0`, `key1`...
    pub fn key_on(&self, server: &str) -> String {
        (0..)
            .map(|i| format!("key{i}"))
            .find(|k| self.ring.owner(k) == Some(server))
            .unwrap()
    }
}

/// Polls `check` every 50 ms for up to 10 s.
pub async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
