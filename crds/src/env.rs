//! `spec.server.env` and `spec.gateway.env`: environment variables a user adds to the
//! servers' or gateways' container, for the flags this spec does not cover (every flag of
//! `kv-server` and `kv-gateway` has a `KV_*` variable) and for the process itself
//! (`RUST_BACKTRACE`, `TZ`).
//!
//! The variables the operator sets from the spec are refused by the API server (a CEL rule
//! built from the lists below): two sources for one setting would leave users guessing which
//! one wins, and Kubernetes rejects a container with the same name twice under server-side
//! apply. The operator's tests hold each list equal to what it renders.

use k8s_openapi::api::core::v1::EnvVarSource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What the operator sets in the servers' container, in every configuration (the listen
/// address and data directory are flags, which would win over their variables).
pub const SERVER_MANAGED_ENV: &[&str] = &[
    "POD_NAME",
    "KV_LISTEN",
    "KV_DATA_DIR",
    "KV_NODE_NAME",
    "KV_CACHE_SIZE",
    "KV_CACHE_MAX_BYTES",
    "KV_SYNC",
    "KV_LOG_FORMAT",
    "KV_LOG_LEVEL",
    "RUST_LOG",
    "KV_METRICS_LISTEN",
    "KV_MAX_VALUE_BYTES",
    "KV_VNODES",
    "KV_REPLICATION_FACTOR",
    "KV_WRITE_QUORUM",
    "KV_REPLICATION_TIMEOUT_MS",
    "KV_PEERS",
];

/// What the operator sets in the gateways' container, in every configuration. `KV_BACKENDS`
/// (a static member list) and `KV_API_TOKEN` (a second token source beside `spec.auth`) are
/// refused too: membership comes from the servers' EndpointSlices and the token from the
/// Secret `spec.auth` names.
pub const GATEWAY_MANAGED_ENV: &[&str] = &[
    "KV_GATEWAY_LISTEN",
    "KV_K8S_SERVICE",
    "KV_K8S_NAMESPACE",
    "KV_K8S_PORT_NAME",
    "KV_BACKENDS",
    "KV_VNODES",
    "KV_REPLICATION_FACTOR",
    "KV_WRITE_QUORUM",
    "KV_LOG_FORMAT",
    "KV_LOG_LEVEL",
    "RUST_LOG",
    "KV_MAX_BODY_BYTES",
    "KV_REQUEST_TIMEOUT_MS",
    "KV_API_TOKEN_FILE",
    "KV_API_TOKEN",
];

/// Most variables one container takes from the spec. Bounds the CEL rule's cost, which the
/// API server estimates from the schema before it accepts the CRD.
pub const MAX_EXTRA_ENV: usize = 64;

/// Kubernetes' own rule for an environment variable's name.
pub const ENV_NAME_PATTERN: &str = "^[-._a-zA-Z][-._a-zA-Z0-9]*$";

/// One variable, as in a Pod's container: a `value` (where `$(NAME)` expands a variable set
/// before it, such as the servers' `POD_NAME`) or a `valueFrom` (a Secret, a ConfigMap, a
/// field of the pod).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.value) && has(self.valueFrom))",
    "message": "set value or valueFrom, not both",
}]))]
pub struct ExtraEnv {
    #[schemars(pattern(ENV_NAME_PATTERN), length(min = 1, max = 128))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// The CEL rule of an `env` list whose names must stay out of `managed` (their uniqueness is
/// the list map's, keyed by name).
fn managed_names_rule(managed: &[&str]) -> Value {
    let names: Vec<String> = managed.iter().map(|name| format!("'{name}'")).collect();
    json!([{
        "rule": format!("self.all(e, !(e.name in [{}]))", names.join(", ")),
        "message": format!(
            "the operator sets these variables from the spec: {}",
            managed.join(", ")
        ),
    }])
}

/// The shape of an `env` list whose names stay out of `managed`: at most [`MAX_EXTRA_ENV`]
/// variables, a list map keyed by name (so a name given twice is refused), and the rule.
fn env_list(schema: &mut Schema, managed: &[&str]) {
    schema.insert("maxItems".into(), MAX_EXTRA_ENV.into());
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), json!(["name"]));
    schema.insert(
        "x-kubernetes-validations".into(),
        managed_names_rule(managed),
    );
}

/// The schema of `spec.server.env` (a schemars `transform`).
pub(crate) fn server_env_list(schema: &mut Schema) {
    env_list(schema, SERVER_MANAGED_ENV);
}

/// The schema of `spec.gateway.env` (a schemars `transform`).
pub(crate) fn gateway_env_list(schema: &mut Schema) {
    env_list(schema, GATEWAY_MANAGED_ENV);
}
