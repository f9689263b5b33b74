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
# It runs `zcluster hub --ip 10.77.0.1` in the hub namespace and one
# `zcluster worker` in each worker namespace, then two phases of
# `zcluster map --hub` from the hub namespace:
#
#  1. 200 quick inputs: the results are exactly the inputs in order and both
#     engines did work.
#  2. w1's machine vanishes: mid-way through 100 inputs of 0.2 s each, w1's
#     bridge port is detached from the bridge, so no frame crosses in either
#     direction (no FIN, no RST) while the w1 worker process runs on. The hub
#     must declare that engine dead from missed heartbeats alone, the tasks
#     it held must run again on w2, and the map must still give each input
#     exactly once, in order. Then the port is attached again: w1 registers
#     again and gets work.
#
# Then it tears everything down.
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
map_pid=
tmp=
# Plain logs, to grep.
export NO_COLOR=1

cleanup() {
    if [ -n "$map_pid" ]; then
        stop_pids 10 "$map_pid"
    fi
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
# dump_logs: every log so far, on stderr.
dump_logs() {
    for log in "$tmp"/*.log; do
        echo "--- $log" >&2
        cat "$log" >&2
    done
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
    dump_logs
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
# zcluster itself and cleanup can signal and reap it. No speculation: in
# phase 2 it would start second copies of the vanished worker's tasks once
# the queue ran dry, and finish the job even if the hub never declared it
# dead; without it, only the death path can.
ip netns exec "$NS_HUB" "$Z" hub --connection-file "$conn" --store "$tmp/hub.sqlite" \
    --ip "$HUB_IP" --heartbeat-ms 500 --no-speculation 2>"$tmp/hub.log" &
pids+=("$!")
wait_for "the hub in $NS_HUB to answer" hub_answers
grep -q "tcp://$HUB_IP:" "$conn" || { echo "error: the hub is not on $HUB_IP: $(cat "$conn")" >&2; exit 1; }

ip netns exec "$NS_W1" "$Z" worker --hub "$conn" -j 2 2>"$tmp/w1.log" &
w1_pid=$!
pids+=("$w1_pid")
ip netns exec "$NS_W2" "$Z" worker --hub "$conn" -j 2 2>"$tmp/w2.log" &
w2_pid=$!
pids+=("$w2_pid")
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
echo "OK: phase 1: $N results in order over 10.77.0.0/24 (hub $HUB_IP, workers 10.77.0.2 and 10.77.0.3); tasks per engine: $counts"

# ----- Phase 2: w1's machine vanishes mid-job --------------------------------
# README, "When things break": a worker whose machine vanishes without a FIN
# misses its heartbeats, is declared dead, and its tasks run elsewhere; each
# input still yields exactly one result. Detaching w1's port from the bridge is
# such a vanishing: no frame crosses in either direction, so no FIN or RST can
# reach the hub (nor can the hub's packets make w1's kernel answer with one),
# w1's own link stays up and its worker process runs on. The hub can only learn
# it from the heartbeats that stop (--heartbeat-ms 500, 3 misses: 1.5 s).
W1_PORT=p2 # the bridge port of 10.77.0.2 (ports are numbered as addresses)
M=100
TASK_SECS=0.2

now() {
    echo "${EPOCHREALTIME/,/.}"
}
# since T: seconds from time T (a now) to now, to a tenth.
since() {
    awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'
}
# engine_of PID: the id of the registered engine whose process is PID (none
# printed when no engine is); status --json gives an engine's "id" before its
# "pid", and only engines have a "pid".
engine_of() {
    status_json | awk -F: -v pid="$1" '
        /"id"/ { v = $2; gsub(/[ ,]/, "", v); id = v }
        /"pid"/ { v = $2; gsub(/[ ,]/, "", v); if (v == pid) print id }'
}
# engine_field PID FIELD: FIELD (slots, running or completed: the fields after
# "pid") of the engine whose process is PID.
engine_field() {
    status_json | awk -F: -v pid="$1" -v key="\"$2\"" '
        /"pid"/ { v = $2; gsub(/[ ,]/, "", v); mine = (v == pid) }
        mine && $1 ~ key { v = $2; gsub(/[ ,]/, "", v); print v; mine = 0 }'
}
fail() {
    echo "error: phase 2: $*" >&2
    dump_logs
    exit 1
}
# slow_map FILE INPUTS: starts a map over INPUTS in the hub namespace, each
# task sleeping TASK_SECS then echoing its input, results to FILE.out, stderr
# to FILE.log; sets map_pid.
slow_map() {
    local out=$1 inputs=$2
    timeout 120 ip netns exec "$NS_HUB" "$Z" map --hub "$conn" --no-progress \
        --shell "$inputs" -- "sleep $TASK_SECS; echo {}" >"$out.out" 2>"$out.log" &
    map_pid=$!
}
# finish_map WHAT FILE INPUTS: waits for the map, checks it succeeded and that
# FILE.out is exactly INPUTS, each once, in order.
finish_map() {
    local what=$1 out=$2 inputs=$3 rc=0
    wait "$map_pid" || rc=$?
    map_pid=
    [ "$rc" -eq 0 ] || fail "$what: map exited with $rc"
    if ! cmp -s "$inputs" "$out.out"; then
        diff "$inputs" "$out.out" | head -20 >&2
        fail "$what: the results are not the inputs, each once, in order"
    fi
}
# job_id FILE: the job id `zcluster map --hub` printed in FILE.log.
job_id() {
    sed -n 's/^zcluster: job \([0-9][0-9]*\) on .*/\1/p' "$1.log"
}
# w1_cut_in: whether both engines have done a few of this job's tasks (so
# both are busy with it) while most of the job is still to run.
w1_cut_in() {
    local c1 c2
    c1=$(engine_field "$w1_pid" completed)
    c2=$(engine_field "$w2_pid" completed)
    [ -n "$c1" ] && [ -n "$c2" ] && [ "$c1" -ge $((w1_base + 10)) ] && [ "$c2" -ge $((w2_base + 10)) ]
}
w1_gone() {
    [ -z "$(engine_of "$w1_pid")" ]
}

w1_engine=$(engine_of "$w1_pid")
w2_engine=$(engine_of "$w2_pid")
if [ -z "$w1_engine" ] || [ -z "$w2_engine" ]; then
    fail "no engine for worker pid $w1_pid or $w2_pid"
fi
w1_slots=$(engine_field "$w1_pid" slots)
w1_base=$(engine_field "$w1_pid" completed)
w2_base=$(engine_field "$w2_pid" completed)

seq -f 'slow%g' 1 "$M" >"$tmp/slow_inputs"
started=$(now)
slow_map "$tmp/vanish" "$tmp/slow_inputs"
wait_for "both engines to be busy with the phase 2 job" w1_cut_in
# w1's machine vanishes: its port leaves the bridge (it stays up, as does
# w1's eth0 at the other end).
ip -n "$NS_SW" link set "$W1_PORT" nomaster
cut_at=$(since "$started")
cut=$(now)
# What the hub holds on w1 at the cut, running there or queued there (with a
# backlog the hub gives an engine twice its slots): nothing w1 sends can
# arrive any more, so this no longer changes until the hub declares it dead.
sleep 0.3
held=$(engine_field "$w1_pid" running)
[ -n "$held" ] || fail "the hub dropped engine $w1_engine within 0.3 s of the cut"
[ "$held" -gt 0 ] || fail "w1 held no task when its link was cut"
wait_for "the hub to declare w1's engine $w1_engine dead" w1_gone
detected_after=$(since "$cut")
finish_map "the job over a vanished worker" "$tmp/vanish" "$tmp/slow_inputs"
job_secs=$(since "$started")

kill -0 "$w1_pid" 2>/dev/null || fail "the w1 worker process died: only its link was to"
deaths=$(grep -c "engine declared dead" "$tmp/hub.log" || true)
[ "$deaths" -eq 1 ] || fail "expected one engine declared dead in the hub's log, found $deaths"
grep "engine declared dead" "$tmp/hub.log" | grep -q "engine=$w1_engine " \
    || fail "the engine declared dead is not w1's ($w1_engine)"

# Per task: its final engine and attempts. Every task w1 held at the cut,
# running or queued, started again on w2 (attempts 2), and no other did.
job=$(job_id "$tmp/vanish")
[ -n "$job" ] || fail "map printed no job id"
in_ns "$NS_HUB" "$Z" results "$job" --hub "$conn" --status-only >"$tmp/tasks" 2>"$tmp/results.log" \
    || fail "zcluster results $job --status-only: $(cat "$tmp/tasks")"
# Columns (aligned by spaces): INPUT STATE ENGINE ATTEMPTS STARTED TIME ERROR.
read -r tasks ok on_w1 again again_on_w2 < <(awk -v w1="$w1_engine" -v w2="$w2_engine" '
    NR > 1 {
        tasks++
        ok += ($2 == "ok")
        on_w1 += ($3 == w1)
        if ($4 > 1) { again++; again_on_w2 += ($3 == w2) }
    }
    END { print tasks + 0, ok + 0, on_w1 + 0, again + 0, again_on_w2 + 0 }' "$tmp/tasks")
if [ "$tasks" -ne "$M" ] || [ "$ok" -ne "$M" ]; then
    fail "expected $M tasks ok, got $ok of $tasks"
fi
[ "$on_w1" -gt 0 ] || fail "w1 finished none of the job's tasks before the cut"
if [ "$again" -ne "$held" ] || [ "$again_on_w2" -ne "$held" ]; then
    fail "w1 held $held tasks at the cut; $again ran more than once, $again_on_w2 of them last on w2"
fi
echo "OK: phase 2: w1's link cut ${cut_at} s into a job of $M x ${TASK_SECS} s tasks, holding $held" \
    "(running or queued there, $w1_slots slots);" \
    "engine $w1_engine declared dead ${detected_after} s later (heartbeat 0.5 s, 3 misses);" \
    "its $held tasks ran again on w2 (engine $w2_engine); $M results in order, each once, in ${job_secs} s;" \
    "w1 finished $on_w1 before the cut; its worker process is still running"

# The machine comes back: w1's worker, which has been trying to reconnect,
# registers again and takes work.
ip -n "$NS_SW" link set "$W1_PORT" master br0
back=$(now)
wait_for "w1 to register again once its link is back" two_engines
back_after=$(since "$back")
w1_again=$(engine_of "$w1_pid")
if [ -z "$w1_again" ] || [ "$w1_again" = "$w1_engine" ]; then
    fail "w1 is not registered as a new engine (was $w1_engine, now '${w1_again}')"
fi
seq -f 'back%g' 1 8 >"$tmp/back_inputs"
slow_map "$tmp/back" "$tmp/back_inputs"
finish_map "the job after w1 came back" "$tmp/back" "$tmp/back_inputs"
done_by_w1=$(engine_field "$w1_pid" completed)
[ "${done_by_w1:-0}" -gt 0 ] || fail "w1 (engine $w1_again) got no work after it came back"
echo "OK: phase 2: link back, w1 registered again as engine $w1_again ${back_after} s later and ran $done_by_w1 of 8 tasks"
