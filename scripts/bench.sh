#!/usr/bin/env bash
# Every benchmark in one run, and one table of figures and ratios, each
# ratio against a reference measured in this same run (the machine is
# shared and noisy: a ratio of two figures taken minutes apart means little):
#   1. toolkit vs raw libzmq                       (bench-toolkit.sh)
#   2. hub with the SQLite and the memory store vs the toolkit, and vs raw
#      libzmq                                      (bench-hub.sh)
#   3. `zcluster map -j4 -- true` vs a fork/exec/wait loop on 4 threads and
#      vs GNU parallel -j4 when installed          (bench-map.sh)
#   4. skewed makespan vs ideal                    (bench-map.sh)
#   5. peak RSS for 10x the no-op tasks: one process, hub process, client
#      process                                     (bench-hub.sh)
#   6. idle round trip through the hub, median and p99 (bench-hub.sh)
#   7. engines on one hub: the hub's idle CPU for heartbeats at 10, 100 and
#      1,000 engines, and the no-op task rate at 1,000 vs 10 (bench-scale.sh)
#   8. one long `zcluster map` job: peak RSS of hub, worker and client at
#      1 M vs 100 k inputs, and the store's bytes per task (bench-scale.sh)
#   9. the hub's task rate with a dashboard, a `status --watch` and an
#      `events` attached vs nobody watching (bench-watched.sh)
#  10. the release binary as `cargo install --path cli` builds it: its size,
#      and whether addr2line still finds our lines in it (bench-binary.sh)
#   and the divan micro benchmarks of the codec and the store (benches/),
#   run briefly; selected medians go in the table.
# The scripts print their own human output (shown here on stderr as they
# run) and RESULT lines, which this script collects; the table goes to
# stdout. Logs, the RESULT lines, the full micro benchmark output and the
# table are kept in $BENCH_OUT (default target/bench).
#
# Usage: scripts/bench.sh            (about 30 minutes on the 2-core machine, 5 with SCALE=0)
#        QUICK=1 scripts/bench.sh    (smaller sizes, one run each: a smoke test, ~1 minute)
#        MEMORY=0 skips the peak-memory runs, MICRO=0 the micro benchmarks,
#        SCALE=0 the scale runs (bench-scale.sh: 1 M spawns alone take ~17 min),
#        BINARY=0 the binary's size (bench-binary.sh: a build of its own);
#        RUNS, COUNT, N, ... pass through to the scripts (see each one).
source "$(dirname "$0")/common.sh"
started=$(date +%s)
OUT=${BENCH_OUT:-$ROOT/target/bench}
mkdir -p "$OUT"
results=$OUT/results.txt
: >"$results"

echo "== building (release)" >&2
build_release
failed=()

# run SCRIPT: runs one benchmark script, its human output to stderr, its
# RESULT lines collected; a failing script is reported and the rest go on.
run() {
    local script=$1 t0
    t0=$(date +%s)
    echo "== $script" >&2
    if "$ROOT/scripts/$script" >"$OUT/$script.log" 2>&1; then
        grep -v '^RESULT ' "$OUT/$script.log" >&2 || true
        grep '^RESULT ' "$OUT/$script.log" >>"$results" || true
        echo "   ($(($(date +%s) - t0)) s)" >&2
    else
        cat "$OUT/$script.log" >&2
        echo "!! $script failed; its rows are empty (log: $OUT/$script.log)" >&2
        grep '^RESULT ' "$OUT/$script.log" >>"$results" || true
        failed+=("$script")
    fi
}

run bench-toolkit.sh
run bench-hub.sh
run bench-map.sh
run bench-watched.sh
if [ "${SCALE:-1}" != 0 ]; then run bench-scale.sh; fi
if [ "${BINARY:-1}" != 0 ]; then run bench-binary.sh; fi

