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

# The commit for a report's header; `-dirty` marks a run on uncommitted changes, whose numbers
# no commit reproduces.
commit_id() {
    git describe --always --dirty 2>/dev/null || echo none
}
