#!/usr/bin/env bash
# No-op tasks through a hub against the toolkit alone, in the same run:
#   - toolkit: Ventilator -> 2 Workers -> Sink over tcp loopback
#     (examples/throughput.rs --mode toolkit);
#   - hub: client -> embedded hub -> engine with 2 slots -> client, every
#     request/result pair recorded, with the SQLite store and in memory
#     (examples/hub_throughput.rs).
# Usage: scripts/bench-hub.sh   (RUNS=5 medians, COUNT=100000 tasks); also
# prints the idle round trip of one task (median and p99; as the machine
# idles, and with its CPUs kept from halting, see below) and peak memory
# (below). QUICK=1: one run of 20000 tasks, memory at 10000 vs 100000.
# Also prints RESULT lines for scripts/bench.sh.
source "$(dirname "$0")/common.sh"
COUNT=${COUNT:-$(sized 100000 20000)}
build_release
Z=$ROOT/target/release/zcluster
tmp=$(mktemp -d)
# Processes started in the background (the memory runs), stopped on any exit.
background=()
cleanup() {
    local pid
    if [ ${#background[@]} -gt 0 ]; then
        if [ -s "$tmp/hub.json" ]; then
            timeout 10 "$Z" shutdown --hub "$tmp/hub.json" --workers >/dev/null 2>&1 || true
        fi
        for pid in "${background[@]}"; do
            pkill -P "$pid" 2>/dev/null || true
            kill "$pid" 2>/dev/null || true
        done
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
rate_of() {
    local i out=()
    for ((i = 0; i < RUNS; i++)); do
        rm -f "$tmp"/store.sqlite*
        out+=("$("$@" | awk '{print $5}')")
    done
    median "${out[@]}"
}
toolkit=$(rate_of "$ROOT/target/release/examples/throughput" --mode toolkit --count "$COUNT" --workers 2)
sqlite=$(rate_of "$ROOT/target/release/examples/hub_throughput" --count "$COUNT" --slots 2 --store "$tmp/store.sqlite")
memory=$(rate_of "$ROOT/target/release/examples/hub_throughput" --count "$COUNT" --slots 2 --store :memory:)
printf '%-44s %10.0f tasks/s\n' "toolkit, 2 workers, no-op" "$toolkit" \
    "hub + SQLite store, 2 slots, no-op" "$sqlite" \
    "hub + memory store, 2 slots, no-op" "$memory"
printf '%-44s %10.2f\n' "ratio hub(SQLite) / toolkit" "$(ratio "$sqlite" "$toolkit")" \
    "ratio hub(SQLite) / hub(memory)" "$(ratio "$sqlite" "$memory")"
result hub.count "$COUNT" tasks
result hub.toolkit "$toolkit" tasks/s
result hub.sqlite "$sqlite" tasks/s
result hub.memory "$memory" tasks/s
# Round trip of one task through an idle hub (client -> hub -> engine ->
# slot -> engine -> hub -> client), with the SQLite store and in memory (the
# difference is the store's two commits on the way), RUNS runs of each in
# turn, medians of their medians and of their p99s; target: median <= 100
# us, p99 <= 300 us.
# round_trips LABEL PREFIX: RUNS runs of each store in turn; prints the
# medians of their medians and p99s after LABEL, and RESULT lines
# hub.PREFIX{median,p99} (SQLite) and hub.PREFIXmemory_{median,p99}.
round_trips() {
    local label=$1 prefix=$2 i m p
    local rtt_sqlite=() p99_sqlite=() rtt_memory=() p99_memory=()
    for ((i = 0; i < RUNS; i++)); do
        rm -f "$tmp"/store.sqlite*
        read -r _ _ m p < <("$ROOT/target/release/examples/hub_throughput" --latency --count "$(sized 2000 500)" --store "$tmp/store.sqlite")
        rtt_sqlite+=("$m") p99_sqlite+=("$p")
        read -r _ _ m p < <("$ROOT/target/release/examples/hub_throughput" --latency --count "$(sized 2000 500)" --store :memory:)
        rtt_memory+=("$m") p99_memory+=("$p")
    done
    rm -f "$tmp"/store.sqlite*
    printf '%-44s %6d us median, %d us p99 (target: median <= 100 us, p99 <= 300 us)\n' \
        "$label, SQLite store" "$(median "${rtt_sqlite[@]}")" "$(median "${p99_sqlite[@]}")" \
        "$label, memory store" "$(median "${rtt_memory[@]}")" "$(median "${p99_memory[@]}")"
    result "hub.${prefix}median" "$(median "${rtt_sqlite[@]}")" us
    result "hub.${prefix}p99" "$(median "${p99_sqlite[@]}")" us
    result "hub.${prefix}memory_median" "$(median "${rtt_memory[@]}")" us
    result "hub.${prefix}memory_p99" "$(median "${p99_memory[@]}")" us
}
round_trips "idle round trip" rtt_
# The same with the CPUs kept from halting while idle. Every hop of an idle
# round trip wakes a thread on a CPU with nothing else to do; on a virtual
# machine whose idle CPUs halt at once (cpuidle "haltpoll" with
# guest_halt_poll_ns 0, as here) each such wake-up is a trip through the
# host, which the round trip pays six times. Holding /dev/cpu_dma_latency
# at 0 (the kernel's PM QoS request, what latency-sensitive services and
# cyclictest use) keeps idle CPUs polling instead, so these figures are
# zcluster's own path. Needs root; skipped without it.
if { exec 3>/dev/cpu_dma_latency; } 2>/dev/null; then
    printf '\0\0\0\0' >&3
    round_trips "same, CPUs kept from halting" rtt_awake_
    exec 3>&-
else
    echo "idle round trip with CPUs kept from halting: not measured (/dev/cpu_dma_latency is not writable)"
fi
# pool_run N CHUNK: a `zcluster hub` (SQLite store), an engine with 2 slots
# and a pool client mapping N no-op inputs, CHUNK per task, as separate
# processes; peak RSS of hub and client in $tmp/hub.rss and
# $tmp/client.rss, the client's line in $tmp/pool.
# timed FILE CMD...: runs CMD, its peak RSS (KiB) into FILE (0 without
# /usr/bin/time).
timed() {
    local out=$1
    shift
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f "%M" -o "$out" "$@"
    else
        echo 0 >"$out"
        "$@"
    fi
}

pool_run() {
    local pool="$ROOT/target/release/examples/pool_client" hub engine i
    rm -f "$tmp"/hub.json "$tmp"/pool.sqlite*
    timed "$tmp/hub.rss" "$Z" hub --connection-file "$tmp/hub.json" \
        --store "$tmp/pool.sqlite" --fresh >"$tmp/hub.log" 2>&1 &
    hub=$!
    background+=("$hub")
    for ((i = 0; i < 200; i++)); do
        [ -s "$tmp/hub.json" ] && break
        sleep 0.05
    done
    "$pool" serve "$tmp/hub.json" 2 >"$tmp/engine.log" 2>&1 &
    engine=$!
    background+=("$engine")
    timed "$tmp/client.rss" "$pool" map "$tmp/hub.json" "$1" "$2" >"$tmp/pool"
    "$Z" shutdown --hub "$tmp/hub.json" --workers >/dev/null 2>&1
    wait "$hub" "$engine"
    background=()
}

# Peak memory for a small and a ten times larger no-op job (100,000 vs
# 1,000,000 tasks), SQLite store: it should stay flat (the in-memory store
# keeps every pair, so it grows by design). Measured twice:
#   - one process: client + hub + engine (examples/hub_throughput.rs);
#   - separate processes: `zcluster hub`, an engine, and a zcluster::pool
#     client (examples/pool_client.rs; imap, one input per task), each under
#     /usr/bin/time, so the client and the hub each get their own figure.
# Set MEMORY=0 to skip (~2 minutes).
MEMORY_COUNTS=${MEMORY_COUNTS:-$(sized "100000 1000000" "10000 100000")}
if [ "${MEMORY:-1}" != 0 ] && [ -x /usr/bin/time ]; then
    for n in $MEMORY_COUNTS; do
        rm -f "$tmp"/store.sqlite*
        /usr/bin/time -f "%M" -o "$tmp/rss" "$ROOT/target/release/examples/hub_throughput" \
            --count "$n" --store "$tmp/store.sqlite" >/dev/null
        printf '%-44s %10d KiB peak RSS\n' "$n no-op tasks, SQLite store" "$(cat "$tmp/rss")"
        result "hub.rss_one_process_$n" "$(cat "$tmp/rss")" KiB
    done
    for n in $MEMORY_COUNTS; do
        pool_run "$n" 1
        printf '%-44s %10d KiB peak RSS (%s tasks/s)\n' "$n no-op tasks, zcluster hub process" \
            "$(cat "$tmp/hub.rss")" "$(awk '{ print $4 }' "$tmp/pool")"
        printf '%-44s %10d KiB peak RSS\n' "$n no-op tasks, pool client process" "$(cat "$tmp/client.rss")"
        result "hub.rss_hub_$n" "$(cat "$tmp/hub.rss")" KiB
        result "hub.rss_client_$n" "$(cat "$tmp/client.rss")" KiB
        result "hub.pool_$n" "$(awk '{ print $4 }' "$tmp/pool")" tasks/s
    done
fi

# Inputs per second with chunking, as a Rust user maps small inputs: a
# zcluster::pool client, a `zcluster hub` process (SQLite store, one pair
# recorded per chunk) and an engine with 2 slots, over tcp, 64 inputs per
# task (ipyparallel's 28,000/s reference is with chunksize 64 too).
CHUNKED=${CHUNKED:-$(sized 1000000 200000)}
pool_run "$CHUNKED" 64
printf '%-44s %10.0f inputs/s\n' "pool imap, tcp hub + SQLite, chunksize 64" "$(awk '{ print $4 }' "$tmp/pool")"
result hub.chunked_count "$CHUNKED" inputs
result hub.chunked "$(awk '{ print $4 }' "$tmp/pool")" inputs/s
