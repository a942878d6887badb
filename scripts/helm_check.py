#!/usr/bin/env python3
"""Checks the Helm chart and the CRD without a cluster (run by scripts/check-packaging.sh).

- The chart's crds/kvcluster.yaml is a byte-for-byte copy of crds/kvcluster.yaml.
- Helm v4's own lint (strict) and render, through helm-python-sdk (the Helm engine as a
  library: no helm binary, no cluster), for each scenario below.
- Every rendered object is validated against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict: unknown fields fail); the CRD too.
- KvClusters (the chart's example, crds/examples/, helm/examples/) are validated against the
  CRD's openAPIV3Schema with jsonschema, unknown fields rejected as the API server's strict
  field validation does.
- The RBAC the chart grants equals the table below (what operator/src calls), and the objects
  agree with each other (selectors, ports, service account, Lease name).
- Objects are written as JSON, one file each, under --out/<scenario>/ for the Rust test
  operator/tests/helm_rendered.rs, which deserializes each into its k8s-openapi type.

Exit status 1 when anything fails; every failure is printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "kvstore-operator"
CRD = ROOT / "crds" / "kvcluster.yaml"
EXAMPLE_DIRS = [ROOT / "crds" / "examples", ROOT / "helm" / "examples"]

# (name, values file or inline values, release name, namespace)
SCENARIOS = [
    ("default", None, "kvstore-operator", "kvstore-system"),
    ("everything", CHART / "ci" / "everything-values.yaml", "kv", "kvstore"),
    (
        "no-leader-election",
        {"leaderElection": {"enabled": False}, "metrics": {"enabled": False}},
        "kvstore-operator",
        "ops",
    ),
    (
        "monitoring-every-namespace",
        {
            "monitoring": {
                "podMonitors": {"enabled": True},
                "prometheusRule": {"enabled": True},
                "grafanaDashboard": {"enabled": True},
            }
        },
        "kvstore-operator",
        "monitoring",
    ),
]

# The alerts, included as they are in the PrometheusRule; and the objects the operator makes
# of a KvCluster (its golden files), which the PodMonitors must find.
RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
OPERATOR_GOLDEN = [ROOT / "operator" / "tests" / "golden" / n for n in ("minimal.yaml", "full.yaml")]

# Values the chart must refuse: (why, values).
REFUSED = [
    ("two replicas without leader election", {"replicaCount": 2, "leaderElection": {"enabled": False}}),
    ("a misspelt value", {"logLevle": "debug"}),
    ("an unknown log format", {"logFormat": "xml"}),
]

# What the operator calls, (API group, resource) -> verbs. Kept in step with
# operator/src/{controller.rs,reconcile/*.rs}; templates/_helpers.tpl says why each is there.
OPERATOR_RULES = {
    ("kvstore.dev", "kvclusters"): {"list", "watch"},
    ("kvstore.dev", "kvclusters/status"): {"patch"},
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch"},
    ("apps", "deployments"): {"list", "watch", "create", "patch"},
    ("", "services"): {"list", "watch", "create", "patch"},
    ("", "serviceaccounts"): {"create", "patch"},
    ("", "persistentvolumeclaims"): {"patch"},
    ("rbac.authorization.k8s.io", "roles"): {"create", "patch"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"create", "patch"},
    ("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"},
    ("policy", "poddisruptionbudgets"): {"create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
LEASE_RULES = {("coordination.k8s.io", "leases"): {"create", "get", "patch"}}


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def ok(self, what: str) -> None:
        print(f"  ok    {what}")

    def fail(self, what: str) -> None:
        print(f"  FAIL  {what}")
        self.failures.append(what)

    def check(self, condition: bool, what: str) -> bool:
        (self.ok if condition else self.fail)(what)
        return condition


# --- the CRD's schema as a JSON Schema -------------------------------------------------------


def to_json_schema(node):
    """openAPIV3Schema -> JSON Schema: `nullable` becomes a null type, int-or-string an anyOf,
    and objects with properties reject unknown fields unless marked to preserve them."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions", "$defs"):
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def kvcluster_validator(crd: dict) -> jsonschema.Draft202012Validator:
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    group = crd["spec"]["group"]
    schema.setdefault("properties", {}).update(
        {
            "apiVersion": {"const": f"{group}/{version['name']}"},
            "kind": {"const": crd["spec"]["names"]["kind"]},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        }
    )
    schema.setdefault("required", [])
    for field in ("apiVersion", "kind", "metadata"):
        if field not in schema["required"]:
            schema["required"].append(field)
    return jsonschema.Draft202012Validator(to_json_schema(schema))


