# Shared helpers for the benchmark scripts: build once, time commands, take
# medians. Sourced, not run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
RUNS=${RUNS:-5}

build_release() {
    cargo build --release --quiet --workspace --bins --examples
}

# seconds CMD...: wall seconds of one run (output discarded).
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || { echo "benchmark command failed: $*" >&2; exit 1; }
    end=$(date +%s.%N)
    calc "$end - $start"
}

# median N1 N2 ...: the median of the numbers given.
median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

# median_seconds CMD...: median wall seconds over $RUNS runs after a warm-up.
median_seconds() {
    local times=() i
    "$@" >/dev/null 2>&1 || true
    for ((i = 0; i < RUNS; i++)); do
        times+=("$(seconds "$@")")
    done
    median "${times[@]}"
}

# calc EXPR: floating-point arithmetic (awk, so nothing to install).
calc() {
    awk "BEGIN { print $1 }"
}

# ratio A B: A / B.
ratio() {
    calc "$1 / $2"
}
