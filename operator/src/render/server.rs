//! The storage servers: a StatefulSet (stable names = stable ring places, one PVC each) and
//! its headless Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    LocalObjectReference, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SecurityContext, Service, ServicePort,
    ServiceSpec, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kv_crds::{ExtraEnv, SERVER_MANAGED_ENV, Scheduling};

use super::Ctx;
use crate::names::{
    Component, DATA_DIR, DATA_VOLUME, METRICS_PORT, METRICS_PORT_NAME, PORT_NAME, SERVER_PORT,
};

/// UID/GID of the distroless `nonroot` user; `fsGroup` makes the volume writable for it.
const NON_ROOT: i64 = 65532;

/// Headless: every pod gets a DNS name, and `publishNotReadyAddresses` keeps a restarting
/// server in the EndpointSlices, so the gateway keeps its ring place (readiness is health,
/// not membership).
pub(super) fn headless_service(ctx: &Ctx) -> Service {
    Service {
        metadata: ctx.meta(ctx.names.server(), Component::Server),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(ctx.names.selector(Component::Server)),
            // `metrics` is for a ServiceMonitor; the gateway takes the port named `http`.
            ports: Some(
                [(PORT_NAME, SERVER_PORT), (METRICS_PORT_NAME, METRICS_PORT)]
                    .map(|(name, port)| ServicePort {
                        name: Some(name.into()),
                        port,
                        target_port: Some(IntOrString::String(name.into())),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .into(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub(super) fn stateful_set(ctx: &Ctx) -> StatefulSet {
    let spec = &ctx.cluster.spec;
    let retention = &spec.pvc_retention;
    StatefulSet {
        metadata: ctx.meta(ctx.names.server(), Component::Server),
        spec: Some(StatefulSetSpec {
            replicas: Some(ctx.plan.replicas),
            service_name: Some(ctx.names.server()),
            selector: LabelSelector {
                match_labels: Some(ctx.names.selector(Component::Server)),
                ..LabelSelector::default()
            },
            // Start every server at once, never one after another (`OrderedReady`): a server
            // with a new database answers 503 `syncing` (so is not ready) until it has pulled
            // once from every peer it shares keys with, so in a new cluster server-0 would wait
            // for server-1, which OrderedReady would not start before server-0 is ready.
            // Updates still roll one pod at a time (`maxUnavailable: 1`), each waiting for the
            // previous one to be ready.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    max_unavailable: Some(IntOrString::Int(1)),
                    partition: Some(0),
                }),
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(retention.when_deleted.as_str().into()),
                    when_scaled: Some(retention.when_scaled.as_str().into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(ctx.names.labels(Component::Server)),
                    // For scrapers configured by annotation (the common Prometheus example
                    // configuration); the port is the metrics-only one.
                    annotations: Some(
                        [
                            ("prometheus.io/scrape", "true".to_owned()),
                            ("prometheus.io/port", METRICS_PORT.to_string()),
                            ("prometheus.io/path", "/metrics".to_owned()),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                    ),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(ctx)),
            },
            volume_claim_templates: Some(vec![volume_claim_template(ctx)]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(ctx: &Ctx) -> PodSpec {
    let spec = &ctx.cluster.spec;
    let mut pod = PodSpec {
        containers: vec![server_container(ctx)],
        // kv-server drains in-flight writes on SIGTERM; 30 s covers a slow fsync.
        termination_grace_period_seconds: Some(30),
        // Servers never call the API server.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NON_ROOT),
            run_as_group: Some(NON_ROOT),
            fs_group: Some(NON_ROOT),
            ..PodSecurityContext::default()
        }),
        image_pull_secrets: pull_secrets(&spec.image.pull_secrets),
        ..PodSpec::default()
    };
    apply_scheduling(&mut pod, &spec.server.scheduling);
    pod
}

fn server_container(ctx: &Ctx) -> Container {
    let spec = &ctx.cluster.spec;
    let env = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    Container {
        name: "kv-server".into(),
        image: Some(
            spec.image
                .server
                .clone()
                .unwrap_or_else(|| ctx.config.server_image.clone()),
        ),
        image_pull_policy: Some(format!("{:?}", spec.image.pull_policy)),
        args: Some(vec![
            "--listen".into(),
            format!("0.0.0.0:{SERVER_PORT}"),
            "--data-dir".into(),
            DATA_DIR.into(),
        ]),
        env: Some(
            vec![
                EnvVar {
                    name: "POD_NAME".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            api_version: None,
                        }),
                        ..EnvVarSource::default()
                    }),
                },
                // The server's name in its stats is its ring name.
                env("KV_NODE_NAME", "$(POD_NAME)".into()),
                env("KV_CACHE_SIZE", spec.server.cache_size.to_string()),
                env("KV_CACHE_MAX_BYTES", spec.server.cache_max_bytes.clone()),
                env("KV_SYNC", spec.server.sync.as_flag().into()),
                env("KV_LOG_FORMAT", "json".into()),
                env("KV_METRICS_LISTEN", format!("0.0.0.0:{METRICS_PORT}")),
            ]
            .into_iter()
            .chain(value_limit_env(&spec.server).map(|(n, v)| env(n, v)))
            // Only when set: a new variable would roll existing clusters' servers.
            .chain(
                spec.server
                    .log_level
                    .clone()
                    .map(|level| env("KV_LOG_LEVEL", level)),
            )
            .chain(replication_env(ctx).into_iter().map(|(n, v)| env(n, v)))
            .chain(extra_env(&spec.server.env, SERVER_MANAGED_ENV))
            .collect(),
        ),
        ports: Some(
            [(PORT_NAME, SERVER_PORT), (METRICS_PORT_NAME, METRICS_PORT)]
                .map(|(name, port)| ContainerPort {
                    name: Some(name.into()),
                    container_port: port,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                })
                .into(),
        ),
        // Opening a large seed database (index migration) can take a while: the startup probe
        // gives it up to 5 minutes before liveness applies.
        startup_probe: Some(http_probe("/health", 2, 150)),
        liveness_probe: Some(http_probe("/health", 10, 3)),
        readiness_probe: Some(http_probe("/ready", 5, 2)),
        resources: spec.server.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        }]),
        security_context: Some(restricted_container()),
        ..Container::default()
    }
}

