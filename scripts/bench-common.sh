#!/usr/bin/env bash
# Shared by scripts/bench.sh, bench-floors.sh and bench-rebalance.sh (sourced from the
# repository root): where the release binaries and reports are, a scratch data directory,
# background processes stopped on exit, waiting for a service to be ready, and the commit a
# run measured.
# shellcheck disable=SC2034 # BIN and OUT are for the scripts that source this file
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
BIN="$TARGET/release"
OUT="$PWD/target/bench"
DATA=$(mktemp -d)
mkdir -p "$OUT"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

wait_ready() {
    for _ in $(seq 1 100); do
        curl -fsS "$1/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "FAIL: $1 never became ready" >&2
    exit 1
}

# The machine-wide CPU tick counters (the `cpu` line of /proc/stat, without its label):
# user nice system idle iowait irq softirq steal ...
cpu_ticks() {
    head -1 /proc/stat | cut -d' ' -f2- | tr -s ' ' | sed 's/^ //'
}

# What the host took from this VM between two `cpu_ticks`: a JSON object with the share of all
# ticks that were steal time (the VM's CPUs were ready to run and the host ran something else)
# and I/O wait. A run with steal time measured the neighbours too, so its report keeps it.
# Usage: host_share "BEFORE" "AFTER"
host_share() {
    python3 - "$1" "$2" <<'PY'
import json, sys
before, after = ([int(x) for x in a.split()] for a in sys.argv[1:3])
d = [b - a for a, b in zip(before, after)]
# guest and guest_nice (9th and 10th) are already counted in user and nice.
total = sum(d[:8]) or 1
print(json.dumps({"steal_pct": round(100 * d[7] / total, 1), "iowait_pct": round(100 * d[4] / total, 1)}))
PY
}

# The commit for a report's header; `-dirty` marks a run on uncommitted changes, whose numbers
# no commit reproduces.
commit_id() {
    git describe --always --dirty 2>/dev/null || echo none
}

# This VM's single-core speed now: seconds to SHA-256 300,000 blocks of 1 KB in Python,
# the median of three (lower is faster). The same binaries swing by a fifth and more from
# one quarter hour to the next here (docs/benchmarks.md), and this says which kind of spell
# a set of numbers came from.
cpu_check() {
    python3 - <<'PY'
import hashlib, statistics, time
def once():
    start = time.perf_counter()
    for _ in range(300_000):
        hashlib.sha256(b"x" * 1000).digest()
    return time.perf_counter() - start
print(f"{statistics.median(once() for _ in range(3)):.3f} s")
PY
}
