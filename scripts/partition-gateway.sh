#!/usr/bin/env bash
# A silent partition between a gateway and its server, on one Linux machine, as root:
# the gateway in one network namespace, a router in another, the server in the root one.
# The router drops every packet between them for CUT seconds (blackhole routes: no ICMP,
# no reset, as a dead switch or a cut cable behaves), then forwards again. Prints when each
# end closed the link, and how long after the heal a GET through the gateway answered.
#
#   sudo scripts/partition-gateway.sh [CUT_SECONDS]     (default 150)
#
# Needs `ip` (iproute2), `curl` and `bc`, and release binaries (cargo build --release -p
# kv-server -p kv-gateway; or BIN=dir). Leaves nothing behind: the namespaces, the veth
# pairs and the processes go on exit. Not part of the test suite: it needs root.
# Results on the benchmark machine: docs/replication.md, "A partition between the gateway
# and a server".
set -euo pipefail
CUT="${1:-150}"
BIN="${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release}"
WORK=$(mktemp -d)
GW=kvpart-gw ROUTER=kvpart-r
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$GW" 2>/dev/null || true
    ip netns del "$ROUTER" 2>/dev/null || true
    ip link del kvpart-s1 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cleanup
mkdir -p "$WORK/data"
in_gw() { ip netns exec "$GW" "$@"; }
in_router() { ip netns exec "$ROUTER" "$@"; }

# gateway 10.77.0.2 -- 10.77.0.1 router 10.77.1.1 -- 10.77.1.2 server
ip netns add "$GW"
ip netns add "$ROUTER"
ip link add kvpart-g1 type veth peer name kvpart-g0
ip link set kvpart-g1 netns "$GW"
ip link set kvpart-g0 netns "$ROUTER"
ip link add kvpart-s1 type veth peer name kvpart-s0
ip link set kvpart-s0 netns "$ROUTER"
in_gw ip addr add 10.77.0.2/24 dev kvpart-g1
in_gw ip link set kvpart-g1 up
in_gw ip link set lo up
in_gw ip route add default via 10.77.0.1
in_router ip addr add 10.77.0.1/24 dev kvpart-g0
in_router ip link set kvpart-g0 up
in_router ip addr add 10.77.1.1/24 dev kvpart-s0
in_router ip link set kvpart-s0 up
in_router sysctl -q -w net.ipv4.ip_forward=1
ip addr add 10.77.1.2/24 dev kvpart-s1
ip link set kvpart-s1 up
ip route add 10.77.0.0/24 via 10.77.1.1

"$BIN/kv-server" --listen 10.77.1.2:18080 --data-dir "$WORK/data" --node-name s1 \
    > "$WORK/server.log" 2>&1 &
pids+=($!)
sleep 1
in_gw "$BIN/kv-gateway" --listen 10.77.0.2:18000 --backend s1=http://10.77.1.2:18080 \
    > "$WORK/gateway.log" 2>&1 &
pids+=($!)
sleep 2
in_gw curl -fsS -X PUT http://10.77.0.2:18000/put/a -d '{"value": 1}' >/dev/null

echo "cut for ${CUT}s at $(date +%T)"
in_router ip route add blackhole 10.77.1.2/32
in_router ip route add blackhole 10.77.0.2/32
sleep "$CUT"
in_router ip route del blackhole 10.77.1.2/32
in_router ip route del blackhole 10.77.0.2/32
healed=$(date +%s.%N)
echo "healed at $(date +%T)"
answered=""
for _ in $(seq 1 600); do
    code=$(in_gw curl -s -o /dev/null -w '%{http_code}' -m 2 http://10.77.0.2:18000/get/a || true)
    if [ "$code" = 200 ]; then
        answered=$(echo "$(date +%s.%N) - $healed" | bc)
        break
    fi
    sleep 0.5
done
echo "server:  $(grep -h 'gateway link closed' "$WORK/server.log" | head -1 | cut -c1-160)"
echo "gateway: $(grep -h 'link closed' "$WORK/gateway.log" | head -1 | cut -c1-160)"
if [ -n "$answered" ]; then
    echo "a GET through the gateway answered 200 ${answered}s after the heal"
else
    echo "no GET answered within 5 minutes of the heal" >&2
    exit 1
fi