/// Replication settings of every server (see docs/replication.md): the ring they share with
/// the gateway (`KV_VNODES`), R and W as configured (a server caps them at the members of its
/// ring, which the ring configuration carries, so they need not follow `spec.replicas`), and
/// the seeds: the first ring's servers by their stable DNS names. None of it depends on
/// `spec.replicas`, so scaling never rolls the pods: a new server, not among the seeds, starts
/// as a joiner and owns keys once a ring configuration names it (docs/rebalancing.md).
fn replication_env(ctx: &Ctx) -> Vec<(&'static str, String)> {
    let spec = &ctx.cluster.spec;
    let mut env = vec![
        ("KV_VNODES", spec.vnodes.to_string()),
        ("KV_REPLICATION_FACTOR", spec.replication.factor.to_string()),
    ];
    if let Some(quorum) = spec.replication.write_quorum {
        env.push(("KV_WRITE_QUORUM", quorum.to_string()));
    }
    // Only off the default, like the value limit: a new variable would roll existing clusters.
    if let Some(ms) = replication_timeout_ms(&spec.replication) {
        env.push(("KV_REPLICATION_TIMEOUT_MS", ms.to_string()));
    }
    // Even a lone server names itself: it then runs a one-member ring, which can grow (a
    // server without peers has no ring to hand keys over with).
    let peers: Vec<String> = peers(ctx)
        .into_iter()
        .map(|(name, url)| format!("{name}={url}"))
        .collect();
    env.push(("KV_PEERS", peers.join(",")));
    env
}

/// The seeds as (ring name, URL): pod names, and the DNS names the headless Service gives
/// those pods. `publishNotReadyAddresses` keeps a name resolvable while a server is not
/// ready, which is exactly when it needs its peers (catching up).
pub(crate) fn peers(ctx: &Ctx) -> Vec<(String, String)> {
    ctx.plan
        .ring
        .seeds
        .iter()
        .map(|pod| (pod.clone(), ctx.names.server_url(pod, &ctx.namespace)))
        .collect()
}

fn volume_claim_template(ctx: &Ctx) -> PersistentVolumeClaim {
    let storage = &ctx.plan.storage;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(ctx.names.selector(Component::Server)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), storage.size.clone())])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// An HTTP probe on the named port.
pub(super) fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

pub(super) fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// The user's variables (`spec.server.env`, `spec.gateway.env`), after the operator's, so
/// that `$(POD_NAME)` expands in them. The API server refuses the names in `managed` and a
/// name given twice; they are skipped here too, so that a spec the rule never saw (an API
/// server without CEL validation) still renders one variable per name, the operator's.
pub(super) fn extra_env<'a>(
    extra: &'a [ExtraEnv],
    managed: &'a [&str],
) -> impl Iterator<Item = EnvVar> + 'a {
    let mut seen = std::collections::BTreeSet::new();
    extra
        .iter()
        .filter(move |e| !managed.contains(&e.name.as_str()) && seen.insert(e.name.as_str()))
        .map(|e| EnvVar {
            name: e.name.clone(),
            value: e.value.clone(),
            value_from: e.value_from.clone(),
        })
}

pub(super) fn pull_secrets(names: &[String]) -> Option<Vec<LocalObjectReference>> {
    (!names.is_empty()).then(|| {
        names
            .iter()
            .map(|n| LocalObjectReference { name: n.clone() })
            .collect()
    })
}

pub(super) fn apply_scheduling(pod: &mut PodSpec, scheduling: &Scheduling) {
    let non_empty = |v: &Vec<_>| !v.is_empty();
    pod.node_selector =
        (!scheduling.node_selector.is_empty()).then(|| scheduling.node_selector.clone());
    pod.tolerations = Some(scheduling.tolerations.clone()).filter(non_empty);
    pod.affinity = scheduling.affinity.clone();
    pod.topology_spread_constraints =
        Some(scheduling.topology_spread_constraints.clone()).filter(|v| !v.is_empty());
}

/// `KV_MAX_VALUE_BYTES`, only when it is not the server's default: a variable added to the
/// pod template would roll every existing cluster's servers on an operator upgrade.
fn value_limit_env(server: &kv_crds::ServerSpec) -> Option<(&'static str, String)> {
    (server.max_value_bytes != kv_crds::DEFAULT_MAX_VALUE_BYTES)
        .then(|| ("KV_MAX_VALUE_BYTES", server.max_value_bytes.to_string()))
}

/// `spec.replication.timeoutSeconds` as `kv-server --replication-timeout-ms`, or `None` when it
/// is the default (`KV_REPLICATION_TIMEOUT_MS` is then left out of the pod templates).
pub(super) fn replication_timeout_ms(replication: &kv_crds::ReplicationSpec) -> Option<u64> {
    (replication.timeout_seconds != kv_crds::DEFAULT_REPLICATION_TIMEOUT_SECONDS)
        .then(|| u64::try_from(replication.timeout_seconds.max(1)).unwrap_or(1) * 1000)
}
