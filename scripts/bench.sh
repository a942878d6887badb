#!/usr/bin/env bash
# The benchmarks of docs/benchmarks.md: durable PUT and cached GET at 32 connections, against
# one kv-server, then through the gateway over 3 servers without and with replication. Release builds, everything on
# 127.0.0.1, the load generator (`kvstore bench`) on the same machine. Reports (table and
# JSON) go to target/bench/. Usage: scripts/bench.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

bench() { # name url read-ratio
    echo
    echo "== $1"
    "$BIN/kvstore" --url "$2" bench --connections 32 --duration "${DURATION}s" \
        --keys 1000 --value-size 100 --read-ratio "$3" 2>/dev/null | tee "$OUT/$1.txt"
    "$BIN/kvstore" --json --url "$2" bench --connections 32 --duration 2s \
        --keys 1000 --value-size 100 --read-ratio "$3" >"$OUT/$1.json" 2>/dev/null
}

cargo build --release -q -p kv-server -p kv-gateway -p kvstore
echo "machine: $(nproc) cores, $(uname -r); commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"

# One server; its cache holds every key, so GETs are cache hits.
"$BIN/kv-server" --listen 127.0.0.1:18180 --data-dir "$DATA/single" --cache-size 100000 \
    --log-level warn &
pids+=("$!")
wait_ready http://127.0.0.1:18180
bench server-put http://127.0.0.1:18180 0
bench server-get http://127.0.0.1:18180 1
kill -TERM "${pids[0]}"
wait "${pids[0]}" || true
pids=()

# Three servers and the gateway: first without replication (R = 1), then with every version
# on all three servers and a write quorum of two (R = 3, W = 2).
cluster() { # replication-factor tag
    local r="$1" tag="$2" backends=() peers="" port
    for i in 1 2 3; do peers+="${peers:+,}server-$i=http://127.0.0.1:1818$i"; done
    for i in 1 2 3; do
        port="1818$i"
        if [ "$r" = 1 ]; then
            "$BIN/kv-server" --listen "127.0.0.1:$port" --data-dir "$DATA/$tag-$i" \
                --node-name "server-$i" --cache-size 100000 --log-level warn &
        else
            "$BIN/kv-server" --listen "127.0.0.1:$port" --data-dir "$DATA/$tag-$i" \
                --node-name "server-$i" --cache-size 100000 --log-level warn \
                --peers "$peers" --replication-factor "$r" --write-quorum 2 &
        fi
        pids+=("$!")
        backends+=(--backend "server-$i=http://127.0.0.1:$port")
    done
    for i in 1 2 3; do wait_ready "http://127.0.0.1:1818$i"; done
    # A new replicated cluster serves once every server has seen its peers.
    if [ "$r" != 1 ]; then
        for i in 1 2 3; do
            until curl -fsS "http://127.0.0.1:1818$i/internal/status" | grep -q '"synced":true'; do
                sleep 0.1
            done
        done
    fi
    "$BIN/kv-gateway" --listen 127.0.0.1:18100 "${backends[@]}" --log-level warn \
        --replication-factor "$r" --write-quorum "$([ "$r" = 1 ] && echo 1 || echo 2)" &
    pids+=("$!")
    wait_ready http://127.0.0.1:18100
    bench "gateway-$tag-put" http://127.0.0.1:18100 0
    bench "gateway-$tag-get" http://127.0.0.1:18100 1
    bench "gateway-$tag-mixed" http://127.0.0.1:18100 0.5
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
}
cluster 1 r1
cluster 3 r3
echo
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg); reports in $OUT"