def validate_kvcluster(c: Checker, validator, obj: dict, where: str) -> None:
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    if not errors:
        c.ok(f"{where}: KvCluster {obj['metadata']['name']} matches the CRD schema")
    for e in errors:
        path = ".".join(str(p) for p in e.path) or "(root)"
        c.fail(f"{where}: KvCluster {path}: {e.message}")


# --- Kubernetes schemas ----------------------------------------------------------------------


def validate_k8s(c: Checker, obj: dict, kube_version: str, where: str) -> None:
    name = f"{obj['kind']} {obj['metadata'].get('name')}"
    try:
        version = kubernetes_validate.validate(obj, kube_version, strict=True)
        c.ok(f"{where}: {name} is a valid {obj['apiVersion']} {obj['kind']} (Kubernetes {version})")
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(root)"
        c.fail(f"{where}: {name}: {path}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError:
        c.fail(f"{where}: {name}: no Kubernetes schema for {obj['apiVersion']}")


def check_service_monitor(c: Checker, sm: dict, services: list[dict], where: str) -> None:
    """monitoring.coreos.com has no schema offline: check the fields Prometheus needs."""
    spec = sm.get("spec", {})
    selector = spec.get("selector", {}).get("matchLabels", {})
    endpoints = spec.get("endpoints", [])
    c.check(bool(selector) and bool(endpoints), f"{where}: ServiceMonitor has a selector and endpoints")
    matched = [s for s in services if selector.items() <= s["metadata"].get("labels", {}).items()]
    c.check(len(matched) == 1, f"{where}: ServiceMonitor selects exactly the metrics Service")
    for svc in matched:
        ports = {p.get("name") for p in svc["spec"]["ports"]}
        for ep in endpoints:
            c.check(ep.get("port") in ports, f"{where}: ServiceMonitor port {ep.get('port')} is a Service port")


def check_pod_monitor(c: Checker, pm: dict, values: dict, where: str) -> None:
    """A PodMonitor must select the pods the operator renders for a KvCluster, by a port
    their container names, in the namespaces the operator watches."""
    spec = pm.get("spec", {})
    selector = spec.get("selector", {}).get("matchLabels", {})
    endpoints = spec.get("podMetricsEndpoints", [])
    name = pm["metadata"]["name"]
    c.check(bool(selector) and bool(endpoints), f"{where}: PodMonitor {name} has a selector and endpoints")
    watched = values.get("watchNamespace")
    wanted = {"matchNames": [watched]} if watched else {"any": True}
    c.check(spec.get("namespaceSelector") == wanted, f"{where}: PodMonitor {name} looks in {wanted}")
    selected = []
    for golden in OPERATOR_GOLDEN:
        for obj in yaml.safe_load_all(golden.read_text()):
            if not obj or obj["kind"] not in ("StatefulSet", "Deployment"):
                continue
            template = obj["spec"]["template"]
            if selector.items() <= template["metadata"]["labels"].items():
                ports = {p.get("name") for ctr in template["spec"]["containers"] for p in ctr.get("ports", [])}
                selected.append((golden.name, obj["kind"], ports))
    kinds = {kind for _, kind, _ in selected}
    c.check(
        len(selected) == len(OPERATOR_GOLDEN) and len(kinds) == 1,
        f"{where}: PodMonitor {name} selects one workload of each golden KvCluster ({selected})",
    )
    for golden, kind, ports in selected:
        for ep in endpoints:
            c.check(
                ep.get("port") in ports,
                f"{where}: PodMonitor {name} port {ep.get('port')} is a port of the {kind} in {golden}",
            )


def check_prometheus_rule(c: Checker, rule: dict, where: str) -> None:
    """The PrometheusRule carries exactly the rule file promtool checks and tests."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    c.check(
        rule.get("spec") == {"groups": groups},
        f"{where}: PrometheusRule {rule['metadata']['name']} holds the groups of {RULES.relative_to(ROOT)}",
    )


def check_dashboard_file(c: Checker) -> None:
    """The dashboard is one Grafana can load: unique panel ids and refIds, panels inside the
    24-column grid, every query on the data source variable, every server and gateway query
    limited to the namespace variable, and every query valid PromQL (promtool parses each,
    the variables replaced by what Grafana sends)."""
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    c.check({"datasource", "namespace"} <= variables, "dashboard: has the datasource and namespace variables")
    c.check(bool(dash.get("uid")) and bool(dash.get("title")), "dashboard: has a uid and a title")
    panels = dash.get("panels", [])
    ids = [p.get("id") for p in panels]
    c.check(len(ids) == len(set(ids)) and None not in ids, "dashboard: every panel has its own id")
    rules = []
    for p in panels:
        grid = p.get("gridPos", {})
        c.check(
            grid.get("x", 99) + grid.get("w", 99) <= 24 and grid.get("h", 0) > 0,
            f"dashboard: panel {p.get('id')} ({p.get('title')}) lies inside the grid",
        )
        if p.get("type") == "row":
            continue
        targets = p.get("targets", [])
        refs = [t.get("refId") for t in targets]
        ok = bool(targets) and len(refs) == len(set(refs))
        ok = ok and p.get("datasource", {}).get("uid") == "${datasource}"
        for t in targets:
            expr = t.get("expr", "")
            ok = ok and t.get("datasource", {}).get("uid") == "${datasource}" and bool(expr)
            if "kv_server_" in expr or "kv_gateway_" in expr or "kubelet_" in expr:
                ok = ok and expr.count('namespace=~"$namespace"') == expr.count("{")
            promql = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")
            rules.append({"record": f"kvstore:dashboard:panel_{p['id']}_{t.get('refId')}", "expr": promql})
        c.check(ok, f"dashboard: panel {p['id']} ({p.get('title')}): queries on ${{datasource}}, by namespace")
    promtool = shutil.which("promtool")
    if not c.check(promtool is not None, "dashboard: promtool is installed (check-packaging.sh installs it)"):
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        f.flush()
        run = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    c.check(run.returncode == 0, f"dashboard: promtool parses all {len(rules)} queries {run.stdout}{run.stderr}".strip())


def check_dashboard_config_map(c: Checker, cm: dict, values: dict, where: str) -> None:
    """The ConfigMap carries the dashboard file as it is, with the sidecar's labels."""
    wanted = values["monitoring"]["grafanaDashboard"]
    c.check(
        json.loads(cm.get("data", {}).get("kvstore.json", "null")) == json.loads(DASHBOARD.read_text()),
        f"{where}: ConfigMap {cm['metadata']['name']} holds {DASHBOARD.relative_to(ROOT)}",
    )
    c.check(
        wanted.get("labels", {}).items() <= cm["metadata"].get("labels", {}).items(),
        f"{where}: the dashboard ConfigMap has the sidecar's labels",
    )
    if wanted.get("namespace"):
        c.check(cm["metadata"]["namespace"] == wanted["namespace"], f"{where}: the dashboard is in {wanted['namespace']}")


# --- consistency between the rendered objects -------------------------------------------------


def rules_of(objs: list[dict], kind: str, name_suffix: str = "") -> dict:
    granted: dict = {}
    for o in objs:
        if o["kind"] != kind or not o["metadata"]["name"].endswith(name_suffix):
            continue
        for rule in o.get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    granted.setdefault((group, resource), set()).update(rule.get("verbs", []))
    return granted


def check_consistency(c: Checker, objs: list[dict], values: dict, where: str) -> None:
    by_kind: dict[str, list[dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    deployments = by_kind.get("Deployment", [])
    if not c.check(len(deployments) == 1, f"{where}: one operator Deployment"):
        return
    dep = deployments[0]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    c.check(
        dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
        f"{where}: the Deployment's selector matches its pod labels",
    )
    sa_name = pod["spec"]["serviceAccountName"]
    sas = [s["metadata"]["name"] for s in by_kind.get("ServiceAccount", [])]
    c.check(sas == [sa_name], f"{where}: the pod runs as the chart's ServiceAccount {sa_name}")
    sc = container.get("securityContext", {})
    psc = pod["spec"].get("securityContext", {})
    c.check(
        psc.get("runAsNonRoot") is True
        and sc.get("readOnlyRootFilesystem") is True
        and sc.get("allowPrivilegeEscalation") is False
        and sc.get("capabilities", {}).get("drop") == ["ALL"],
        f"{where}: the container is non-root, read-only, without privileges",
    )
    port_names = {p["name"] for p in container.get("ports", [])}
    for probe in ("livenessProbe", "readinessProbe"):
        port = container.get(probe, {}).get("httpGet", {}).get("port")
        c.check(port in port_names, f"{where}: {probe} uses the container port {port}")
    listen = env.get("KV_OPERATOR_LISTEN", {}).get("value", "")
    c.check(
        listen.endswith(f":{values['metrics']['port']}")
        and any(p["containerPort"] == values["metrics"]["port"] for p in container["ports"]),
        f"{where}: KV_OPERATOR_LISTEN ({listen}) is the container port",
    )

    # Bindings name existing roles and the operator's ServiceAccount.
    roles = {(o["kind"], o["metadata"]["name"]) for o in by_kind.get("Role", []) + by_kind.get("ClusterRole", [])}
    for binding in by_kind.get("RoleBinding", []) + by_kind.get("ClusterRoleBinding", []):
        ref = (binding["roleRef"]["kind"], binding["roleRef"]["name"])
        subjects = [(s["kind"], s["name"]) for s in binding.get("subjects", [])]
        c.check(
            ref in roles and subjects == [("ServiceAccount", sa_name)],
            f"{where}: {binding['kind']} {binding['metadata']['name']} binds {ref[1]} to {sa_name}",
        )

    # RBAC: exactly the table.
    leader = values["leaderElection"]["enabled"]
    if values["watchNamespace"]:
        main = rules_of(objs, "Role")
        main = {k: v for k, v in main.items() if k[0] != "coordination.k8s.io"}
        c.check(not by_kind.get("ClusterRole"), f"{where}: a namespaced install grants nothing cluster-wide")
        ns = {o["metadata"]["namespace"] for o in by_kind["Role"] if not o["metadata"]["name"].endswith("-leader")}
        c.check(ns == {values["watchNamespace"]}, f"{where}: the operator's Role is in the watched namespace")
    else:
        main = rules_of(objs, "ClusterRole")
    c.check(main == OPERATOR_RULES, f"{where}: the operator's rules are exactly what it calls")
    if main != OPERATOR_RULES:
        for key in sorted(set(main) | set(OPERATOR_RULES)):
            if main.get(key) != OPERATOR_RULES.get(key):
                print(f"        {key}: granted {sorted(main.get(key, []))}, needed {sorted(OPERATOR_RULES.get(key, []))}")
    lease_rules = {k: v for k, v in rules_of(objs, "Role", "-leader").items()}
    c.check(lease_rules == (LEASE_RULES if leader else {}), f"{where}: Lease permissions only with leader election")
    if leader:
        lease_name = env["KV_OPERATOR_LEASE_NAME"]["value"]
        named = [
            r
            for o in by_kind["Role"]
            if o["metadata"]["name"].endswith("-leader")
            for r in o["rules"]
            if r.get("resourceNames")
        ]
        c.check(
            all(r["resourceNames"] == [lease_name] for r in named) and named,
            f"{where}: get/patch are limited to the Lease {lease_name}",
        )
        c.check(
            env["KV_OPERATOR_LEASE_NAMESPACE"].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            == "metadata.namespace",
            f"{where}: the Lease is in the operator's own namespace (downward API)",
        )
    else:
        c.check(env.get("KV_OPERATOR_NO_LEADER_ELECTION", {}).get("value") == "true", f"{where}: leader election off")
        c.check(dep["spec"]["strategy"]["type"] == "Recreate", f"{where}: Recreate without leader election")

    # Metrics Service selects the pods and names a container port.
    services = by_kind.get("Service", [])
    for svc in services:
        sel = svc["spec"]["selector"]
        c.check(sel.items() <= pod_labels.items(), f"{where}: Service {svc['metadata']['name']} selects the operator pods")
        for p in svc["spec"]["ports"]:
            c.check(p["targetPort"] in port_names, f"{where}: Service port {p['name']} targets a container port")
    for sm in by_kind.get("ServiceMonitor", []):
        check_service_monitor(c, sm, services, where)
    monitoring = values.get("monitoring", {})
    pod_monitors = by_kind.get("PodMonitor", [])
    c.check(
        len(pod_monitors) == (2 if monitoring.get("podMonitors", {}).get("enabled") else 0),
        f"{where}: a PodMonitor for the servers and one for the gateways, when enabled",
    )
    for pm in pod_monitors:
        check_pod_monitor(c, pm, values, where)
    rules = by_kind.get("PrometheusRule", [])
    c.check(
        len(rules) == (1 if monitoring.get("prometheusRule", {}).get("enabled") else 0),
        f"{where}: one PrometheusRule, when enabled",
    )
    for rule in rules:
        check_prometheus_rule(c, rule, where)
    dashboards = [cm for cm in by_kind.get("ConfigMap", []) if cm["metadata"]["name"].endswith("-dashboard")]
    c.check(
        len(dashboards) == (1 if monitoring.get("grafanaDashboard", {}).get("enabled") else 0),
        f"{where}: one dashboard ConfigMap, when enabled",
    )
    for cm in dashboards:
        check_dashboard_config_map(c, cm, values, where)
    for pdb in by_kind.get("PodDisruptionBudget", []):
        c.check(
            pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
            f"{where}: the PodDisruptionBudget selects the operator pods",
        )


# --- main ------------------------------------------------------------------------------------


def load_values(spec) -> dict | None:
    if spec is None or isinstance(spec, dict):
        return spec
    return yaml.safe_load(Path(spec).read_text())


def render(chart, values, release, namespace) -> tuple[list[tuple[str, dict]], str]:
    manifests = chart.render(values, name=release, namespace=namespace, is_install=True)
    objs = []
    notes = ""
    for template in sorted(manifests):
        if template.endswith("NOTES.txt"):
            notes = manifests[template]
            continue
        for doc in yaml.safe_load_all(manifests[template]):
            if doc:
                objs.append((template, doc))
    return objs, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "helm-rendered")
    parser.add_argument(
        "--kube-version",
        default="1.33",
        help="Kubernetes version whose schemas are used (k8s-openapi's feature is v1_33)",
    )
    args = parser.parse_args()
    c = Checker()
    kube = args.kube_version

    print("== Grafana dashboard")
    check_dashboard_file(c)

    print("== CRD")
    crd_text = CRD.read_text()
    chart_crd = CHART / "crds" / "kvcluster.yaml"
    c.check(
        chart_crd.exists() and chart_crd.read_text() == crd_text,
        f"{chart_crd.relative_to(ROOT)} is a copy of crds/kvcluster.yaml "
        f"(fix: cp crds/kvcluster.yaml {chart_crd.relative_to(ROOT)})",
    )
    crd = yaml.safe_load(crd_text)
    validate_k8s(c, crd, kube, "crds/kvcluster.yaml")
    validator = kvcluster_validator(crd)
    # The conversion must reject what the API server rejects, or the checks below prove nothing.
    probe = {"apiVersion": "kvstore.dev/v1alpha1", "kind": "KvCluster", "metadata": {"name": "x"}}
    c.check(validator.is_valid({**probe, "spec": {}}), "the CRD schema accepts an empty spec")
    c.check(not validator.is_valid({**probe, "spec": {"replica": 3}}), "the CRD schema rejects an unknown field")
    c.check(not validator.is_valid({**probe, "spec": {"replicas": "3"}}), "the CRD schema rejects a wrong type")
    # A bare word is a target to the binaries' log filter: a misspelt level would turn logs off.
    c.check(
        validator.is_valid({**probe, "spec": {"server": {"logLevel": "info,kv_server::replication=debug"}}})
        and not validator.is_valid({**probe, "spec": {"server": {"logLevel": "debg"}}})
        and not validator.is_valid({**probe, "spec": {"gateway": {"logLevel": "info,kv_gateway"}}}),
        "the CRD schema takes levels and target=level pairs as logLevel, and rejects a misspelt level",
    )

    print("== KvCluster examples against the CRD schema")
    for directory in EXAMPLE_DIRS:
        for path in sorted(directory.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    validate_kvcluster(c, validator, doc, str(path.relative_to(ROOT)))

    print(f"== Helm {helm.helm_sdk_version()} (helm-c {helm.helm_c_version()}): lint and render {CHART.relative_to(ROOT)}")
    if args.out.exists():
        shutil.rmtree(args.out)
    with helm.Chart.load(str(CHART)) as chart:
        c.check(chart.crds and chart.crds[0]["filename"].endswith("kvcluster.yaml"), "the chart ships the CRD in crds/")
        for name, values_spec, release, namespace in SCENARIOS:
            where = name
            values = load_values(values_spec)
            print(f"-- scenario {name} (release {release}, namespace {namespace})")
            report = helm.lint(str(CHART), values, strict=True, namespace=namespace, kube_version=f"v{kube}.0")
            problems = [m for m in report["messages"] if m["severity"] >= 2] + [
                {"path": "", "error": e} for e in report["errors"]
            ]
            for m in report["messages"]:
                if m["severity"] < 2:
                    print(f"        lint info: {m['path']}: {m['error']}")
            c.check(not problems, f"{where}: helm lint --strict")
            for m in problems:
                print(f"        {m['path']}: {m['error']}")
            merged = chart.merge_values(values)
            objs, notes = render(chart, values, release, namespace)
            c.check(bool(notes.strip()), f"{where}: NOTES.txt renders")
            monitoring = merged.get("monitoring", {})
            for part, word in (("podMonitors", "PodMonitors"), ("prometheusRule", "PrometheusRule"), ("grafanaDashboard", "dashboard")):
                on = bool(monitoring.get(part, {}).get("enabled"))
                c.check((word in notes) == on, f"{where}: NOTES.txt {'names' if on else 'leaves out'} the {word}")
            out = args.out / name
            out.mkdir(parents=True)
            stream = []
            for i, (template, obj) in enumerate(objs):
                kind, obj_name = obj.get("kind", "?"), obj.get("metadata", {}).get("name", "?")
                (out / f"{i:02d}-{kind.lower()}-{obj_name}.json").write_text(json.dumps(obj, indent=2) + "\n")
                stream.append(f"# Source: {template}\n" + yaml.safe_dump(obj, sort_keys=False))
                if kind == "KvCluster":
                    validate_kvcluster(c, validator, obj, f"{where}: {template}")
                elif obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
                    pass  # checked against the Service in check_consistency
                else:
                    validate_k8s(c, obj, kube, f"{where}: {template}")
                namespaced = kind not in ("ClusterRole", "ClusterRoleBinding")
                if (obj["metadata"].get("namespace") is not None) != namespaced:
                    c.fail(f"{where}: {kind} {obj_name} {'lacks a' if namespaced else 'has a'} namespace")
            (out / "all.yaml").write_text("---\n".join(stream))
            check_consistency(c, [o for _, o in objs], merged, where)
            print(f"        {len(objs)} objects written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")

        print("-- values the chart refuses")
        for why, values in REFUSED:
            try:
                chart.validate_schema(values)
                chart.render(values, name="x", namespace="x")
                c.fail(f"refused: {why} rendered")
            except helm.HelmError as e:
                c.ok(f"refused: {why} ({' '.join(str(e).split())[:110]})")

    print()
    if c.failures:
        print(f"helm_check: {len(c.failures)} failure(s)")
        return 1
    print("helm_check: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
