#!/usr/bin/env bash
# Chaos: a hub, WORKERS workers and a `zcluster map --hub` of TASKS short
# tasks (`echo {}` over `seq 1 TASKS`). The same job runs twice on the same
# cluster: first undisturbed, then while every INTERVAL seconds a random
# worker is SIGKILLed and a fresh one started, and once (at HUB_KILL_AT s)
# the hub itself is SIGKILLed and started again on the same connection file
# and store (it binds the same ports with the same key). Both runs must print
# exactly the inputs, each once, in order, and exit 0; the script prints what
# it killed and when, and the chaotic run's time against the undisturbed one.
# It exits non-zero on any mismatch, a failed map, a map still running after
# TIMEOUT seconds, or a chaotic run that ended before anything was killed
# (no worker, or with HUB_KILL=1 not the hub): a PASS always means the job
# survived what it says was killed.
#
# Usage: scripts/chaos.sh
#   ZCLUSTER=/path/to/zcluster  binary (default: target/release/zcluster,
#                               built with cargo first)
#   TASKS=20000 WORKERS=4 SLOTS=1 INTERVAL=2   sizes and the kill period (s;
#                                              default 2, or a quarter of the
#                                              undisturbed time if shorter)
#   HUB_KILL=1 HUB_KILL_AT=5 HUB_DOWN=0.5      SIGKILL the hub once, at this
#                                              time (s; default 5, or 40% of the
#                                              undisturbed time if shorter),
#                                              dead this long (HUB_KILL=0: never)
#   TIMEOUT=...                 bound on the chaotic run (default 60 s + 5x
#                               the undisturbed time)
#   SEED=N                      which workers get killed (default: the pid)
#   KEEP=1                      keep the scratch dir (logs, outputs)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/procs.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TASKS=${TASKS:-20000}
WORKERS=${WORKERS:-4}
SLOTS=${SLOTS:-1}
INTERVAL=${INTERVAL:-}
HUB_KILL=${HUB_KILL:-1}
HUB_KILL_AT=${HUB_KILL_AT:-}
HUB_DOWN=${HUB_DOWN:-0.5}
TIMEOUT=${TIMEOUT:-}
SEED=${SEED:-$$}
KEEP=${KEEP:-0}
HEARTBEAT_MS=200
HEARTBEAT_MISSES=3
RANDOM=$SEED

tmp=
hub_pid=
map_pid=
live=()     # worker pids now running
started=()  # every pid this script started, for cleanup

