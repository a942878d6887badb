#!/usr/bin/env bash
# kvstore's alerts against a real Prometheus scraping real processes: three kv-server
# processes with replication and a kv-gateway on 127.0.0.1, scraped every second with the
# labels prometheus-operator gives pods (namespace, pod, container), and the chart's rule
# file (helm/kvstore-operator/files/prometheus-rules.yaml) evaluated every second.
#
#   1. All up: no kvstore alert is pending or firing.
#   2. server-2 killed with SIGKILL: KvstoreServerDown (the gateway's view), KvstoreTargetDown
#      (the scrape) and KvstorePeerUnreachable (the other servers' view) become pending for
#      server-2 within 30 s, and nothing is said of the others.
#   3. server-2 back on its data: every alert clears.
#
# promtool's unit tests (helm/tests/) check each alert's logic on made-up series; this checks
# that the expressions meet the metrics, labels and values the binaries really produce.
# Needs the `prometheus` binary (Debian's package, which scripts/check-packaging.sh installs;
# this script installs it too when missing) and builds kv-server and kv-gateway (debug).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

die() {
    echo "FAIL: $*" >&2
    exit 1
}
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

if ! command -v prometheus >/dev/null; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        prometheus >/dev/null
fi

step "build kv-server and kv-gateway"
cargo build -q -p kv-server -p kv-gateway
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

WORK=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

declare -A PORT PID
for n in 1 2 3; do PORT[server-$n]=$(free_port); done
PORT[gateway]=$(free_port)
PORT[prometheus]=$(free_port)
peers="server-1=http://127.0.0.1:${PORT[server-1]},server-2=http://127.0.0.1:${PORT[server-2]},server-3=http://127.0.0.1:${PORT[server-3]}"

start_server() { # NAME
    "$BIN/kv-server" --listen "127.0.0.1:${PORT[$1]}" --data-dir "$WORK/$1" --node-name "$1" \
        --peers "$peers" --replication-factor 3 --log-level warn >>"$WORK/$1.log" 2>&1 &
    PID[$1]=$!
    pids+=("$!")
}

wait_ready() { # URL
    for _ in $(seq 1 300); do
        curl -fsS "$1/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$1 never became ready"
}

step "three servers and a gateway"
for n in 1 2 3; do start_server "server-$n"; done
for n in 1 2 3; do wait_ready "http://127.0.0.1:${PORT[server-$n]}"; done
"$BIN/kv-gateway" --listen "127.0.0.1:${PORT[gateway]}" --backend "$peers" \
    --replication-factor 3 --health-interval-ms 200 --log-level warn >"$WORK/gateway.log" 2>&1 &
pids+=("$!")
GATEWAY="http://127.0.0.1:${PORT[gateway]}"
wait_ready "$GATEWAY"
for i in $(seq 1 20); do
    curl -fsS -X PUT "$GATEWAY/put/alerted-$i" -H 'Content-Type: application/json' \
        -d "{\"value\": $i}" >/dev/null
done

step "Prometheus, scraping every second, with the chart's alerts"
{
    echo "global: {scrape_interval: 1s, evaluation_interval: 1s}"
    echo "rule_files: [\"$ROOT/helm/kvstore-operator/files/prometheus-rules.yaml\"]"
    echo "scrape_configs:"
    echo "  - job_name: servers"
    echo "    static_configs:"
    for n in 1 2 3; do
        echo "      - targets: [\"127.0.0.1:${PORT[server-$n]}\"]"
        echo "        labels: {namespace: e2e, pod: server-$n, container: kv-server}"
    done
    echo "  - job_name: gateway"
    echo "    static_configs:"
    echo "      - targets: [\"127.0.0.1:${PORT[gateway]}\"]"
    echo "        labels: {namespace: e2e, pod: gateway, container: kv-gateway}"
} >"$WORK/prometheus.yml"
promtool check config "$WORK/prometheus.yml" >/dev/null
prometheus --config.file "$WORK/prometheus.yml" --storage.tsdb.path "$WORK/tsdb" \
    --web.listen-address "127.0.0.1:${PORT[prometheus]}" >"$WORK/prometheus.log" 2>&1 &
pids+=("$!")
PROM="http://127.0.0.1:${PORT[prometheus]}"

# Prints the instant vector of a PromQL query, one "labels value" line per series, sorted.
query() {
    curl -fsS --get "$PROM/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
answer = json.load(sys.stdin)
assert answer["status"] == "success", answer
rows = []
for r in answer["data"]["result"]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k != "__name__")
    rows.append(labels + " " + r["value"][1])
print("\n".join(sorted(rows)))'
}

# Waits up to $2 seconds for query $1 to print exactly $3 (an empty string: no series).
wait_for() {
    local got=""
    for _ in $(seq 1 $(($2 * 5))); do
        got=$(query "$1" 2>/dev/null) || got="(query failed)"
        [[ $got == "$3" ]] && return 0
        sleep 0.2
    done
    echo "query:    $1" >&2
    echo "expected: ${3:-(nothing)}" >&2
    echo "got:      ${got:-(nothing)}" >&2
    die "Prometheus did not show what was expected within $2 s"
}

wait_for 'count(up == 1)' 60 " 4"
# Every rule group evaluated at least once with all targets up.
sleep 3
echo "all four targets up"

KVSTORE_ALERTS='ALERTS{alertname=~"Kvstore.*"}'
by_name() { echo "sort_desc(count by (alertname, alertstate, member, pod, peer) ($KVSTORE_ALERTS))"; }

step "all up: no kvstore alert"
wait_for "$KVSTORE_ALERTS" 10 ""
echo "none pending or firing"

step "server-2 killed: it is down to the gateway, to the scrape and to its peers"
kill -KILL "${PID[server-2]}"
wait "${PID[server-2]}" 2>/dev/null || true
wait_for 'count by (alertname, member) (ALERTS{alertname="KvstoreServerDown"})' 30 \
    "alertname=KvstoreServerDown,member=server-2 1"
wait_for 'count by (alertname, pod) (ALERTS{alertname="KvstoreTargetDown"})' 30 \
    "alertname=KvstoreTargetDown,pod=server-2 1"
wait_for 'count by (alertname, peer) (ALERTS{alertname="KvstorePeerUnreachable"})' 30 \
    "alertname=KvstorePeerUnreachable,peer=server-2 2"
query "$(by_name)"
# Nothing else: only those three alerts, and only about server-2.
wait_for "count by (alertname) ($KVSTORE_ALERTS)" 5 \
    "$(printf '%s\n' 'alertname=KvstorePeerUnreachable 2' 'alertname=KvstoreServerDown 1' 'alertname=KvstoreTargetDown 1')"

step "server-2 back on its data: every alert clears"
start_server server-2
wait_ready "http://127.0.0.1:${PORT[server-2]}"
wait_for "$KVSTORE_ALERTS" 60 ""
echo "none pending or firing"

step "alerts e2e passed"
