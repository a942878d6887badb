#!/usr/bin/env bash
# What a request through the gateway costs each process, in CPU (docs/benchmarks.md, "Three
# servers on one disk"): the gateway (one tokio worker, as `BENCH_GATEWAY_WORKERS=1`) in front
# of one server and in front of three, in alternating rounds, the same load each time
# (`kvstore bench`, 32 connections unless BENCH_CONNECTIONS says otherwise, 1000 keys,
# 100-byte values). For each run: throughput;
# CPU time (user + system, from /proc/PID/stat) per request of the servers together, the
# gateway and the load generator, over the middle of the run (requests there counted at the
# run's mean throughput); and the servers' puts per commit and commit time (their /metrics),
# which is what changes between one and three; and the steal time over the window (the
# share of CPU ticks the host gave to other guests: a run with steal measured them too).
# Rounds alternate the two so that a slow minute of the VM hits both alike.
# The table goes to target/bench/cost.md.
#
# Usage: scripts/bench-cost.sh [seconds per run, default 8] [rounds, default 3]
# BENCH_READ_RATIO=1 measures cached GETs instead of durable PUTs (default 0).
# BENCH_CONNECTIONS=N sets the load generator's connections (default 32, the targets'):
# more clients in flight per server make bigger commits, which is what three servers lack.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-8}"
ROUNDS="${2:-3}"
RATIO="${BENCH_READ_RATIO:-0}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
# CPU is counted over this many seconds, starting 2 s into each run (after the load
# generator's connections are up, before its last second).
WINDOW=$((DURATION > 4 ? DURATION - 3 : 1))
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

cargo build --release -q -p kv-server -p kv-gateway -p kvstore
sync
echo "machine: $(nproc) cores, $(uname -r); commit $(commit_id)"
TICKS=$(getconf CLK_TCK)

# CPU ticks (user + system) a process has used so far.
ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat"
}

# "servers gateway load-generator now": the CPU ticks of each (the servers summed) and the
# clock. Usage: sample gateway-pid load-generator-pid server-pid...
sample() {
    local gw="$1" lg="$2" total=0 pid
    shift 2
    for pid in "$@"; do total=$((total + $(ticks "$pid"))); done
    echo "$total $(ticks "$gw") $(ticks "$lg") $(date +%s.%N)"
}

# The servers' commits, puts committed and seconds spent committing, summed over their
# /metrics: "commits puts seconds". Usage: commit_stats port...
commit_stats() {
    local port
    for port in "$@"; do curl -fsS "http://127.0.0.1:$port/metrics"; done | awk '
        $1 == "kv_server_write_batch_size_count" { c += $2 }
        $1 == "kv_server_write_batch_size_sum" { p += $2 }
        $1 == "kv_server_sqlite_commit_seconds_sum" { s += $2 }
        END { print c + 0, p + 0, s + 0 }'
}

HEADER="| Round | Servers | Throughput | Servers' CPU per request | Gateway | Load generator | Puts per commit | Commit (wall) | Errors | Steal |"
rows=()
# One run with N servers behind the gateway. Usage: run servers round
run() {
    local n="$1" round="$2" ports=() backends=() srv=() i gw lg before after
    for i in $(seq 1 "$n"); do
        ports+=("1828$i")
        "$BIN/kv-server" --listen "127.0.0.1:1828$i" --data-dir "$DATA/r$round-n$n-$i" \
            --node-name "server-$i" --cache-size 100000 --log-level warn &
        srv+=("$!")
        pids+=("$!")
        backends+=(--backend "server-$i=http://127.0.0.1:1828$i")
    done
    for i in $(seq 1 "$n"); do wait_ready "http://127.0.0.1:1828$i"; done
    "$BIN/kv-gateway" --listen 127.0.0.1:18200 "${backends[@]}" --log-level warn \
        --worker-threads 1 &
    gw=$!
    pids+=("$gw")
    wait_ready http://127.0.0.1:18200
    if [ "$RATIO" != 0 ]; then
        # GETs read keys that exist: write each once first.
        "$BIN/kvstore" --url http://127.0.0.1:18200 bench --connections "$CONNECTIONS" --duration 2s \
            --keys 1000 --value-size 100 --read-ratio 0 >/dev/null 2>&1
    fi
    "$BIN/kvstore" --json --url http://127.0.0.1:18200 bench --connections "$CONNECTIONS" \
        --duration "${DURATION}s" --keys 1000 --value-size 100 --read-ratio "$RATIO" \
        >"$OUT/cost-r$round-n$n.json" 2>/dev/null &
    lg=$!
    sleep 2
    # CPU first, with the clock, so that the window is what the CPU was counted over.
    local b_srv b_gw b_lg a_srv a_gw a_lg b_stats a_stats b_host host
    read -r b_srv b_gw b_lg before < <(sample "$gw" "$lg" "${srv[@]}")
    b_stats=$(commit_stats "${ports[@]}")
    b_host=$(cpu_ticks)
    sleep "$WINDOW"
    read -r a_srv a_gw a_lg after < <(sample "$gw" "$lg" "${srv[@]}")
    a_stats=$(commit_stats "${ports[@]}")
    host=$(host_share "$b_host" "$(cpu_ticks)")
    wait "$lg"
    # Requests in the window: the run's throughput over it (the window leaves out the
    # start and the end of the run).
    rows+=("$(python3 - "$OUT/cost-r$round-n$n.json" <<PY
import json, sys
r = json.load(open(sys.argv[1]))
requests = r["throughput"] * ($after - $before)
ticks = $TICKS
b_commits, b_puts, b_secs = (float(x) for x in "$b_stats".split())
a_commits, a_puts, a_secs = (float(x) for x in "$a_stats".split())
commits = a_commits - b_commits
per = lambda t: f"{t / ticks / requests * 1e6:.1f} µs"
batch = f"{(a_puts - b_puts) / commits:.1f}" if commits else "–"
commit = f"{(a_secs - b_secs) / commits * 1e3:.2f} ms" if commits else "–"
errors = r["total"]["errors"]["total"]
steal = json.loads('$host')["steal_pct"]
print(f"| $round | $n | {r['throughput']:,.0f} /s | {per($a_srv - $b_srv)} | {per($a_gw - $b_gw)} "
      f"| {per($a_lg - $b_lg)} | {batch} | {commit} | {errors} | {steal:.0f} % |")
PY
)")
    echo "${rows[-1]}"
    kill -TERM "$gw" "${srv[@]}" 2>/dev/null || true
    wait "$gw" "${srv[@]}" 2>/dev/null || true
    pids=()
}

echo "$HEADER"
for round in $(seq 1 "$ROUNDS"); do
    run 1 "$round"
    run 3 "$round"
done
{
    echo "Gateway (one worker) in front of one server and of three; read ratio $RATIO,"
    echo "$CONNECTIONS connections;"
    echo "${DURATION} s runs, CPU over ${WINDOW} s of each; commit $(commit_id)."
    echo
    echo "$HEADER"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for row in "${rows[@]}"; do echo "$row"; done
} >"$OUT/cost.md"
echo "table in $OUT/cost.md"
