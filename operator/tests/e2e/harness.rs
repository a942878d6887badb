//! The pieces of the end-to-end test: the fake API server and simulator (kv-test-support),
//! the operator and the gateway, all in this process; plus polling with deadlines.

use std::future::Future;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodSpec;
use kube::{Api, Client};
use kv_gateway::GatewayConfig;
use kv_operator::OperatorConfig;
use kv_operator::config::{LeaderConfig, RenderConfig};
use kv_operator::ring::Rebalancing;
use kv_server::ServerConfig;
use kv_test_support::{FakeApiServer, Simulator};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Every wait in the test is bounded by this.
pub const STEP: Duration = Duration::from_secs(15);

/// Polls `check` every 50 ms until it returns `Some`, failing the test after `STEP`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {STEP:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A task with a shutdown trigger.
pub struct Running<T> {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<T>,
}

impl<T> Running<T> {
    fn spawn<F>(run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Running<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Running {
            stop: Some(stop),
            task: tokio::spawn(run(stopped)),
        }
    }

    /// Fires the shutdown and waits (bounded) for the task to end.
    pub async fn stop(mut self) -> T {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("stopped in time")
            .expect("task did not panic")
    }
}

/// The fake control plane: API server, simulator and operator.
pub struct ControlPlane {
    pub api: FakeApiServer,
    pub client: Client,
    pub sim: Simulator,
    pub operator: Running<kv_operator::Result<()>>,
    _data: tempfile::TempDir,
}

impl ControlPlane {
    pub async fn start() -> ControlPlane {
        let api = FakeApiServer::start().await;
        // In-process: the fake's axum Router is the client's transport.
        let client = api.client();
        let data = tempfile::tempdir().expect("temp dir");
        let sim = Simulator::start(&api, data.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind operator port");
        let config = OperatorConfig {
            listen: listener.local_addr().expect("operator address"),
            watch_namespace: None,
            render: RenderConfig::default(),
            leader: LeaderConfig {
                no_leader_election: true,
                lease_name: "kv-operator-leader".into(),
                lease_namespace: "default".into(),
                identity: None,
                lease_seconds: 15,
            },
        };
        let operator_client = client.clone();
        // The operator talks to servers by their pod DNS names, which the simulator resolves
        // to local forwarders (ring configurations carry those, so servers dial them too).
        let rebalancing = Rebalancing::coordinator(Duration::from_secs(5))
            .with_url_map(std::sync::Arc::new(sim.url_resolver()));
        let operator = Running::spawn(move |stopped| {
            kv_operator::run_with(listener, config, operator_client, rebalancing, async move {
                let _ = stopped.await;
            })
        });
        ControlPlane {
            api,
            client,
            sim,
            operator,
            _data: data,
        }
    }
}

#[derive(Parser)]
struct GatewayCli {
    #[command(flatten)]
    config: GatewayConfig,
}

#[derive(Parser)]
struct ServerCli {
    #[command(flatten)]
    config: ServerConfig,
}

/// Variables the binaries read themselves (logging), not their library configuration.
const BINARY_ONLY_ENV: [&str; 2] = ["KV_LOG_FORMAT", "KV_LOG_LEVEL"];

/// The first container's args, and its environment turned into the flags of `C` that read
/// the same variables (so the test needs no process environment). A variable `C` does not
/// know fails the test. Variables taken from the pod (`valueFrom`, like `POD_NAME` for
/// `$(POD_NAME)`) are facts of the pod, not settings, and are left out.
fn args_from<C: CommandFactory>(binary: &str, pod: &PodSpec) -> Vec<String> {
    let container = &pod.containers[0];
    let mut args = vec![binary.to_owned()];
    args.extend(container.args.clone().unwrap_or_default());
    let command = C::command();
    for var in container.env.as_deref().unwrap_or_default() {
        let Some(value) = &var.value else { continue };
        if BINARY_ONLY_ENV.contains(&var.name.as_str()) {
            binary_only_value_is_valid(binary, &var.name, value);
            continue;
        }
        let flag = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == var.name.as_str()))
            .and_then(|a| a.get_long())
            .unwrap_or_else(|| panic!("{binary} has no setting for env {}", var.name));
        args.push(format!("--{flag}"));
        args.push(value.clone());
    }
    args
}

/// The binaries parse these in their `main`, so the harness checks them with the same parsers.
fn binary_only_value_is_valid(binary: &str, name: &str, value: &str) {
    let valid = match name {
        "KV_LOG_LEVEL" => kv_common::telemetry::parse_filter(value).map(drop),
        _ => value.parse::<kv_common::telemetry::LogFormat>().map(drop),
    };
    if let Err(error) = valid {
        panic!("{binary} refuses {name}={value}: {error}");
    }
}

/// The gateway configuration the operator's Deployment gives its container (see
/// [`args_from`]), with `extra_args` last.
pub fn gateway_config_from(deployment: &Deployment, extra_args: &[&str]) -> GatewayConfig {
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template");
    let mut args = args_from::<GatewayCli>("kv-gateway", pod);
    args.extend(extra_args.iter().map(|s| (*s).to_owned()));
    match GatewayCli::try_parse_from(&args) {
        Ok(cli) => cli.config,
        Err(error) => panic!("the gateway refuses the Deployment's args {args:?}: {error}"),
    }
}

/// The server configuration the operator's StatefulSet gives its container (see
/// [`args_from`]).
#[allow(dead_code)] // each test binary compiles the harness; not every one reads the servers'
pub fn server_config_from(stateful_set: &StatefulSet) -> ServerConfig {
    let pod = stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template");
    let args = args_from::<ServerCli>("kv-server", pod);
    match ServerCli::try_parse_from(&args) {
        Ok(cli) => cli.config,
        Err(error) => panic!("the server refuses the StatefulSet's args {args:?}: {error}"),
    }
}

/// A gateway pod, run in-process with Kubernetes discovery against the fake.
pub struct Gateway {
    pub url: String,
    pub task: Running<kv_gateway::Result<()>>,
}

impl Gateway {
    pub async fn start(client: &Client, namespace: &str, deployment: &str) -> Gateway {
        let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let deployment = api.get(deployment).await.expect("the gateway Deployment");
        // Faster health checks than production, so a kill is seen within the test's budget.
        let config = gateway_config_from(&deployment, &["--health-interval-ms", "100"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway port");
        let url = format!("http://{}", listener.local_addr().expect("gateway address"));
        let client = client.clone();
        let task = Running::spawn(move |stopped| {
            kv_gateway::run_with_client(listener, config, client, async move {
                let _ = stopped.await;
            })
        });
        Gateway { url, task }
    }
}

/// A minimal HTTP client for the gateway: (status, JSON body).
pub struct Http(reqwest::Client);

impl Http {
    pub fn new() -> Http {
        Http(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
        )
    }

    pub async fn get(&self, url: &str) -> (u16, Value) {
        let response = self.0.get(url).send().await.expect("gateway answers");
        decode(response).await
    }

    pub async fn put(&self, url: &str, value: &Value) -> (u16, Value) {
        let body = serde_json::json!({ "value": value });
        let response = self
            .0
            .put(url)
            .json(&body)
            .send()
            .await
            .expect("gateway answers");
        decode(response).await
    }
}

async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}
