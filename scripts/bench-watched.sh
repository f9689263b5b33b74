#!/usr/bin/env bash
# Does watching a hub slow it? examples/hub_watched.rs: no-op tasks through
# an embedded hub over TCP (memory store, 2 slots), in rounds that
# alternate in the same run between nobody watching and three watchers
# attached (`zcluster dashboard` with its live stream read, `zcluster
# status --watch` drawing in a tmux pane, `zcluster events`), each pair of
# rounds in turn the other way round. Prints the median watched rate over
# the median unwatched one (target: >= 0.95), and the hub process's CPU per
# task watched over unwatched.
#
# Usage: scripts/bench-watched.sh   (COUNT=200000 tasks per round,
#        ROUNDS=10 of each kind; QUICK=1: 20000 and 1)
source "$(dirname "$0")/common.sh"
COUNT=${COUNT:-$(sized 200000 20000)}
ROUNDS=${ROUNDS:-$(sized 10 1)}
command -v tmux >/dev/null || { echo "bench-watched: tmux is needed (apt-get install tmux)" >&2; exit 1; }
build_release
out=$("$ROOT/target/release/examples/hub_watched" --count "$COUNT" --rounds "$ROUNDS" \
    --zcluster "$ROOT/target/release/zcluster")
printf '%s\n' "$out"
result watched.count "$COUNT" tasks
result watched.ratio "$(awk '$1 == "watched-ratio" { print $2 }' <<<"$out")" x
result watched.cpu_ratio "$(awk '$1 == "cpu-per-task-ratio" { print $2 }' <<<"$out")" x
result watched.pair_ratio "$(awk '$1 == "pair-ratio-median" { print $2 }' <<<"$out")" x
result watched.status_ms "$(awk '$1 == "status-call-ms" { print $2 }' <<<"$out")" ms
if [ "${CONTROL:-1}" != 0 ]; then
    echo "== control: the same rounds, nobody attached on either side"
    control=$("$ROOT/target/release/examples/hub_watched" --count "$COUNT" --rounds "$ROUNDS" \
        --zcluster "$ROOT/target/release/zcluster" --control)
    printf '%s\n' "$control"
    result watched.control_ratio "$(awk '$1 == "watched-ratio" { print $2 }' <<<"$control")" x
    result watched.control_pair_ratio "$(awk '$1 == "pair-ratio-median" { print $2 }' <<<"$control")" x
fi