# Micro benchmarks: one short full run of each (kept in $OUT), then a few
# single benchmarks for the table. divan prints fastest, slowest, median
# and mean; the table takes the median (time, or items/s where a counter
# says how many items an iteration handles).
MICRO_ARGS=(--sample-count "$(sized 50 10)" --max-time "$(sized 2 0.5)")
micro_median() { # BINARY EXACT_NAME [time|rate]
    local want=1
    if [ "${3:-time}" = rate ]; then want=2; fi
    # The benchmark's line has its times, the next one its throughputs;
    # the third column is the median.
    "$1" --bench --exact "$2" "${MICRO_ARGS[@]}" 2>/dev/null |
        awk -F'│' -v want="$want" '$3 ~ /[0-9]/ && ++n == want { gsub(/^ +| +$/, "", $3); print $3; exit }'
}
if [ "${MICRO:-1}" != 0 ]; then
    echo "== micro benchmarks (divan: ${MICRO_ARGS[*]})" >&2
    codec=$(bench_executable codec)
    store=$(bench_executable store)
    "$codec" --bench "${MICRO_ARGS[@]}" >"$OUT/micro-codec.txt" 2>&1 || failed+=(codec)
    "$store" --bench "${MICRO_ARGS[@]}" >"$OUT/micro-store.txt" 2>&1 || failed+=(store)
    {
        echo "RESULT micro.encode_request_8 $(micro_median "$codec" codec::encode_request::8 | tr ' ' '_') -"
        echo "RESULT micro.from_frames_8 $(micro_median "$codec" codec::envelope_from_frames::8 | tr ' ' '_') -"
        echo "RESULT micro.decode_result_8 $(micro_median "$codec" codec::decode_result::8 | tr ' ' '_') -"
        echo "RESULT micro.decode_header $(micro_median "$codec" codec::decode_header | tr ' ' '_') -"
        echo "RESULT micro.lifecycle_memory $(micro_median "$store" store::lifecycle::1024::memory rate | tr ' ' '_') -"
        echo "RESULT micro.lifecycle_sqlite $(micro_median "$store" store::lifecycle::1024::sqlite rate | tr ' ' '_') -"
    } >>"$results"
fi

# ---------------------------------------------------------------------------
# The table.

# get NAME: the value of a RESULT line (empty if the figure was not measured).
get() {
    awk -v k="$1" '$1 == "RESULT" && $2 == k { v = $3 } END { print v }' "$results"
}
# sizes PREFIX: the task counts of the RESULT lines named PREFIX<count>, ascending.
sizes() {
    awk -v p="$1" '$1 == "RESULT" && index($2, p) == 1 { print substr($2, length(p) + 1) }' "$results" | sort -n -u
}
# human VALUE [UNIT]: 1834567 -> "1.83 M", 41234 -> "41.2 k", 812 -> "812".
human() {
    [ -n "$1" ] || { echo "-"; return; }
    awk -v v="$1" -v u="${2:-}" 'BEGIN {
        if (v >= 1e6) s = sprintf("%.2f M", v / 1e6)
        else if (v >= 1e4) s = sprintf("%.1f k", v / 1e3)
        else s = sprintf("%.0f", v)
        print s (u == "" ? "" : substr(u, 1, 1) == "/" ? u : " " u) }'
}
# count N: 100000 -> "100k", 1000000 -> "1M", 400 -> "400".
count() {
    awk -v v="$1" 'BEGIN {
        if (v >= 1e6 && v % 1e6 == 0) print v / 1e6 "M"
        else if (v >= 1e3 && v % 1e3 == 0) print v / 1e3 "k"
        else print v }'
}
mib() { [ -n "$1" ] && awk -v v="$1" 'BEGIN { printf "%.1f MiB", v / 1024 }' || echo "-"; }
# quotient A B: A / B to two decimals, empty when either is missing.
quotient() {
    [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { if (b != 0) printf "%.2f", a / b }'
    return 0
}
# verdict VALUE OP LIMIT: ok or MISS (empty when there is no value).
verdict() {
    [ -n "$1" ] || { echo "-"; return; }
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        ok = (op == ">=") ? v >= t : (op == "<=") ? v <= t : v < t
        print ok ? "ok" : "MISS" }'
}
row() { # WHAT FIGURE REFERENCE RATIO TARGET VERDICT
    printf '%-44s %-18s %-36s %6s  %-10s %s\n' "$1" "${2:--}" "${3:-}" "${4:--}" "${5:--}" "${6:-}"
}

