#!/usr/bin/env bash
# What a proxy costs on this machine, for reading the gateway's figures (docs/benchmarks.md,
# "The floors under the gateway"): one kv-server, reached four ways in alternating rounds,
# the same load each time (`kvstore bench`, 32 connections, 1000 keys, 100-byte values):
#   direct   the server itself;
#   byte     gateway/examples/byte_pipe.rs, a proxy that only copies bytes (the socket calls
#            and wake-ups any proxy pays, nothing else);
#   hyper    gateway/examples/hyper_pipe.rs, an HTTP proxy of the gateway's parts (hyper's
#            server and pooled client) with no work of its own;
#   gateway  kv-gateway with this one server as its only member, over the pipelined link
#            (its default `--backend-transport link`);
#   gateway-http  the same with `--backend-transport http`, one HTTP exchange per request.
# Rounds alternate the five so that a slow minute of the VM hits all of them alike.
# Reports go to target/bench/floors-*.json; the summary to target/bench/floors.md.
#
# Usage: scripts/bench-floors.sh [seconds per run, default 8] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-8}"
ROUNDS="${2:-3}"
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

cargo build --release -q -p kv-server -p kv-gateway -p kvstore
cargo build --release -q -p kv-gateway --example byte_pipe --example hyper_pipe
sync
echo "machine: $(nproc) cores, $(uname -r); commit $(commit_id)"

"$BIN/kv-server" --listen 127.0.0.1:18180 --data-dir "$DATA/floors" --node-name server-1 \
    --cache-size 100000 --log-level warn &
pids+=("$!")
wait_ready http://127.0.0.1:18180
"$BIN/examples/byte_pipe" 127.0.0.1:18190 127.0.0.1:18180 &
pids+=("$!")
"$BIN/examples/hyper_pipe" 127.0.0.1:18191 http://127.0.0.1:18180 &
pids+=("$!")
"$BIN/kv-gateway" --listen 127.0.0.1:18100 --backend server-1=http://127.0.0.1:18180 \
    --log-level warn &
pids+=("$!")
"$BIN/kv-gateway" --listen 127.0.0.1:18101 --backend server-1=http://127.0.0.1:18180 \
    --backend-transport http --log-level warn &
pids+=("$!")
for port in 18190 18191 18100 18101; do wait_ready "http://127.0.0.1:$port"; done

targets=(direct:18180 byte:18190 hyper:18191 gateway:18100 gateway-http:18101)
cases=()
for op in put get; do
    ratio=$([ "$op" = get ] && echo 1 || echo 0)
    for target in "${targets[@]}"; do
        cases+=("floors-${target%%:*}-$op")
        rm -f "$OUT/floors-${target%%:*}-$op".run*.json
    done
    for round in $(seq 1 "$ROUNDS"); do
        echo
        echo "== $op, round $round"
        for target in "${targets[@]}"; do
            name="floors-${target%%:*}-$op"
            "$BIN/kvstore" --json --url "http://127.0.0.1:${target##*:}" bench --connections 32 \
                --duration "${DURATION}s" --keys 1000 --value-size 100 --read-ratio "$ratio" \
                >"$OUT/$name.run$round.json" 2>/dev/null
            echo "${target%%:*}: $(python3 scripts/bench-summary.py --run "$OUT/$name.run$round.json")"
        done
    done
done
echo
python3 scripts/bench-summary.py "$OUT" "${cases[@]}" | tee "$OUT/floors.md"
