# Shared helpers for the benchmark scripts: build once, time commands, take
# medians. Sourced, not run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# QUICK=1: smaller sizes and one run each, a smoke test of the scripts
# rather than a measurement. Each script picks its own sizes from it.
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then RUNS=${RUNS:-1}; else RUNS=${RUNS:-5}; fi

# sized FULL QUICK: FULL, or QUICK when QUICK=1.
sized() {
    if [ "$QUICK" = 1 ]; then echo "$2"; else echo "$1"; fi
}

# result NAME VALUE UNIT: one machine-readable line for scripts/bench.sh,
# which collects these from every script into one table (names are
# SCRIPT.FIGURE; the human lines around them stay as they were).
result() {
    printf 'RESULT %s %s %s\n' "$1" "$2" "$3"
}

build_release() {
    cargo build --release --quiet --workspace --bins --examples
}

# bench_executable NAME: builds the `[[bench]]` target NAME (release
# settings, the `bench` profile) and prints the path of its executable.
bench_executable() {
    cargo bench --quiet --no-run --bench "$1" --message-format=json |
        grep "\"name\":\"$1\"" | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
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