{
    printf 'zcluster benchmarks, %s, %s cores, load %s, QUICK=%s RUNS=%s\n' \
        "$(date '+%Y-%m-%d %H:%M')" "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)" "$QUICK" "$RUNS"
    row "what" "figure" "reference (same run)" "ratio" "target" ""
    printf '%s\n' "$(printf -- '-%.0s' {1..126})"

    raw=$(get toolkit.raw) toolkit=$(get toolkit.toolkit)
    r=$(quotient "$toolkit" "$raw")
    row "1 toolkit no-op, $(count "$(get toolkit.count)") msgs, 2 workers" "$(human "$toolkit" msg/s)" \
        "raw libzmq pass-through $(human "$raw" /s)" "$r" ">= 0.6" "$(verdict "$r" ">=" 0.6)"
    batched=$(get toolkit.batched)
    r=$(quotient "$batched" "$raw")
    row "  same, Ventilator::batch($(get toolkit.batch))" "$(human "$batched" req/s)" \
        "raw libzmq pass-through $(human "$raw" /s)" "$r" ">= 0.6" "$(verdict "$r" ">=" 0.6)"

    hub_toolkit=$(get hub.toolkit) sqlite=$(get hub.sqlite) memory=$(get hub.memory)
    row "2 hub + SQLite store, 2 slots, $(count "$(get hub.count)") no-op" "$(human "$sqlite" task/s)" \
        "toolkit $(human "$hub_toolkit" /s)" "$(quotient "$sqlite" "$hub_toolkit")"
    r=$(quotient "$sqlite" "$raw")
    row "  same, vs raw libzmq (from 1)" "$(human "$sqlite" task/s)" \
        "raw libzmq $(human "$raw" /s)" "$r" ">= 0.25" "$(verdict "$r" ">=" 0.25)"
    row "  hub + memory store" "$(human "$memory" task/s)" \
        "toolkit $(human "$hub_toolkit" /s)" "$(quotient "$memory" "$hub_toolkit")"
    row "  hub, SQLite store vs memory store" "$(human "$sqlite" task/s)" \
        "memory store $(human "$memory" /s)" "$(quotient "$sqlite" "$memory")"
    chunked=$(get hub.chunked)
    r=$(quotient "$chunked" "$raw")
    row "  pool, tcp hub + SQLite, chunksize 64" "$(human "$chunked" input/s)" \
        "raw libzmq $(human "$raw" /s)" "$r" ">= 0.25" "$(verdict "$r" ">=" 0.25)"

    z=$(get map.zcluster) f=$(get map.forkexec) p=$(get map.parallel)
    r=$(quotient "$z" "$f")
    row "3 zcluster map -j4 -- true, $(get map.inputs) inputs" "$(human "$z" task/s)" \
        "spawn, own group, output, 4 thr. $(human "$f" /s)" "$r" ">= 0.9" "$(verdict "$r" ">=" 0.9)"
    if [ -n "$p" ]; then
        r=$(quotient "$z" "$p")
        row "  same, vs GNU parallel -j4" "$(human "$z" task/s)" \
            "GNU parallel -j4 $(human "$p" /s)" "$r" ">= 3" "$(verdict "$r" ">=" 3)"
    else
        row "  same, vs GNU parallel -j4" "-" "GNU parallel not installed" "" ">= 3"
    fi

    ideal=$(get map.skew_ideal) makespan=$(get map.skew_makespan)
    r=$(quotient "$makespan" "$ideal")
    row "4 skewed makespan, $(get map.skew_tasks) tasks, 4 slots" \
        "$([ -n "$makespan" ] && printf '%.2f s' "$makespan" || echo -)" \
        "ideal max(sum/4, longest) $([ -n "$ideal" ] && printf '%.2f s' "$ideal")" \
        "$r" "<= 1.05" "$(verdict "$r" "<=" 1.05)"
    xargs_s=$(get map.skew_xargs)
    r=$(quotient "$makespan" "$xargs_s")
    row "  same, vs xargs -P4 (pays each command's start too)" \
        "$([ -n "$makespan" ] && printf '%.2f s' "$makespan" || echo -)" \
        "xargs -P4 -n1 sleep $([ -n "$xargs_s" ] && printf '%.2f s' "$xargs_s")" \
        "$r" "<= 1.05" "$(verdict "$r" "<=" 1.05)"

    # Flat: at most 1.25x the memory for 10x the tasks. At QUICK sizes the
    # SQLite page cache (8 MiB) may still be filling, so no verdict there.
    memory_row() { # WHAT PREFIX
        local counts small large a b r v
        counts=$(sizes "$2")
        small=$(head -n 1 <<<"$counts") large=$(tail -n 1 <<<"$counts")
        if [ -z "$small" ] || [ "$small" = "$large" ]; then
            row "$1" "-" "not measured (MEMORY=0?)" "" "flat"
            return
        fi
        a=$(get "$2$small") b=$(get "$2$large")
        r=$(quotient "$b" "$a")
        v=$(verdict "$r" "<=" 1.25)
        [ "$QUICK" = 1 ] && v="(quick)"
        row "$1" "$(mib "$b") @$(count "$large")" "$(mib "$a") @$(count "$small")" "$r" "<= 1.25" "$v"
    }
    memory_row "5 peak RSS, one process (client+hub+engine)" hub.rss_one_process_
    memory_row "  peak RSS, zcluster hub process" hub.rss_hub_
    memory_row "  peak RSS, pool client process" hub.rss_client_

    median=$(get hub.rtt_median)
    row "6 idle round trip through the hub, median" "$([ -n "$median" ] && echo "$median us" || echo -)" \
        "SQLite store" "" "<= 100 us" "$(verdict "$median" "<=" 100)"
    p99=$(get hub.rtt_p99)
    row "  idle round trip, p99" "$([ -n "$p99" ] && echo "$p99 us" || echo -)" \
        "SQLite store" "" "<= 300 us" "$(verdict "$p99" "<=" 300)"
    median=$(get hub.rtt_memory_median)
    row "  idle round trip, median" "$([ -n "$median" ] && echo "$median us" || echo -)" \
        "in-memory store" "" "<= 100 us" "$(verdict "$median" "<=" 100)"
    p99=$(get hub.rtt_memory_p99)
    row "  idle round trip, p99" "$([ -n "$p99" ] && echo "$p99 us" || echo -)" \
        "in-memory store" "" "<= 300 us" "$(verdict "$p99" "<=" 300)"
    for store in "" memory_; do
        label=$([ -z "$store" ] && echo "SQLite store" || echo "in-memory store")
        median=$(get "hub.rtt_awake_${store}median") p99=$(get "hub.rtt_awake_${store}p99")
        [ -n "$median" ] || continue
        row "  same, CPUs kept from halting, median" "$median us" "$label" "" "<= 100 us" "$(verdict "$median" "<=" 100)"
        row "  same, CPUs kept from halting, p99" "$p99 us" "$label" "" "<= 300 us" "$(verdict "$p99" "<=" 300)"
    done

    large=$(sizes hub.pool_ | tail -n 1)
    if [ -n "$large" ]; then
        pool=$(get "hub.pool_$large")
        row "  pool client, tcp hub, $(count "$large") tasks" "$(human "$pool" task/s)" \
            "embedded hub (2) $(human "$sqlite" /s)" "$(quotient "$pool" "$sqlite")"
    fi

    engine_counts=$(sizes scale.heartbeat_cpu_)
    if [ -n "$engine_counts" ]; then
        few=$(head -n 1 <<<"$engine_counts") many=$(tail -n 1 <<<"$engine_counts")
        cpu=$(get "scale.heartbeat_cpu_$many")
        refs=$(for n in $engine_counts; do [ "$n" = "$many" ] || printf '%s: %.2f%% ' "$n" "$(get "scale.heartbeat_cpu_$n")"; done)
        row "7 hub idle CPU (heartbeats), $many engines" "$(printf '%.2f %% core' "$cpu")" "$refs" "" "< 5 %" \
            "$(verdict "$cpu" "<" 5)"
        a=$(get "scale.rate_$many") b=$(get "scale.rate_$few")
        r=$(quotient "$a" "$b")
        row "  no-op rate, $many one-slot engines" "$(human "$a" task/s)" "$few engines $(human "$b" /s)" \
            "$r" ">= 0.8" "$(verdict "$r" ">=" 0.8)"
    fi
    map_counts=$(sizes scale.rss_hub_)
    if [ -n "$map_counts" ] && [ "$(wc -l <<<"$map_counts")" -ge 2 ]; then
        small=$(head -n 1 <<<"$map_counts") large=$(tail -n 1 <<<"$map_counts")
        for who in hub worker client; do
            a=$(get "scale.rss_${who}_$small") b=$(get "scale.rss_${who}_$large")
            r=$(quotient "$b" "$a")
            v=$(verdict "$r" "<=" 1.10)
            [ "$QUICK" = 1 ] && v="(quick)"
            row "$([ "$who" = hub ] && echo 8 || echo " ") map -- true, peak RSS, $who" "$(mib "$b") @$(count "$large")" \
                "$(mib "$a") @$(count "$small")" "$r" "<= 1.10" "$v"
        done
        beyond=$(get scale.store_bytes_beyond_input)
        row "  store bytes per task beyond its input" "$(printf '%.0f B' "$beyond")" \
            "$(printf '%.0f B per task in all' "$(get scale.store_bytes_per_task)")" "" "< 150 B" \
            "$(verdict "$beyond" "<" 150)"
    fi

    w=$(get watched.ratio)
    row "9 hub watched (dashboard, status --watch, events), $(count "$(get watched.count)") no-op" \
        "$([ -n "$w" ] && echo "$w x" || echo -)" "unwatched rounds, alternated" "$w" ">= 0.95" \
        "$(verdict "$w" ">=" 0.95)"
    p=$(get watched.pair_ratio)
    row "  median of each pair's own ratio" "$([ -n "$p" ] && echo "$p x" || echo -)" \
        "the unwatched round next to it" "$p" "" ""
    c=$(get watched.cpu_ratio)
    row "  hub process CPU per task, watched vs not" "$([ -n "$c" ] && echo "$c x" || echo -)" \
        "unwatched rounds" "$c" "" ""
    a=$(get watched.control_ratio)
    row "  control: nobody attached on either side" "$([ -n "$a" ] && echo "$a x, pairs $(get watched.control_pair_ratio) x" || echo -)" \
        "the noise alone, same run" "$a" "~ 1" ""
    if [ "${MICRO:-1}" != 0 ]; then
        m() { get "micro.$1" | tr '_' ' '; }
        row "micro (divan medians): encode request, 8 B" "$(m encode_request_8)"
        row "  Envelope::from_frames, 8 B" "$(m from_frames_8)"
        row "  decode result body, 8 B" "$(m decode_result_8)"
        row "  decode header alone" "$(m decode_header)"
        row "  store lifecycle, batch 1024, memory" "$(m lifecycle_memory)"
        row "  store lifecycle, batch 1024, SQLite" "$(m lifecycle_sqlite)"
    fi
    # The binary as `cargo install --path cli` builds it (bench-binary.sh),
    # line tables counted as kept when addr2line placed at least one of
    # zcluster's functions at a line of this repository.
    bytes=$(get binary.bytes) resolved=$(get binary.lines_resolved)
    if [ -n "$bytes" ]; then
        mb=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1e6 }')
        kept=$([ "${resolved:-0}" -gt 0 ] && echo yes || echo no)
        row "10 release binary, cargo install --path cli" "$mb MB" \
            "lines of ours: ${resolved:-0} of $(get binary.lines_tried) fns" "" "<= 15 MB" \
            "$([ "$kept" = yes ] && verdict "$mb" "<=" 15 || echo "MISS (no line tables)")"
    else
        row "10 release binary, cargo install --path cli" "-" "not measured (BINARY=0?)" "" "<= 15 MB"
    fi
    echo
    echo "7, 8: scripts/bench-scale.sh (its header says what is measured; 8 runs 1 M inputs, not"
    echo "   10 M: one spawn per input makes 10 M take about two hours; it prints the 10 M extrapolation)."
    echo "5: flat means at most 1.25x the peak RSS for 10x the tasks. The hub's SQLite page"
    echo "   cache (up to 8 MiB) may still be filling at 100k tasks, so growth up to that much"
    echo "   is the bounded cache, not per-task state."
    echo "Run time $(($(date +%s) - started)) s. Logs, RESULT lines and full micro benchmark"
    echo "output: $OUT (cargo bench --bench codec|store for the full micro benchmarks)."
    if [ ${#failed[@]} -gt 0 ]; then echo "FAILED: ${failed[*]}"; fi
} | tee "$OUT/table.txt"
[ ${#failed[@]} -eq 0 ]
