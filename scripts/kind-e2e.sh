#!/usr/bin/env bash
# The whole Kubernetes path on a throw-away kind cluster (docs/install.md, "kind + Helm"):
# build the images, create the cluster (kind-config.yaml), load the images, install the chart,
# apply helm/examples/kind-kvcluster.yaml (3 servers, gateway on NodePort 30800 = host port
# 8000), wait for Ready, put/get from the host, kill the key's server pod and check it comes
# back with its data, then delete the cluster.
#
# Needs: docker (with a running engine), kind, kubectl, helm (v3 or v4), curl, python3.
#   scripts/kind-e2e.sh                 # everything, cluster deleted at the end
#   KEEP_CLUSTER=1 scripts/kind-e2e.sh  # keep the cluster to look around
#   SKIP_BUILD=1 scripts/kind-e2e.sh    # reuse images already built with the right tags
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${KIND_CLUSTER_NAME:-kvstore}"
NAMESPACE=kvstore-system
RELEASE=kvstore-operator
EXAMPLE=helm/examples/kind-kvcluster.yaml
KVC=e2e
KVC_NAMESPACE=default
GATEWAY="http://127.0.0.1:8000"
VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/kvstore-operator/Chart.yaml)"
KEY="e2e-$(date +%s)"

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
die() {
    echo "FAIL: $*" >&2
    exit 1
}

for tool in docker kind kubectl helm curl python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed (see docs/install.md)"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"
[[ -n "$VERSION" ]] || die "no appVersion in helm/kvstore-operator/Chart.yaml"

created=0
diagnose() {
    echo "---- diagnostics" >&2
    kubectl get kvc,statefulsets,deployments,pods,services,pvc -A -o wide >&2 || true
    kubectl -n "$KVC_NAMESPACE" describe kvc "$KVC" >&2 || true
    kubectl -n "$NAMESPACE" logs "deployment/$RELEASE" --tail=100 >&2 || true
    kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -40 >&2 || true
}
cleanup() {
    local status=$?
    if [[ $status -ne 0 && $created -eq 1 ]]; then
        diagnose
    fi
    if [[ $created -eq 1 && "${KEEP_CLUSTER:-0}" != 1 ]]; then
        step "delete the kind cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER" || true
    elif [[ $created -eq 1 ]]; then
        echo "KEEP_CLUSTER=1: the cluster stays; delete it with: kind delete cluster --name $CLUSTER"
    fi
    exit "$status"
}
trap cleanup EXIT

# A JSON field of a gateway answer, e.g. json_field "$body" version; objects come back as
# compact JSON with sorted keys.
json_field() {
    python3 -c '
import json, sys
v = json.loads(sys.argv[1])[sys.argv[2]]
print(v if isinstance(v, (str, int)) else json.dumps(v, sort_keys=True, separators=(",", ":")))
' "$1" "$2"
}

# Retries a command for up to $1 seconds.
retry() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 2
    done
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    for target in kv-server kv-gateway kv-operator; do
        step "docker build --target $target -t kvstore/$target:$VERSION"
        docker build --target "$target" -t "kvstore/$target:$VERSION" \
            --build-arg VERSION="$VERSION" \
            --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" .
    done
fi

step "create the kind cluster $CLUSTER (kind-config.yaml)"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    die "a kind cluster named $CLUSTER exists already: delete it or set KIND_CLUSTER_NAME"
fi
created=1
kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 180s
kubectl config use-context "kind-$CLUSTER"

step "load the images into the cluster"
for target in kv-server kv-gateway kv-operator; do
    kind load docker-image "kvstore/$target:$VERSION" --name "$CLUSTER"
done

step "helm install $RELEASE (installs the CRD from the chart's crds/)"
helm install "$RELEASE" helm/kvstore-operator --namespace "$NAMESPACE" --create-namespace \
    --set image.pullPolicy=IfNotPresent --set logLevel=debug --wait --timeout 180s
kubectl wait --for condition=established --timeout=60s crd/kvclusters.kvstore.dev
kubectl -n "$NAMESPACE" rollout status "deployment/$RELEASE" --timeout=120s

step "the API server refuses a variable the operator sets (the CRD's CEL rule)"
refused="$(kubectl apply --dry-run=server -f - 2>&1 <<'EOF'
apiVersion: kvstore.dev/v1alpha1
kind: KvCluster
metadata:
  name: refused
  namespace: default
spec:
  server:
    env:
      - name: KV_PEERS
        value: elsewhere=http://elsewhere:8080
EOF
)" && die "a KvCluster setting KV_PEERS in server.env was accepted"
echo "$refused"
grep -q "the operator sets these variables" <<<"$refused" || die "refused for another reason"

step "kubectl apply -f $EXAMPLE"
kubectl apply -f "$EXAMPLE"