cleanup() {
    stop_pids 30 "${started[@]}"
    if [ -n "$tmp" ]; then
        if [ "$KEEP" = 1 ]; then
            echo "chaos: logs and outputs kept in $tmp" >&2
        else
            rm -rf "$tmp"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${ZCLUSTER:-}" ]; then
    Z=$ZCLUSTER
else
    (cd "$ROOT" && cargo build --release --quiet -p zcluster-cli)
    Z=$ROOT/target/release/zcluster
fi
Z=$(realpath "$Z")
[ -x "$Z" ] || { echo "error: $Z is not an executable" >&2; exit 1; }

tmp=$(mktemp -d)
chmod 700 "$tmp"
conn=$tmp/hub.json
store=$tmp/tasks.sqlite
seq 1 "$TASKS" >"$tmp/inputs"

now() { date +%s.%N; }
# since T0: seconds from T0 to now, two decimals.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
calc() { awk "BEGIN { print $1 }"; }
# fixed N EXPR: EXPR with N decimals.
fixed() { awk "BEGIN { printf \"%.$1f\", $2 }"; }

# kill_reap PID: SIGKILL and reap (the "Killed" notice is not news here).
kill_reap() {
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

hubs=0
start_hub() {
    "$Z" hub --connection-file "$conn" --store "$store" --ip 127.0.0.1 \
        --heartbeat-ms "$HEARTBEAT_MS" --heartbeat-misses "$HEARTBEAT_MISSES" \
        >/dev/null 2>"$tmp/hub-$hubs.log" &
    hub_pid=$!
    started+=("$hub_pid")
    hubs=$((hubs + 1))
}

nworkers=0
start_worker() {
    "$Z" worker --hub "$conn" -j "$SLOTS" >/dev/null 2>"$tmp/worker-$nworkers.log" &
    live+=("$!")
    started+=("$!")
    nworkers=$((nworkers + 1))
}

status_json() {
    "$Z" status --hub "$conn" --json 2>/dev/null
}
hub_answers() {
    [ -e "$conn" ] && status_json >/dev/null
}
engines() {
    status_json | grep -o '"slots"' | wc -l || true
}
all_engines() {
    [ "$(engines)" -eq "$WORKERS" ]
}
# show_logs: the hubs' logs and the maps' stderr, and any worker log with
# more than its start line.
show_logs() {
    local log
    for log in "$tmp"/hub-*.log "$tmp"/*.err "$tmp"/worker-*.log; do
        [ -e "$log" ] || continue
        case $log in
        */worker-*) [ "$(wc -l <"$log")" -gt 1 ] || continue ;;
        esac
        echo "--- $(basename "$log") (last 10 lines)" >&2
        tail -n 10 "$log" >&2
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
    show_logs
    exit 1
}

# start_map NAME: `zcluster map` of the inputs in the background.
start_map() {
    "$Z" map --hub "$conn" --no-progress --results "$tmp/$1.jsonl" "$tmp/inputs" -- echo {} \
        >"$tmp/$1.out" 2>"$tmp/$1.err" &
    map_pid=$!
    started+=("$map_pid")
}

# check NAME: the map printed each input once, in order, and its results
# file has each seq once, in order. Prints what is wrong; returns 1 if so.
check() {
    local name=$1 out=$tmp/$1.out seqs=$tmp/$1.seqs
    grep -o '"seq":[0-9]*' "$tmp/$name.jsonl" | cut -d: -f2 >"$seqs" || true
    if cmp -s "$tmp/inputs" "$out" && cmp -s "$tmp/inputs" "$seqs"; then
        echo "OK: output and results file are 1..$TASKS, each once, in order"
        return 0
    fi
    local what file
    for what in output results; do
        file=$out
        [ "$what" = results ] && file=$seqs
        printf 'MISMATCH in the %s: %d lines for %d inputs, %d missing, %d repeated, %s\n' \
            "$what" "$(wc -l <"$file")" "$TASKS" \
            "$(comm -23 <(sort -u "$tmp/inputs") <(sort -u "$file") | wc -l)" \
            "$(sort "$file" | uniq -d | wc -l)" \
            "$(sort -n -c "$file" 2>/dev/null && echo "in order" || echo "out of order")"
    done
    return 1
}

echo "chaos: $TASKS tasks on $WORKERS workers x $SLOTS slot(s); seed $SEED"
echo "chaos: $Z; scratch in $tmp"
start_hub
wait_for "the hub to answer" hub_answers
cp "$conn" "$tmp/connection.before"
for ((i = 0; i < WORKERS; i++)); do
    start_worker
done
wait_for "$WORKERS workers to register" all_engines

failed=0

# 1. Undisturbed.
t0=$(now)
start_map calm
calm_status=0
wait "$map_pid" || calm_status=$?
calm=$(since "$t0")
echo "undisturbed: $TASKS tasks in ${calm} s ($(fixed 0 "$TASKS / $calm") tasks/s), exit $calm_status"
if [ "$calm_status" -ne 0 ] || ! check calm; then
    echo "error: the undisturbed run already failed" >&2
    show_logs
    exit 1
fi

# 2. The same job under chaos.
[ -n "$TIMEOUT" ] || TIMEOUT=$(calc "60 + 5 * $calm")
# Kills early enough to land inside the chaotic run, which takes at least
# as long as the undisturbed one.
[ -n "$INTERVAL" ] || INTERVAL=$(awk -v c="$calm" 'BEGIN { i = c / 4; print (i < 2 ? i : 2) }')
[ -n "$HUB_KILL_AT" ] || HUB_KILL_AT=$(awk -v c="$calm" 'BEGIN { k = c * 0.4; print (k < 5 ? k : 5) }')
echo "chaos run: a worker SIGKILLed every ${INTERVAL} s$([ "$HUB_KILL" = 1 ] && echo ", the hub at ${HUB_KILL_AT} s")"
worker_kills=()
hub_events=()
hung=0
t0=$(now)
next_kill=$INTERVAL
hub_killed=0
start_map chaos
while kill -0 "$map_pid" 2>/dev/null; do
    t=$(since "$t0")
    if awk -v t="$t" -v m="$TIMEOUT" 'BEGIN { exit !(t >= m) }'; then
        hung=1
        break
    fi
    if [ "$HUB_KILL" = 1 ] && [ "$hub_killed" = 0 ] &&
        awk -v t="$t" -v k="$HUB_KILL_AT" 'BEGIN { exit !(t >= k) }'; then
        printed=$(wc -l <"$tmp/chaos.out")
        kill_reap "$hub_pid"
        hub_events+=("SIGKILL at ${t} s ($printed printed)")
        sleep "$HUB_DOWN"
        start_hub
        hub_events+=("restarted at $(since "$t0") s")
        wait_for "the restarted hub to answer" hub_answers
        hub_events+=("answering at $(since "$t0") s")
        if ! cmp -s "$conn" "$tmp/connection.before"; then
            echo "error: the restarted hub changed the connection file (ports or key)" >&2
            failed=1
        fi
        hub_killed=1
    fi
    if awk -v t="$t" -v k="$next_kill" 'BEGIN { exit !(t >= k) }'; then
        victim=$((RANDOM % ${#live[@]}))
        kill_reap "${live[$victim]}"
        live=("${live[@]:0:victim}" "${live[@]:victim+1}")
        start_worker
        worker_kills+=("$t")
        next_kill=$(calc "$next_kill + $INTERVAL")
    fi
    sleep 0.1
done
chaos=$(since "$t0")
chaos_status=0
if [ "$hung" = 1 ]; then
    chaos_status=hung
    printed=$(wc -l <"$tmp/chaos.out")
    echo "error: the map was still running after ${TIMEOUT} s ($printed of $TASKS printed); killing it" >&2
    kill -TERM "$map_pid" 2>/dev/null || true
    sleep 1
    kill_reap "$map_pid"
    "$Z" status --hub "$conn" >"$tmp/status-at-timeout.txt" 2>&1 || true
    failed=1
else
    wait "$map_pid" || chaos_status=$?
fi

echo "chaos:       $TASKS tasks in ${chaos} s ($(fixed 0 "$TASKS / $chaos") tasks/s), exit $chaos_status;" \
    "$(fixed 2 "$chaos / $calm") x the undisturbed time"
shown=("${worker_kills[@]:0:12}")
more=$((${#worker_kills[@]} - ${#shown[@]}))
echo "killed:      ${#worker_kills[@]} worker(s) with SIGKILL, each replaced, at: ${shown[*]:-none}$([ "$more" -gt 0 ] && echo " and $more more") (s)"
if [ "$HUB_KILL" = 1 ]; then
    if [ "$hub_killed" = 1 ]; then
        echo "hub:         ${hub_events[*]}"
    else
        echo "error: the hub was not killed (the job ended before ${HUB_KILL_AT} s); raise TASKS or lower HUB_KILL_AT" >&2
        failed=1
    fi
fi
if [ ${#worker_kills[@]} -eq 0 ]; then
    echo "error: no worker was killed (the job ended before ${INTERVAL} s); raise TASKS or lower INTERVAL" >&2
    failed=1
fi
if [ "$chaos_status" != 0 ]; then
    failed=1
    echo "map stderr (last lines):"
    tail -n 5 "$tmp/chaos.err"
fi
check chaos || failed=1
if [ "$hung" = 1 ] && [ -s "$tmp/status-at-timeout.txt" ]; then
    echo "hub status when the map was given up on:"
    cat "$tmp/status-at-timeout.txt"
fi
if [ "$failed" != 0 ]; then
    show_logs
    echo "FAIL"
    exit 1
fi
echo "PASS"
