#!/usr/bin/env bash
# No-op tasks through a hub against the toolkit alone, in the same run:
#   - toolkit: Ventilator -> 2 Workers -> Sink over tcp loopback
#     (examples/throughput.rs --mode toolkit);
#   - hub: client -> embedded hub -> engine with 2 slots -> client, every
#     request/result pair recorded, with the SQLite store and in memory
#     (examples/hub_throughput.rs).
# Usage: scripts/bench-hub.sh   (RUNS=5 medians, COUNT=100000 tasks); also
# prints the idle round trip of one task (median and p99).
source "$(dirname "$0")/common.sh"
COUNT=${COUNT:-100000}
build_release
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
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
# Round trip of one task through an idle hub (client -> hub -> engine ->
# slot -> engine -> hub -> client), SQLite store; target: median under 1 ms.
rm -f "$tmp"/store.sqlite*
"$ROOT/target/release/examples/hub_throughput" --latency --count 2000 --store "$tmp/store.sqlite" |
    awk '{ printf "%-44s %6d us median, %d us p99 (target: median < 1000 us)\n", "idle round trip, SQLite store", $3, $4 }'
# Peak memory of client + hub + engine (one process) for 100,000 vs 1,000,000
# no-op tasks with the SQLite store: it should stay flat (the in-memory store
# keeps every pair, so it grows by design). Set MEMORY=0 to skip (~40 s).
if [ "${MEMORY:-1}" != 0 ] && [ -x /usr/bin/time ]; then
    for n in 100000 1000000; do
        rm -f "$tmp"/store.sqlite*
        /usr/bin/time -f "%M" -o "$tmp/rss" "$ROOT/target/release/examples/hub_throughput" \
            --count "$n" --store "$tmp/store.sqlite" >/dev/null
        printf '%-44s %10d KiB peak RSS\n' "$n no-op tasks, SQLite store" "$(cat "$tmp/rss")"
    done
fi
