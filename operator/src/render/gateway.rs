//! The gateway: a Deployment (stateless, any number of replicas) that discovers the servers
//! from their headless Service's EndpointSlices, and the Service clients connect to.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, PodSecurityContext, PodSpec, PodTemplateSpec,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kv_common::api::{DEFAULT_GATEWAY_MAX_BODY_BYTES, gateway_max_body_bytes};
use kv_common::replication::{DEFAULT_GATEWAY_REQUEST_TIMEOUT_MS, gateway_request_timeout_ms};
use kv_crds::{GATEWAY_MANAGED_ENV, KvClusterSpec, ServiceType};

use super::Ctx;
use super::server::{apply_scheduling, extra_env, http_probe, pull_secrets, restricted_container};
use crate::names::{Component, GATEWAY_PORT, PORT_NAME};

const AUTH_DIR: &str = "/etc/kvstore/auth";

/// The gateway's command line and environment in Kubernetes mode: the ONE place that knows
/// `kv-gateway`'s flags (see `gateway/src/config.rs`), returned as (args, env).
/// Replication is as configured, the servers' own (both cap it at the servers there are); the
/// servers' value limit and replication timeout set how large a body the gateway takes and
/// how long it waits for an answer.
pub fn gateway_command(
    headless_service: &str,
    namespace: &str,
    spec: &KvClusterSpec,
    token_file: Option<&str>,
) -> (Vec<String>, Vec<(String, String)>) {
    let args = [
        "--listen",
        &format!("0.0.0.0:{GATEWAY_PORT}"),
        "--k8s-service",
        headless_service,
        "--k8s-namespace",
        namespace,
        "--k8s-port-name",
        PORT_NAME,
    ]
    .map(str::to_owned)
    .to_vec();
    let mut env = vec![
        ("KV_VNODES".to_owned(), spec.vnodes.to_string()),
        (
            "KV_REPLICATION_FACTOR".to_owned(),
            spec.replication.factor.to_string(),
        ),
        ("KV_LOG_FORMAT".to_owned(), "json".to_owned()),
    ];
    if let Some(quorum) = spec.replication.write_quorum {
        env.push(("KV_WRITE_QUORUM".to_owned(), quorum.to_string()));
    }
    // Both set only when the default is too small, so clusters with the default limit and
    // timeout keep the gateway's own defaults (and are not rolled by an operator upgrade).
    let body = gateway_max_body_bytes(usize::try_from(spec.server.max_value_bytes).unwrap_or(0));
    if body != DEFAULT_GATEWAY_MAX_BODY_BYTES {
        env.push(("KV_MAX_BODY_BYTES".to_owned(), body.to_string()));
    }
    if let Some(replication_ms) = super::server::replication_timeout_ms(&spec.replication) {
        let wait = gateway_request_timeout_ms(replication_ms);
        if wait != DEFAULT_GATEWAY_REQUEST_TIMEOUT_MS {
            env.push(("KV_REQUEST_TIMEOUT_MS".to_owned(), wait.to_string()));
        }
    }
    if let Some(level) = &spec.gateway.log_level {
        env.push(("KV_LOG_LEVEL".to_owned(), level.clone()));
    }
    if let Some(file) = token_file {
        env.push(("KV_API_TOKEN_FILE".to_owned(), file.to_owned()));
    }
    (args, env)
}

pub(super) fn deployment(ctx: &Ctx) -> Deployment {
    let spec = &ctx.cluster.spec;
    let auth = spec.auth.as_ref();
    let token_file = auth.map(|a| format!("{AUTH_DIR}/{}", a.key));
    let (args, env) = gateway_command(
        &ctx.names.server(),
        &ctx.namespace,
        spec,
        token_file.as_deref(),
    );
    let container = Container {
        name: "kv-gateway".into(),
        image: Some(
            spec.image
                .gateway
                .clone()
                .unwrap_or_else(|| ctx.config.gateway_image.clone()),
        ),
        image_pull_policy: Some(format!("{:?}", spec.image.pull_policy)),
        args: Some(args),
        env: Some(
            env.into_iter()
                .map(|(name, value)| EnvVar {
                    name,
                    value: Some(value),
                    value_from: None,
                })
                .chain(extra_env(&spec.gateway.env, GATEWAY_MANAGED_ENV))
                .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: GATEWAY_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(http_probe("/health", 10, 3)),
        // Ready once it has a ring with a healthy member.
        readiness_probe: Some(http_probe("/ready", 5, 2)),
        resources: spec.gateway.resources.clone(),
        volume_mounts: auth.map(|_| {
            vec![VolumeMount {
                name: "auth".into(),
                mount_path: AUTH_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]
        }),
        security_context: Some(restricted_container()),
        ..Container::default()
    };
    let mut pod = PodSpec {
        containers: vec![container],
        service_account_name: Some(ctx.names.gateway()),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(30),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            ..PodSecurityContext::default()
        }),
        image_pull_secrets: pull_secrets(&spec.image.pull_secrets),
        volumes: auth.map(|a| {
            vec![Volume {
                name: "auth".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(a.secret_name.clone()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            }]
        }),
        ..PodSpec::default()
    };
    apply_scheduling(&mut pod, &spec.gateway.scheduling);
    Deployment {
        metadata: ctx.meta(ctx.names.gateway(), Component::Gateway),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.gateway.replicas),
            selector: LabelSelector {
                match_labels: Some(ctx.names.selector(Component::Gateway)),
                ..LabelSelector::default()
            },
            // Never below the asked-for capacity during a rollout.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(ctx.names.labels(Component::Gateway)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

pub(super) fn service(ctx: &Ctx) -> Service {
    let svc = &ctx.cluster.spec.gateway.service;
    let node_port = match svc.type_ {
        ServiceType::ClusterIP => None,
        ServiceType::NodePort | ServiceType::LoadBalancer => svc.node_port,
    };
    Service {
        metadata: ctx.meta(ctx.names.gateway(), Component::Gateway),
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(ctx.names.selector(Component::Gateway)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: GATEWAY_PORT,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                node_port,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
