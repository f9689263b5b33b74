#!/usr/bin/env bash
# Scale: many engines on one hub, and one very long `zcluster map` job.
# Run by scripts/bench.sh (not by CI); prints RESULT lines for its table.
#
# 1. Engines on one hub. A `zcluster hub` process (SQLite store, 1 s
#    heartbeat, the default) and 10, 100, 1,000 one-slot engines
#    connected over tcp loopback. The engines are real engines (the code
#    `zcluster worker` runs: register, heartbeat, tasks, each with its own
#    DEALER and TCP connection) on threads, ENGINES_PER_PROCESS to a process
#    (examples/engines.rs): 1,000 `zcluster worker` processes would cost
#    ~10 GiB resident and a thousand spawns on this 2-core machine for the
#    same hub-side figure. For each count:
#    - the hub's CPU while idle (heartbeats alone): the hub process's CPU
#      time from /proc over IDLE_SECONDS (its threads' schedstat, the
#      precise form of utime+stime; see cpu_seconds), as a percentage of
#      one core; target: linear in the engines, under 5% at 1,000;
#    - the engines' CPU while idle, the same way over the engine
#      processes: an idle engine wakes once per hub heartbeat, to answer
#      it (no target; it shares the machine with the hub);
#    - the no-op task rate: a zcluster::pool client (examples/pool_client.rs,
#      one input per task) mapping TASKS inputs over those engines (RUNS
#      runs, median); target: at 1,000 engines within 20% of the rate at 10.
#
# 2. One long job through `zcluster map --hub` (a `zcluster hub` with its
#    SQLite store, a `zcluster worker -j 2`, the map client; each process
#    under /usr/bin/time for its peak RSS) of `true` per input, at
#    MAP_COUNTS inputs (default 100,000 and 1,000,000). Every input is one
#    command spawned, ~1.5 k/s on this machine, so the issue's 10,000,000
#    would take about two hours: the default measures 1 M (10x the 100 k
#    reference, ~12 minutes) and the table states the 10 M figure as the
#    1 M growth extrapolated linearly. MAP_COUNTS="100000 10000000" runs
#    the real thing. Also the store's size per task: the SQLite file (and
#    its WAL) after the hub stopped, the difference between the two counts
#    divided by the difference in tasks (so the fixed size of an empty store
#    drops out), minus what the input and output themselves are (the input
#    line's bytes; `true` writes nothing); target: under 150 bytes.
#
# Usage: scripts/bench-scale.sh   (ENGINE_COUNTS="10 100 1000",
#        IDLE_SECONDS=20, TASKS=50000, MAP_COUNTS="100000 1000000";
#        SCALE_ENGINES=0 or SCALE_MAP=0 skips a part;
#        QUICK=1: 10 and 100 engines, 5 s idle, 2 k / 20 k inputs.)
source "$(dirname "$0")/common.sh"
ENGINE_COUNTS=${ENGINE_COUNTS:-$(sized "10 100 1000" "10 100")}
IDLE_SECONDS=${IDLE_SECONDS:-$(sized 20 5)}
TASKS=${TASKS:-$(sized 50000 10000)}
MAP_COUNTS=${MAP_COUNTS:-$(sized "100000 1000000" "2000 20000")}
ENGINES_PER_PROCESS=${ENGINES_PER_PROCESS:-250}
# Every RESULT line is also kept for the table at the end.
results=()
result() {
    results+=("RESULT $1 $2 $3")
    printf 'RESULT %s %s %s\n' "$1" "$2" "$3"
}
build_release
Z=$ROOT/target/release/zcluster
EXAMPLES=$ROOT/target/release/examples
TICKS_PER_SECOND=$(getconf CLK_TCK)
tmp=$(mktemp -d)
# Processes started in the background, stopped on any exit.
background=()
stop_background() {
    local pid
    for pid in "${background[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${background[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    background=()
}
cleanup() {
    if [ -s "$tmp/hub.json" ]; then
        timeout 10 "$Z" shutdown --hub "$tmp/hub.json" --workers >/dev/null 2>&1 || true
    fi
    stop_background
    rm -rf "$tmp"
}
trap cleanup EXIT

