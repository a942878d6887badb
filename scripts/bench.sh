#!/usr/bin/env bash
# The benchmarks of docs/benchmarks.md: durable PUT and cached GET at 32 connections, against
# one kv-server, then through the gateway over 3 servers without and with replication (and,
# between those, durable PUT through the gateway over one server). Release builds, everything on
# 127.0.0.1, the load generator (`kvstore bench`) on the same machine. Reports (table and
# JSON) go to target/bench/; the summary (median of the runs of each case) to
# target/bench/summary.md. Each run also records the host's steal time and the I/O wait over
# it (CASE.runN.host.json, see cpu_ticks in scripts/bench-common.sh).
#
# Usage: scripts/bench.sh [seconds per run, default 10] [runs per case, default 3]
# BENCH_PIN=1 runs the gateway cases with the gateway on CPU 0 and the servers and the load
# generator on CPU 1 (taskset): on a 2-core VM that layout avoids most cross-CPU wake-ups
# (see docs/benchmarks.md); the single-server cases are never pinned.
# BENCH_GATEWAY_WORKERS=N runs the gateway cases with `kv-gateway --worker-threads N` (case
# names get `-gwN`): five processes share two cores here, and a gateway with one tokio worker
# spares them most of its cross-thread wake-ups (see docs/benchmarks.md).
# BENCH_TRANSPORT=http runs the gateway cases with `--backend-transport http` (case names get
# `-http`); the default is the pipelined link.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
RUNS="${2:-3}"
PIN="${BENCH_PIN:-0}"
TRANSPORT="${BENCH_TRANSPORT:-link}"
GATEWAY_WORKERS="${BENCH_GATEWAY_WORKERS:-}"
cases=()
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

# Runs a case RUNS times, keeping each run's JSON report and printing one line per run (the
# GET cases read the keys the PUT case before them wrote). Usage: bench name url read-ratio [cpu]
bench() {
    local name="$1" url="$2" ratio="$3" cpu="${4:-}" run pin=() before
    [ -n "$cpu" ] && pin=(taskset -c "$cpu")
    cases+=("$name")
    rm -f "$OUT/$name".run*.json
    checks+=("before $name: $(cpu_check)")
    echo
    echo "== $name (cpu check ${checks[-1]#*: })"
    for run in $(seq 1 "$RUNS"); do
        before=$(cpu_ticks)
        "${pin[@]}" "$BIN/kvstore" --json --url "$url" bench --connections 32 \
            --duration "${DURATION}s" --keys 1000 --value-size 100 --read-ratio "$ratio" \
            >"$OUT/$name.run$run.json" 2>/dev/null
        host_share "$before" "$(cpu_ticks)" >"$OUT/$name.run$run.host.json"
        echo "run $run: $(python3 scripts/bench-summary.py --run "$OUT/$name.run$run.json")"
    done
}

cargo build --release -q -p kv-server -p kv-gateway -p kvstore
# The build leaves hundreds of MB of dirty pages; their writeback would share the disk with
# the first case's fsyncs (it halved the durable PUT figure of a run started right after a
# build).
sync
echo "machine: $(nproc) cores, $(uname -r); commit $(commit_id)"
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
checks=("before the run: $(cpu_check)")
echo "cpu check ${checks[0]}"

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
# on all three servers and a write quorum of two (R = 3, W = 2). In between, durable PUT
# through the gateway with one server behind it: not a target, but it tells the gateway's own
# limit from what three servers committing on one VM's disk and two cores cost
# (docs/benchmarks.md, "Three servers on one disk").
cluster() { # replication-factor tag [servers, default 3] [cases, default "put get mixed"]
    local r="$1" tag="$2" n="${3:-3}" kinds="${4:-put get mixed}" backends=() peers="" port srv=() gw=() lg="" workers=() i kind
    if [ "$PIN" = 1 ]; then
        srv=(taskset -c 1) gw=(taskset -c 0) lg=1 tag="$tag-pinned"
    fi
    if [ -n "$GATEWAY_WORKERS" ]; then
        workers=(--worker-threads "$GATEWAY_WORKERS") tag="$tag-gw$GATEWAY_WORKERS"
    fi
    for i in $(seq 1 "$n"); do peers+="${peers:+,}server-$i=http://127.0.0.1:1818$i"; done
    for i in $(seq 1 "$n"); do
        port="1818$i"
        if [ "$r" = 1 ]; then
            "${srv[@]}" "$BIN/kv-server" --listen "127.0.0.1:$port" --data-dir "$DATA/$tag-$i" \
                --node-name "server-$i" --cache-size 100000 --log-level warn &
        else
            "${srv[@]}" "$BIN/kv-server" --listen "127.0.0.1:$port" --data-dir "$DATA/$tag-$i" \
                --node-name "server-$i" --cache-size 100000 --log-level warn \
                --peers "$peers" --replication-factor "$r" --write-quorum 2 &
        fi
        pids+=("$!")
        backends+=(--backend "server-$i=http://127.0.0.1:$port")
    done
    for i in $(seq 1 "$n"); do wait_ready "http://127.0.0.1:1818$i"; done
    # A new replicated cluster serves once every server has seen its peers.
    if [ "$r" != 1 ]; then
        for i in $(seq 1 "$n"); do
            until curl -fsS "http://127.0.0.1:1818$i/internal/status" | grep -q '"synced":true'; do
                sleep 0.1
            done
        done
    fi
    [ "$TRANSPORT" = link ] || tag="$tag-$TRANSPORT"
    "${gw[@]}" "$BIN/kv-gateway" --listen 127.0.0.1:18100 "${backends[@]}" --log-level warn "${workers[@]}" \
        --backend-transport "$TRANSPORT" \
        --replication-factor "$r" --write-quorum "$([ "$r" = 1 ] && echo 1 || echo 2)" &
    pids+=("$!")
    wait_ready http://127.0.0.1:18100
    for kind in $kinds; do
        case "$kind" in
            put) bench "gateway-$tag-put" http://127.0.0.1:18100 0 "$lg" ;;
            get) bench "gateway-$tag-get" http://127.0.0.1:18100 1 "$lg" ;;
            mixed) bench "gateway-$tag-mixed" http://127.0.0.1:18100 0.5 "$lg" ;;
        esac
    done
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
}
cluster 1 r1
cluster 1 r1-1server 1 put
cluster 3 r3
checks+=("after the run: $(cpu_check)")
echo "cpu check ${checks[-1]}"
echo
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg); reports in $OUT"
echo
{
    python3 scripts/bench-summary.py "$OUT" "${cases[@]}"
    echo
    echo "CPU check (seconds to SHA-256 300,000 blocks of 1 KB in Python, median of 3; lower is"
    echo "faster; see cpu_check in scripts/bench-common.sh):"
    for check in "${checks[@]}"; do echo "- $check"; done
} | tee "$OUT/summary.md"
