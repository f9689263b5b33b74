#!/usr/bin/env bash
# Toolkit throughput against the transport ceiling, measured in the same run:
# no-op requests through Ventilator -> 2 Workers -> Sink over tcp loopback
# (typed bincode payloads, one-frame zcluster messages) vs raw libzmq
# PUSH -> PULL/PUSH -> PULL of 64-byte messages in the same topology
# (examples/throughput.rs). Prints messages/s for each and the ratio.
# Usage: scripts/bench-toolkit.sh   (RUNS=5 medians, COUNT=300000 messages;
# QUICK=1: one run of 50000). Also prints RESULT lines for scripts/bench.sh.
source "$(dirname "$0")/common.sh"
COUNT=${COUNT:-$(sized 300000 50000)}
build_release
bin=$ROOT/target/release/examples/throughput
BATCH=${BATCH:-16}
rates() {
    local i out=()
    for ((i = 0; i < RUNS; i++)); do
        out+=("$("$bin" "$@" --count "$COUNT" --workers 2 | awk '{print $5}')")
    done
    median "${out[@]}"
}
# Interleave nothing fancy: raw, toolkit, batched toolkit, each the median
# of RUNS runs.
raw=$(rates --mode raw)
toolkit=$(rates --mode toolkit)
batched=$(rates --mode toolkit --batch "$BATCH")
printf '%-46s %10.0f msgs/s\n' "raw libzmq PUSH/PULL, 2 pass-through workers" "$raw" \
    "toolkit Ventilator/2 Workers/Sink, no-op" "$toolkit" \
    "same, Ventilator::batch($BATCH)" "$batched"
printf '%-46s %10.2f (target >= 0.6)\n' "ratio toolkit / raw" "$(ratio "$toolkit" "$raw")" \
    "ratio batched toolkit / raw" "$(ratio "$batched" "$raw")"
result toolkit.count "$COUNT" msgs
result toolkit.raw "$raw" msgs/s
result toolkit.toolkit "$toolkit" msgs/s
result toolkit.batch "$BATCH" requests
result toolkit.batched "$batched" msgs/s