# wait_for WHAT SECONDS CMD...: retries CMD every 0.1 s until it succeeds,
# failing the script after SECONDS.
wait_for() {
    local what=$1 limit=$2 i
    shift 2
    for ((i = 0; i < limit * 10; i++)); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    echo "bench-scale: gave up waiting for $what after $limit s" >&2
    exit 1
}

# start_hub [PREFIX...]: a fresh `zcluster hub` (SQLite store in $tmp),
# run under PREFIX (e.g. /usr/bin/time); its pid in $hub_pid (the pid of
# PREFIX's child when there is one), once its connection file exists.
start_hub() {
    rm -f "$tmp"/hub.json "$tmp"/hub.sqlite*
    "$@" "$Z" hub --connection-file "$tmp/hub.json" --store "$tmp/hub.sqlite" --fresh \
        >"$tmp/hub.log" 2>&1 &
    hub_launcher=$!
    background+=("$hub_launcher")
    wait_for "the hub's connection file" 30 test -s "$tmp/hub.json"
    hub_pid=$(pgrep -P "$hub_launcher" -x zcluster || echo "$hub_launcher")
}

stop_hub() {
    "$Z" shutdown --hub "$tmp/hub.json" --workers >/dev/null 2>&1 || true
    stop_background
}

# registered N: whether the hub has N engines.
registered() {
    [ "$("$Z" status --hub "$tmp/hub.json" --json 2>/dev/null | grep -c '"last_heartbeat"')" -ge "$1" ]
}

# cpu_seconds PID...: CPU time of processes so far, in seconds: the sum of
# its threads' run time in /proc/PID/task/*/schedstat (nanoseconds), which
# is what utime + stime in /proc/PID/stat count in clock ticks of 10 ms,
# too coarse for 10 engines (a few ms a second); those where schedstat is
# missing.
cpu_seconds() {
    if [ "$#" -gt 1 ]; then
        local pid
        for pid in "$@"; do cpu_seconds "$pid"; done | awk '{ s += $1 } END { printf "%.6f\n", s }'
        return
    fi
    if [ -r "/proc/$1/schedstat" ]; then
        cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.6f\n", s / 1e9 }'
    else
        awk -v hz="$TICKS_PER_SECOND" '{ printf "%.6f\n", ($14 + $15) / hz }' "/proc/$1/stat"
    fi
}

if [ "${SCALE_ENGINES:-1}" != 0 ]; then
    echo "== engines on one hub: ${ENGINE_COUNTS// /, } one-slot engines (threads, $ENGINES_PER_PROCESS per process), tcp loopback"
    printf '%-10s %16s %18s %18s %16s\n' engines "hub CPU idle" "per engine" "engines CPU idle" "no-op tasks/s"
    for n in $ENGINE_COUNTS; do
        start_hub
        engine_pids=()
        left=$n
        while [ "$left" -gt 0 ]; do
            k=$((left < ENGINES_PER_PROCESS ? left : ENGINES_PER_PROCESS))
            "$EXAMPLES/engines" "$tmp/hub.json" --engines "$k" --slots 1 >>"$tmp/engines.log" 2>&1 &
            background+=($!)
            engine_pids+=($!)
            left=$((left - k))
        done
        wait_for "$n engines to register" 120 registered "$n"
        # Registration bursts and the first heartbeats are over.
        sleep 2
        before=$(cpu_seconds "$hub_pid")
        engines_before=$(cpu_seconds "${engine_pids[@]}")
        sleep "$IDLE_SECONDS"
        after=$(cpu_seconds "$hub_pid")
        engines_after=$(cpu_seconds "${engine_pids[@]}")
        percent=$(calc "($after - $before) / $IDLE_SECONDS * 100")
        engines_percent=$(calc "($engines_after - $engines_before) / $IDLE_SECONDS * 100")
        registered "$n" || { echo "bench-scale: engines were lost while idle" >&2; exit 1; }
        rates=()
        for ((i = 0; i < RUNS; i++)); do
            rates+=("$("$EXAMPLES/pool_client" map "$tmp/hub.json" "$TASKS" 1 | awk '{ print $4 }')")
        done
        rate=$(median "${rates[@]}")
        printf '%-10s %14.2f %% %15.4f %% %16.2f %% %16.0f\n' "$n" "$percent" "$(calc "$percent / $n")" \
            "$engines_percent" "$rate"
        result "scale.heartbeat_cpu_$n" "$percent" "%core"
        result "scale.engines_idle_cpu_$n" "$engines_percent" "%core"
        result "scale.rate_$n" "$rate" tasks/s
        stop_hub
    done
    result scale.idle_seconds "$IDLE_SECONDS" s
    result scale.tasks "$TASKS" tasks
