#!/usr/bin/env bash
# A three-machine zcluster on one host: a hub and two workers, each in its own
# network namespace, talking over a private 10.77.0.0/24 network that exists
# only inside namespaces this script creates (no interface, route or firewall
# rule of the host's own namespace is touched):
#
#   ns zc$$-hub  10.77.0.1 ─┐
#   ns zc$$-w1   10.77.0.2 ─┼─ bridge br0 in ns zc$$-sw
#   ns zc$$-w2   10.77.0.3 ─┘
#
# It runs `zcluster hub --ip 10.77.0.1` in the hub namespace, one
# `zcluster worker` in each worker namespace, and `zcluster map --hub` over 200
# inputs from the hub namespace; it checks the results are exactly the inputs
# in order and that both engines did work, then tears everything down.
#
# Usage: sudo scripts/netns-cluster.sh
#   ZCLUSTER=/path/to/zcluster   binary to use (default: cargo build --release)
# Without the privileges to create namespaces it prints one `SKIP:` line and
# exits 0.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/procs.sh"

skip() {
    echo "SKIP: $*"
    exit 0
}

command -v ip >/dev/null 2>&1 || skip "the ip command (iproute2) is not installed"
[ "$(id -u)" -eq 0 ] || skip "creating network namespaces needs root (run with sudo)"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX="zc$$"
NS_SW="$PREFIX-sw"
NS_HUB="$PREFIX-hub"
NS_W1="$PREFIX-w1"
NS_W2="$PREFIX-w2"
HUB_IP=10.77.0.1
N=200
created=()
pids=()
tmp=

cleanup() {
    stop_pids 50 "${pids[@]}"
    for ns in "${created[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
        ip netns del "$ns" >/dev/null 2>&1 || true
    done
    if [ -n "$tmp" ]; then
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

# The first namespace tells whether we may create them at all.
if ! err=$(ip netns add "$NS_SW" 2>&1); then
    skip "cannot create network namespaces: ${err%%$'\n'*}"
fi
created+=("$NS_SW")
for ns in "$NS_HUB" "$NS_W1" "$NS_W2"; do
    ip netns add "$ns"
    created+=("$ns")
done

if [ -n "${ZCLUSTER:-}" ]; then
    Z=$ZCLUSTER
else
    (cd "$ROOT" && cargo build --release --quiet -p zcluster-cli)
    Z=$ROOT/target/release/zcluster
fi
Z=$(realpath "$Z")
[ -x "$Z" ] || { echo "error: $Z is not an executable" >&2; exit 1; }

# The private network: a bridge in its own namespace, one veth pair per node
# created directly across namespaces (never in the host's).
ip -n "$NS_SW" link set lo up
ip -n "$NS_SW" link add br0 type bridge
ip -n "$NS_SW" link set br0 up
n=1
for ns in "$NS_HUB" "$NS_W1" "$NS_W2"; do
    port="p$n"
    ip -n "$NS_SW" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$NS_SW" link set "$port" master br0
    ip -n "$NS_SW" link set "$port" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "10.77.0.$n/24" dev eth0
    ip -n "$ns" link set eth0 up
    n=$((n + 1))
done

tmp=$(mktemp -d)
chmod 700 "$tmp"
conn=$tmp/hub.json
in_ns() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}
status_json() {
    in_ns "$NS_HUB" "$Z" status --hub "$conn" --json 2>/dev/null
}
# wait_for WHAT CMD...: polls CMD every 0.1 s for up to 30 s.
wait_for() {
    local what=$1 i
    shift
    for ((i = 0; i < 300; i++)); do
        if "$@"; then
            return 0
        fi
        sleep 0.1
    done
    echo "error: timed out waiting for $what" >&2
    for log in "$tmp"/*.log; do
        echo "--- $log" >&2
        cat "$log" >&2
    done
    exit 1
}
hub_answers() {
    [ -e "$conn" ] && status_json >/dev/null
}
engines() {
    status_json | grep -c '"slots"' || true
}
two_engines() {
    [ "$(engines)" -eq 2 ]
}

# Run directly (not through in_ns): `ip netns exec` execs zcluster, so $! is
# zcluster itself and cleanup can signal and reap it.
ip netns exec "$NS_HUB" "$Z" hub --connection-file "$conn" --store "$tmp/hub.sqlite" \
    --ip "$HUB_IP" --heartbeat-ms 500 2>"$tmp/hub.log" &
pids+=("$!")
wait_for "the hub in $NS_HUB to answer" hub_answers
grep -q "tcp://$HUB_IP:" "$conn" || { echo "error: the hub is not on $HUB_IP: $(cat "$conn")" >&2; exit 1; }

ip netns exec "$NS_W1" "$Z" worker --hub "$conn" -j 2 2>"$tmp/w1.log" &
pids+=("$!")
ip netns exec "$NS_W2" "$Z" worker --hub "$conn" -j 2 2>"$tmp/w2.log" &
pids+=("$!")
wait_for "both workers to register across namespaces" two_engines

seq -f 'in%g' 1 "$N" >"$tmp/inputs"
if ! timeout 120 ip netns exec "$NS_HUB" "$Z" map --hub "$conn" --no-progress \
    "$tmp/inputs" -- echo >"$tmp/out" 2>"$tmp/map.log"; then
    echo "error: map failed:" >&2
    cat "$tmp/map.log" "$tmp/hub.log" >&2
    exit 1
fi
if ! cmp -s "$tmp/inputs" "$tmp/out"; then
    echo "error: results are not the $N inputs in order:" >&2
    diff "$tmp/inputs" "$tmp/out" | head -20 >&2
    exit 1
fi

# Engines' completed counts, one per line (only engines have "completed").
completed=$(status_json | awk -F: '/"completed"/ { gsub(/[ ,]/, "", $2); print $2 }')
counts=$(echo "$completed" | paste -sd ' ')
total=0
busy=0
for c in $completed; do
    total=$((total + c))
    if [ "$c" -gt 0 ]; then
        busy=$((busy + 1))
    fi
done
if [ "$busy" -ne 2 ] || [ "$total" -ne "$N" ]; then
    echo "error: expected both engines to share $N tasks, completed counts: $counts" >&2
    exit 1
fi
echo "OK: $N results in order over 10.77.0.0/24 (hub $HUB_IP, workers 10.77.0.2 and 10.77.0.3); tasks per engine: $counts"