step "wait for KvCluster $KVC to be Ready"
kubectl -n "$KVC_NAMESPACE" wait "kvc/$KVC" --for=condition=Ready --timeout=300s
kubectl -n "$KVC_NAMESPACE" get kvc "$KVC"

step "put and get $KEY through the gateway at $GATEWAY (NodePort 30800)"
put_once() {
    curl -fsS -X PUT "$GATEWAY/put/$KEY" -H 'Content-Type: application/json' \
        -d '{"value": {"written": "before the kill"}}'
}
body="$(retry 60 put_once)" || die "PUT $GATEWAY/put/$KEY never succeeded"
echo "$body"
[[ "$(json_field "$body" version)" == 1 ]] || die "the first version of $KEY is not 1"
owner="$(json_field "$body" server_used)"
body="$(curl -fsS "$GATEWAY/get/$KEY")"
echo "$body"
[[ "$(json_field "$body" value)" == '{"written":"before the kill"}' ]] || die "GET returned another value"

step "scrape $owner's metrics port (9090: /metrics and /health, no data)"
kubectl -n "$KVC_NAMESPACE" port-forward "pod/$owner" 19090:9090 >/dev/null 2>&1 &
forward=$!
scrape() { curl -fsS http://127.0.0.1:19090/metrics; }
metrics="$(retry 20 scrape)" || { kill "$forward"; die "no /metrics on $owner:9090"; }
grep -q '^kv_server_http_requests_total' <<<"$metrics" || { kill "$forward"; die "$owner:9090 does not serve kv-server metrics"; }
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:19090/get/$KEY")"
kill "$forward"
[[ "$code" == 404 ]] || die "$owner:9090 answered $code for /get/$KEY: the metrics port must serve no data"

step "kill $owner, the server that owns $KEY, and wait for it to come back"
old_uid="$(kubectl -n "$KVC_NAMESPACE" get pod "$owner" -o jsonpath='{.metadata.uid}')"
kubectl -n "$KVC_NAMESPACE" delete pod "$owner" --grace-period=0 --force --wait=false
new_pod() {
    local uid
    uid="$(kubectl -n "$KVC_NAMESPACE" get pod "$owner" -o jsonpath='{.metadata.uid}' 2>/dev/null)" &&
        [[ -n "$uid" && "$uid" != "$old_uid" ]]
}
retry 120 new_pod || die "$owner was not recreated within 120s"
kubectl -n "$KVC_NAMESPACE" wait "pod/$owner" --for=condition=Ready --timeout=180s
kubectl -n "$KVC_NAMESPACE" wait "kvc/$KVC" --for=condition=Ready --timeout=180s

step "get $KEY again: the data survived on the pod's volume"
get_once() { curl -fsS "$GATEWAY/get/$KEY"; }
body="$(retry 60 get_once)" || die "GET $KEY failed after $owner came back"
echo "$body"
[[ "$(json_field "$body" version)" == 1 ]] || die "$KEY lost its version after the restart"
[[ "$(json_field "$body" value)" == '{"written":"before the kill"}' ]] || die "$KEY lost its value"
body="$(curl -fsS -X PUT "$GATEWAY/put/$KEY" -H 'Content-Type: application/json' -d '{"value": 2}')"
echo "$body"
[[ "$(json_field "$body" version)" == 2 ]] || die "the next version after the restart is not 2"

# Scaling moves the keys (docs/rebalancing.md): one server more, then back, and every version
# of KEY is still read through the gateway.
replicas="$(kubectl -n "$KVC_NAMESPACE" get kvc "$KVC" -o jsonpath='{.spec.replicas}')"
balanced_at() { # servers: the operator reports a ring of that many, moved and cleaned
    local want="$1" got
    got="$(kubectl -n "$KVC_NAMESPACE" get kvc "$KVC" \
        -o jsonpath='{.status.ring.phase} {.status.ring.members[*]}')"
    echo "   ring: $got"
    [[ "$got" == Done* ]] && (($(wc -w <<<"$got") == want + 1))
}
for servers in $((replicas + 1)) "$replicas"; do
    step "kubectl scale kvc/$KVC --replicas=$servers: the operator moves the keys"
    kubectl -n "$KVC_NAMESPACE" scale "kvc/$KVC" --replicas="$servers"
    retry 300 balanced_at "$servers" || die "the ring of $servers servers was not in force within 300s"
    kubectl -n "$KVC_NAMESPACE" wait "kvc/$KVC" --for=condition=Rebalancing=False --timeout=60s
    body="$(retry 60 get_once)" || die "GET $KEY failed after scaling to $servers"
    echo "$body"
    [[ "$(json_field "$body" version)" == 2 ]] || die "$KEY is not at version 2 after scaling"
    first="$(curl -fsS "$GATEWAY/get/$KEY?version=1")"
    [[ "$(json_field "$first" value)" == '{"written":"before the kill"}' ]] ||
        die "$KEY lost version 1 after scaling to $servers"
done

step "kind e2e passed"
