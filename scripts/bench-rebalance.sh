#!/usr/bin/env bash
# The rebalancing benchmark of docs/benchmarks.md: how long moving a cluster of 100k keys
# from 3 servers to 5 (then back to 3) takes, and how many requests failed meanwhile, under
# a steady mixed load. Release builds, everything on 127.0.0.1, R = 3, W = 2.
# Usage: scripts/bench-rebalance.sh [keys, default 100000] [connections, default 8]
# Logs of the servers and the gateway go to target/bench/rebalance-*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS="${1:-100000}"
CONNS="${2:-8}"
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

cargo build --release -q -p kv-server -p kv-gateway -p kvstore
sync # no writeback of the build under the measured fsyncs (see bench.sh)
echo "machine: $(nproc) cores; commit $(commit_id)"

# server-1..3 form the ring; server-4 and server-5 start as joiners (their --peers do not
# name them), owning nothing until the ring does.
peers="" members=() all=()
for i in 1 2 3; do peers+="${peers:+,}server-$i=http://127.0.0.1:1828$i"; done
for i in 1 2 3 4 5; do
    "$BIN/kv-server" --listen "127.0.0.1:1828$i" --data-dir "$DATA/server-$i" \
        --node-name "server-$i" --cache-size 10000 --log-level warn \
        --peers "$peers" --replication-factor 3 --write-quorum 2 \
        >"$OUT/rebalance-server-$i.log" 2>&1 &
    pids+=("$!")
    all+=(--member "server-$i=http://127.0.0.1:1828$i")
    [ "$i" -le 3 ] && members+=(--member "server-$i=http://127.0.0.1:1828$i")
done
for i in 1 2 3 4 5; do wait_ready "http://127.0.0.1:1828$i"; done
for i in 1 2 3; do
    until curl -fsS "http://127.0.0.1:1828$i/internal/status" | grep -q '"synced":true'; do
        sleep 0.1
    done
done
"$BIN/kv-gateway" --listen 127.0.0.1:18280 --replication-factor 3 --write-quorum 2 \
    --backend "server-1=http://127.0.0.1:18281" --backend "server-2=http://127.0.0.1:18282" \
    --backend "server-3=http://127.0.0.1:18283" --log-level warn >"$OUT/rebalance-gateway.log" 2>&1 &
pids+=("$!")
wait_ready http://127.0.0.1:18280
GW=http://127.0.0.1:18280

echo "loading $KEYS keys (one version each, 100-byte values)..."
start=$(date +%s%N)
"$BIN/kvstore" --json --url "$GW" bench --keys "$KEYS" --read-ratio 1 --warmup \
    --requests 1 --connections 32 --key-prefix k >/dev/null
echo "loaded in $(( ($(date +%s%N) - start) / 1000000 )) ms"

pulled() { # versions catch-up pulls stored, then those already held, over every server
    for i in 1 2 3 4 5; do curl -fsS "http://127.0.0.1:1828$i/metrics" || true; done |
        awk '/^kv_server_replication_pulled_versions_total/ {s += $NF}
             /^kv_server_replication_pulled_duplicates_total/ {d += $NF}
             END {printf "%d %d\n", s, d}'
}

move() { # tag, then the --member flags of the target
    local tag="$1"
    shift
    "$BIN/kvstore" --json --url "$GW" bench --keys "$KEYS" --read-ratio 0.8 --no-warmup \
        --duration 3600s --connections "$CONNS" --key-prefix k >"$OUT/rebalance-$tag-load.json" \
        2>/dev/null &
    local load=$!
    sleep 2
    local t0 t1 before after
    before=$(pulled)
    t0=$(date +%s%N)
    "$BIN/kvstore" ring apply "$@" --seed "server-4=http://127.0.0.1:18284" \
        --seed "server-5=http://127.0.0.1:18285" 2>&1 | tee "$OUT/rebalance-$tag.txt"
    t1=$(date +%s%N)
    after=$(pulled)
    # Includes what the load's own writes were pulled for (mostly duplicates of their pushes).
    echo "catch-up during the move: $(( ${after% *} - ${before% *} )) versions stored," \
        "$(( ${after#* } - ${before#* } )) received again (already held)"
    sleep 2
    kill -INT "$load"
    wait "$load" || true
    python3 - "$OUT/rebalance-$tag-load.json" "$(( (t1 - t0) / 1000000 ))" "$tag" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
total = report["total"]
errors = total["errors"]
print(f"== {sys.argv[3]}: moved in {int(sys.argv[2]) / 1000:.1f} s; load over "
      f"{report['elapsed_secs']:.1f} s: {total['requests']} requests, {total['ok']} ok, "
      f"{errors['total']} failed (by status {errors['status']}, timeouts {errors['timeout']}, "
      f"connect {errors['connect']}), {report['throughput']:.0f} req/s, "
      f"p99 {total['latency_us']['p99'] / 1000:.1f} ms")
PY
}

move grow-3-to-5 "${all[@]}"
for i in 1 2 3 4 5; do
    printf "server-%s holds " "$i"
    curl -fsS "http://127.0.0.1:1828$i/db/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_keys"], "keys")'
done
move shrink-5-to-3 "${members[@]}"
for i in 1 2 3; do
    printf "server-%s holds " "$i"
    curl -fsS "http://127.0.0.1:1828$i/db/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_keys"], "keys")'
done
