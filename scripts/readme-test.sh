#!/usr/bin/env bash
# Runs every command the README shows, so the README cannot drift from the code.
#
# Each ```bash block of README.md runs in order, in one bash with `set -euo pipefail`, from
# the repository root. A comment line just before a block changes that:
#   <!-- readme: background URL -->  run the block in the background, wait until URL answers
#   <!-- readme: stop-background --> stop the background blocks first
#   <!-- readme: skip (why) -->       do not run it
# Then it checks that every flag of kv-server, kv-gateway, kv-operator and `kvstore up` is
# documented in the README (the configuration reference is tested against the code).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

if [[ -e data ]]; then
    echo "readme-test: ./data exists; the README's commands write and clean it. Move it away first." >&2
    exit 2
fi
work=$(mktemp -d)
pids=()
stop_background() {
    for pid in "${pids[@]}"; do
        # Each background block runs in its own process group: stop it whole (cargo and child).
        kill -INT -- "-$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    pids=()
}
cleanup() {
    stop_background
    rm -rf "$work" "$ROOT/data"
}
trap cleanup EXIT

python3 - "$work" <<'PY'
import pathlib, re, sys
work = pathlib.Path(sys.argv[1])
text = pathlib.Path("README.md").read_text()
pattern = re.compile(r"(?:<!-- readme: (?P<mark>[^>]*?) -->\n)?```bash\n(?P<body>.*?)```", re.S)
for i, m in enumerate(pattern.finditer(text)):
    mark = (m.group("mark") or "run").strip()
    (work / f"{i:03d}.sh").write_text(m.group("body"))
    (work / f"{i:03d}.mark").write_text(mark)
PY

count=0
for block in "$work"/*.sh; do
    mark=$(cat "${block%.sh}.mark")
    count=$((count + 1))
    echo "== README block $count ($mark)"
    sed 's/^/   | /' "$block"
    case "$mark" in
    skip*) echo "   skipped" ;;
    stop-background)
        stop_background
        bash -euo pipefail "$block"
        ;;
    background\ *)
        url=${mark#background }
        setsid bash -euo pipefail "$block" >"$block.log" 2>&1 &
        pids+=("$!")
        # The first block builds in release mode: allow a cold build.
        for _ in $(seq 1 1800); do
            if curl -fsS "$url" >/dev/null 2>&1; then break; fi
            if ! kill -0 "${pids[-1]}" 2>/dev/null; then
                cat "$block.log"
                echo "FAIL: background block exited before $url answered" >&2
                exit 1
            fi
            sleep 1
        done
        curl -fsS "$url" >/dev/null || {
            cat "$block.log"
            echo "FAIL: $url never answered" >&2
            exit 1
        }
        echo "   running in the background; $url answers"
        ;;
    run) bash -euo pipefail "$block" ;;
    *)
        echo "FAIL: unknown readme mark '$mark'" >&2
        exit 1
        ;;
    esac
done
stop_background

echo "== every flag is documented"
target="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build -q -p kv-server -p kv-gateway -p kv-operator -p kvstore
missing=0
for cmd in "kv-server" "kv-gateway" "kv-operator" "kvstore up"; do
    # shellcheck disable=SC2086 # "kvstore up" is a binary and its subcommand
    flags=$("$target"/debug/$cmd --help | grep -oE '^ +(-[a-zA-Z], )?--[a-z0-9-]+' | grep -oE -- '--[a-z0-9-]+' | sort -u)
    for flag in $flags; do
        case "$flag" in --help | --version | --url | --json) continue ;; esac
        if ! grep -qF -- "$flag" README.md; then
            echo "   $cmd $flag is not in the README"
            missing=1
        fi
    done
done
[[ $missing == 0 ]] || {
    echo "FAIL: undocumented flags" >&2
    exit 1
}
echo "README: $count blocks run, every flag documented"