fi

timed() { # FILE CMD...: CMD's peak RSS (KiB) into FILE
    local out=$1
    shift
    /usr/bin/time -f "%M" -o "$out" "$@"
}

if [ "${SCALE_MAP:-1}" != 0 ]; then
    echo "== one long job: zcluster map --hub ... -- true, ${MAP_COUNTS// /, } inputs (hub, worker -j 2, client)"
    [ -x /usr/bin/time ] || { echo "bench-scale: /usr/bin/time is needed for peak RSS (apt-get install time)" >&2; exit 1; }
    printf '%-10s %10s %12s %12s %12s %14s\n' inputs seconds "hub KiB" "worker KiB" "client KiB" "store bytes"
    for n in $MAP_COUNTS; do
        seq 1 "$n" >"$tmp/inputs"
        start_hub timed "$tmp/hub.rss"
        timed "$tmp/worker.rss" "$Z" worker --hub "$tmp/hub.json" -j 2 >"$tmp/worker.log" 2>&1 &
        background+=($!)
        start=$(date +%s.%N)
        timed "$tmp/client.rss" "$Z" map --hub "$tmp/hub.json" --no-progress "$tmp/inputs" -- true \
            >"$tmp/map.out"
        seconds=$(calc "$(date +%s.%N) - $start")
        # The hub flushes its store and exits, the worker is told to exit.
        "$Z" shutdown --hub "$tmp/hub.json" --workers >/dev/null 2>&1
        for pid in "${background[@]}"; do wait "$pid" 2>/dev/null || true; done
        background=()
        bytes=$(find "$tmp" -maxdepth 1 -name 'hub.sqlite*' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
        input_bytes=$(($(wc -c <"$tmp/inputs") - n)) # without the newlines
        printf '%-10s %10.1f %12d %12d %12d %14d\n' "$n" "$seconds" "$(cat "$tmp/hub.rss")" \
            "$(cat "$tmp/worker.rss")" "$(cat "$tmp/client.rss")" "$bytes"
        result "scale.map_seconds_$n" "$seconds" s
        result "scale.rss_hub_$n" "$(cat "$tmp/hub.rss")" KiB
        result "scale.rss_worker_$n" "$(cat "$tmp/worker.rss")" KiB
        result "scale.rss_client_$n" "$(cat "$tmp/client.rss")" KiB
        result "scale.store_bytes_$n" "$bytes" B
        result "scale.input_bytes_$n" "$input_bytes" B
    done
fi

# ---------------------------------------------------------------------------
# The table: each figure against its reference from this run and its target.
get() { # NAME: the value of a RESULT line printed above (empty if none)
    printf '%s\n' "${results[@]}" | awk -v k="$1" '$2 == k { v = $3 } END { print v }'
}
quotient() { # A B: A / B to two decimals, empty when either is missing
    [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { if (b != 0) printf "%.2f", a / b }'
    return 0
}
verdict() { # VALUE OP LIMIT: ok or MISS (- when there is no value)
    [ -n "$1" ] || { echo "-"; return; }
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        ok = (op == ">=") ? v >= t : (op == "<=") ? v <= t : v < t
        print ok ? "ok" : "MISS" }'
}
row() { # WHAT FIGURE REFERENCE RATIO TARGET VERDICT
    printf '%-42s %-16s %-30s %6s  %-10s %s\n' "$1" "${2:--}" "${3:-}" "${4:--}" "${5:--}" "${6:-}"
}
echo
row what figure "reference (same run)" ratio target ""
counts=($ENGINE_COUNTS)
if [ "${SCALE_ENGINES:-1}" != 0 ] && [ ${#counts[@]} -ge 2 ]; then
    small=${counts[0]} mid=${counts[$((${#counts[@]} - 2))]} large=${counts[-1]}
    c_large=$(get "scale.heartbeat_cpu_$large") c_mid=$(get "scale.heartbeat_cpu_$mid")
    row "hub CPU idle (heartbeats), $large engines" "$(printf '%.2f %% core' "$c_large")" "" "" "< 5 %" "$(verdict "$c_large" "<" 5)"
    # Linear: the cost per engine at the largest count, against that at the
    # next one down (the smallest count's figure is a few clock ticks).
    per_large=$(calc "$c_large / $large") per_mid=$(calc "$c_mid / $mid")
    r=$(quotient "$per_large" "$per_mid")
    row "  per engine, $large vs $mid engines" "$(printf '%.4f %%' "$per_large")" \
        "$(printf '%.4f %% at %s' "$per_mid" "$mid")" "$r" "<= 1.2" "$(verdict "$r" "<=" 1.2)"
    e_large=$(get "scale.engines_idle_cpu_$large")
    row "engines CPU idle, $large engines" "$(printf '%.2f %% core' "$e_large")" "" "" "" ""
    r_large=$(get "scale.rate_$large") r_small=$(get "scale.rate_$small")
    r=$(quotient "$r_large" "$r_small")
    row "no-op rate, $large one-slot engines" "$(printf '%.0f task/s' "$r_large")" \
        "$(printf '%.0f/s at %s engines' "$r_small" "$small")" "$r" ">= 0.8" "$(verdict "$r" ">=" 0.8)"
fi
sizes=($MAP_COUNTS)
if [ "${SCALE_MAP:-1}" != 0 ] && [ ${#sizes[@]} -ge 2 ]; then
    small=${sizes[0]} large=${sizes[-1]}
    # At QUICK sizes the SQLite page cache and the allocators are still
    # warming up: figures, no verdicts.
    for who in hub worker client; do
        a=$(get "scale.rss_${who}_$small") b=$(get "scale.rss_${who}_$large")
        r=$(quotient "$b" "$a")
        v=$(verdict "$r" "<=" 1.10)
        [ "$QUICK" = 1 ] && v="(quick)"
        row "peak RSS, $who, $large inputs" "$((b / 1024)) MiB" "$((a / 1024)) MiB at $small" "$r" "<= 1.10" "$v"
        # Linear extrapolation to 10 M of the growth from small to large.
        if [ "$large" -lt 10000000 ] && [ "$QUICK" != 1 ]; then
            e=$(calc "$a + ($b - $a) * (10000000 - $small) / ($large - $small)")
            r=$(quotient "$e" "$a")
            row "  extrapolated to 10000000 inputs" "$(calc "int($e / 1024)") MiB" "$((a / 1024)) MiB at $small" \
                "$r" "<= 1.10" "$(verdict "$r" "<=" 1.10)"
        fi
    done
    s_small=$(get "scale.store_bytes_$small") s_large=$(get "scale.store_bytes_$large")
    i_small=$(get "scale.input_bytes_$small") i_large=$(get "scale.input_bytes_$large")
    per_task=$(calc "($s_large - $s_small) / ($large - $small)")
    input_per_task=$(calc "($i_large - $i_small) / ($large - $small)")
    beyond=$(calc "$per_task - $input_per_task")
    row "store bytes per task, beyond its input" "$(printf '%.0f B' "$beyond")" \
        "$(printf '%.0f B/task, input %.1f B' "$per_task" "$input_per_task")" "" "< 150 B" \
        "$(verdict "$beyond" "<" 150)"
    result scale.store_bytes_per_task "$per_task" B
    result scale.store_bytes_beyond_input "$beyond" B
fi
