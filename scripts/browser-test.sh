#!/usr/bin/env bash
# The gateway's Swagger UI in a real browser: starts a local cluster (3 kv-server + 1
# kv-gateway from target/debug), opens /docs/ in Debian's chromium driven by playwright-core
# (tests/browser/swagger.cjs), checks the listed operations and one "Try it out" PUT and GET,
# and keeps screenshots in target/ci-artifacts/ (swagger.png: the whole page;
# swagger-try-it-out.png: the GET operation and its 200 response).
#
# Installs what it needs: Debian's chromium (apt, when /usr/bin/chromium is missing) and
# playwright-core (npm ci of tests/browser/package-lock.json into
# ${KV_CACHE_DIR:-~/.cache/kvstore}/browser, reused while the lock file is unchanged).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

CACHE="${KV_CACHE_DIR:-$HOME/.cache/kvstore}"
NODE_DIR="$CACHE/browser"
ARTIFACTS="$ROOT/target/ci-artifacts"
SCREENSHOT="$ARTIFACTS/swagger.png"
CHROMIUM=/usr/bin/chromium
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
die() {
    echo "FAIL: $*" >&2
    exit 1
}

step "chromium"
if [[ ! -x $CHROMIUM ]]; then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "chromium is missing and installing it needs root"
        sudo=(sudo)
    fi
    echo "apt-get install chromium"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends chromium >/dev/null
fi
"$CHROMIUM" --version

step "playwright-core (npm ci into $NODE_DIR)"
command -v node >/dev/null || die "node is not installed"
lock_sum="$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)"
if [[ "$(cat "$NODE_DIR/.lock-sha256" 2>/dev/null)" != "$lock_sum" ]]; then
    mkdir -p "$NODE_DIR"
    cp tests/browser/package.json tests/browser/package-lock.json "$NODE_DIR/"
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --ignore-scripts --cache "$CACHE/npm")
    echo "$lock_sum" >"$NODE_DIR/.lock-sha256"
else
    echo "up to date"
fi

step "build kv-server and kv-gateway (debug)"
cargo build -p kv-server -p kv-gateway

step "start 3 servers and a gateway"
WORK="$(mktemp -d)"
LOGS="$ARTIFACTS/browser-logs"
rm -rf "$LOGS"
mkdir -p "$LOGS"
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
    if [[ $status -ne 0 ]]; then
        echo "---- logs of the local cluster ($LOGS)" >&2
        tail -n 20 "$LOGS"/*.log >&2 || true
    fi
    exit "$status"
}
trap cleanup EXIT

# Four free loopback ports, asked from the kernel.
read -r -a ports < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')
backends=()
for i in 1 2 3; do
    port="${ports[$i]}"
    "$BIN/kv-server" --listen "127.0.0.1:$port" --data-dir "$WORK/server-$i" \
        --node-name "server-$i" >"$LOGS/server-$i.log" 2>&1 &
    pids+=($!)
    backends+=(--backend "server-$i=http://127.0.0.1:$port")
done
GATEWAY="http://127.0.0.1:${ports[0]}"
"$BIN/kv-gateway" --listen "127.0.0.1:${ports[0]}" "${backends[@]}" \
    --health-interval-ms 500 >"$LOGS/gateway.log" 2>&1 &
pids+=($!)

deadline=$((SECONDS + 60))
until curl -fsS "$GATEWAY/ready" >/dev/null 2>&1; do
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "a process of the local cluster exited (logs: $LOGS)"
    done
    ((SECONDS < deadline)) || die "the gateway at $GATEWAY was not ready within 60s"
    sleep 0.5
done
echo "gateway ready at $GATEWAY (servers on ${ports[*]:1})"

step "Swagger UI at $GATEWAY/docs/ in headless chromium"
mkdir -p "$ARTIFACTS"
rm -f "$ARTIFACTS"/swagger*.png
GATEWAY_URL="$GATEWAY" SCREENSHOT="$SCREENSHOT" CHROMIUM="$CHROMIUM" \
    USER_DATA_DIR="$WORK/chromium-profile" NODE_PATH="$NODE_DIR/node_modules" \
    timeout 180 node tests/browser/swagger.cjs
[[ -s $SCREENSHOT ]] || die "no screenshot at $SCREENSHOT"

step "browser test passed; screenshots: target/ci-artifacts/swagger.png, swagger-try-it-out.png"
