#!/usr/bin/env bash
# Toolkit throughput against the transport ceiling, measured in the same run:
# no-op requests through Ventilator -> 2 Workers -> Sink over tcp loopback
# (typed bincode payloads, one-frame zcluster messages) vs raw libzmq
# PUSH -> PULL/PUSH -> PULL of 64-byte messages in the same topology
# (examples/throughput.rs), the runs of each kind taken in turn. Prints
# messages/s for each and the ratios.
# Usage: scripts/bench-toolkit.sh   (RUNS=5 medians, COUNT=300000 messages;
# QUICK=1: one run of 50000). Also prints RESULT lines for scripts/bench.sh.
# BASELINE=/path/to/an/older/throughput: that build's toolkit run is taken
# in each turn too, and the median of new/old per turn is printed (a change
# measured against the code before it, on this noisy machine).
source "$(dirname "$0")/common.sh"
COUNT=${COUNT:-$(sized 300000 50000)}
build_release
bin=$ROOT/target/release/examples/throughput
BATCH=${BATCH:-16}
rate() {
    "$bin" "$@" --count "$COUNT" --workers 2 | awk '{print $5}'
}
# Raw, toolkit and batched toolkit in turn, RUNS times, so each ratio pairs
# runs taken moments apart on this noisy machine: the figures are medians,
# and the ratios the medians of the per-turn ratios.
BASELINE=${BASELINE:-}
raws=() toolkits=() batches=() ratios=() batch_ratios=() baseline_ratios=() over_baseline=()
for ((i = 0; i < RUNS; i++)); do
    r=$(rate --mode raw)
    t=$(rate --mode toolkit)
    if [ -n "$BASELINE" ]; then
        o=$("$BASELINE" --mode toolkit --count "$COUNT" --workers 2 | awk '{print $5}')
        baseline_ratios+=("$(ratio "$o" "$r")") over_baseline+=("$(ratio "$t" "$o")")
    fi
    b=$(rate --mode toolkit --batch "$BATCH")
    raws+=("$r") toolkits+=("$t") batches+=("$b")
    ratios+=("$(ratio "$t" "$r")") batch_ratios+=("$(ratio "$b" "$r")")
done
raw=$(median "${raws[@]}")
toolkit=$(median "${toolkits[@]}")
batched=$(median "${batches[@]}")
toolkit_ratio=$(median "${ratios[@]}")
batched_ratio=$(median "${batch_ratios[@]}")
printf '%-46s %10.0f msgs/s\n' "raw libzmq PUSH/PULL, 2 pass-through workers" "$raw" \
    "toolkit Ventilator/2 Workers/Sink, no-op" "$toolkit" \
    "same, Ventilator::batch($BATCH)" "$batched"
printf '%-46s %10.2f (target >= 0.6)\n' "ratio toolkit / raw (median of turns)" "$toolkit_ratio" \
    "ratio batched toolkit / raw (median of turns)" "$batched_ratio"
if [ -n "$BASELINE" ]; then
    printf '%-46s %10.2f\n' "baseline toolkit / raw (median of turns)" "$(median "${baseline_ratios[@]}")" \
        "toolkit / baseline toolkit (median of turns)" "$(median "${over_baseline[@]}")"
fi
result toolkit.count "$COUNT" msgs
result toolkit.raw "$raw" msgs/s
result toolkit.toolkit "$toolkit" msgs/s
result toolkit.batch "$BATCH" requests
result toolkit.batched "$batched" msgs/s
result toolkit.ratio "$toolkit_ratio" x
result toolkit.batched_ratio "$batched_ratio" x
result toolkit.target 0.6 x
