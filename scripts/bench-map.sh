#!/usr/bin/env bash
# zcluster map on command jobs, against the references measured in the same
# run (see DESIGN.md, performance references):
#   1. `zcluster map -j4 -- true` over 2,000 inputs vs a bare spawn/wait
#      loop of `true` on 4 threads that spawns the way zcluster must (a
#      process group of its own, output captured; examples/forkexec.rs, the
#      ceiling; target >= 0.9 of it) and vs GNU parallel -j4 when it is
#      installed;
#   2. a skewed workload (85% short sleeps, 15% ten times longer) on 4 slots
#      vs its ideal makespan max(sum/slots, longest), and vs `xargs -P4`
#      running the same commands: the ideal counts no time to start a
#      command (about a millisecond for `sleep` here, a hundred starts a
#      slot), xargs pays it as zcluster does and hands the next command to
#      whichever slot frees first, so it says what the scheduling costs.
# Usage: scripts/bench-map.sh   (RUNS=5 medians; N=2000 inputs, SKEWED=400
# tasks; QUICK=1: one run of 400 and 100; ZCLUSTER_BIN=path: time that
# zcluster binary instead of this tree's, to compare two builds in turns).
# Also prints RESULT lines for scripts/bench.sh.
source "$(dirname "$0")/common.sh"
N=${N:-$(sized 2000 400)}
SKEWED=${SKEWED:-$(sized 400 100)}
build_release
Z=${ZCLUSTER_BIN:-$ROOT/target/release/zcluster}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
seq 1 "$N" >"$tmp/inputs"

echo "== command jobs: $N x true, 4 at a time ($RUNS runs, medians)"
z=$(median_seconds "$Z" map -j4 --no-progress "$tmp/inputs" -- true)
f=$(median_seconds "$ROOT/target/release/examples/forkexec" --count "$N" --threads 4)
z_rate=$(calc "$N / $z")
f_rate=$(calc "$N / $f")
printf '%-34s %8.0f tasks/s\n' "zcluster map -j4 -- true" "$z_rate" "spawn/wait loop, own group, 4 thr." "$f_rate"
printf '%-34s %8.2f (target >= 0.9)\n' "ratio zcluster / spawn loop" "$(ratio "$z_rate" "$f_rate")"
result map.inputs "$N" inputs
result map.zcluster "$z_rate" tasks/s
result map.forkexec "$f_rate" tasks/s
if command -v parallel >/dev/null 2>&1; then
    p=$(median_seconds sh -c "parallel -j4 true <'$tmp/inputs'")
    p_rate=$(calc "$N / $p")
    printf '%-34s %8.0f tasks/s\n' "GNU parallel -j4 true" "$p_rate"
    printf '%-34s %8.2f (target >= 3)\n' "ratio zcluster / GNU parallel" "$(ratio "$z_rate" "$p_rate")"
    result map.parallel "$p_rate" tasks/s
else
    echo "GNU parallel is not installed: no comparison (apt-get install parallel)"
fi

echo "== skewed makespan: $SKEWED tasks, 85% sleep 0.02, 15% sleep 0.2, 4 slots"
# Long ones at pseudo-random places (a fixed seed), some near the end.
awk -v n="$SKEWED" 'BEGIN { srand(7); for (i = 0; i < n; i++) print (rand() < 0.15 ? "0.2" : "0.02") }' >"$tmp/skewed"
ideal=$(awk '{ s += $1; if ($1 > m) m = $1 } END { i = s / 4; print (i > m ? i : m) }' "$tmp/skewed")
s=$(median_seconds "$Z" map -j4 --no-progress "$tmp/skewed" -- sleep)
printf '%-34s %8.3f s\n' "ideal max(sum/4, longest)" "$ideal" "zcluster map -j4 -- sleep" "$s"
x=$(median_seconds sh -c "xargs -P4 -n1 sleep <'$tmp/skewed'")
printf '%-34s %8.3f s\n' "xargs -P4 -n1 sleep" "$x"
printf '%-34s %8.3f (target <= 1.05)\n' "ratio makespan / ideal" "$(ratio "$s" "$ideal")"
printf '%-34s %8.3f (target <= 1.05)\n' "ratio makespan / xargs" "$(ratio "$s" "$x")"
result map.skew_xargs "$x" s
result map.skew_tasks "$SKEWED" tasks
result map.skew_ideal "$ideal" s
result map.skew_makespan "$s" s
