#!/usr/bin/env bash
# The release binary as a user gets it: `cargo install --path cli`, run as a
# user runs it. That is the workspace's release profile, built in the
# workspace's target directory, with dependencies resolved afresh (cargo
# install ignores Cargo.lock unless --locked) and no local .cargo/config.toml
# (cargo install reads only $CARGO_HOME's); nothing is stripped afterwards.
# Prints its size in bytes, the bytes per kind of section, and whether
# backtraces still name our lines: addr2line is asked for the file and line
# of zcluster's own functions, which must name a file of this repository.
#
# Usage: scripts/bench-binary.sh   (needs the registry for the resolution;
# about 5 minutes the first time, seconds once built). Also prints RESULT
# lines for scripts/bench.sh: binary.bytes, binary.debug_bytes,
# binary.symtab_bytes, binary.lines_resolved, binary.lines_tried.
source "$(dirname "$0")/common.sh"
OUT=${BENCH_OUT:-$ROOT/target/bench}
root=$OUT/install
mkdir -p "$root"
if ! cargo install --quiet --force --path "$ROOT/cli" --root "$root" >"$OUT/install.log" 2>&1; then
    cat "$OUT/install.log" >&2
    echo "bench-binary: cargo install --path cli failed" >&2
    exit 1
fi
bin=$root/bin/zcluster

bytes=$(stat -c %s "$bin")
# section_bytes REGEX: bytes in the file of the sections whose name
# matches (compressed sizes where the linker compressed them).
section_bytes() {
    local name size sum=0
    while read -r name size; do
        if [[ $name =~ $1 ]]; then sum=$((sum + 16#$size)); fi
    done < <(readelf -S -W "$bin" | sed -n 's/^ *\[ *[0-9]*\] *//p' | awk '{ print $1, $5 }')
    echo "$sum"
}
debug=$(section_bytes '^\.debug_')
symtab=$(section_bytes '^\.(symtab|strtab)$')

# Line tables kept for our code: take up to 40 of zcluster's own functions
# (legacy-mangled names start _ZN8zcluster) and ask addr2line where each
# is; count those it places in a .rs file of this repository at a line > 0.
tried=0 resolved=0
while read -r addr; do
    tried=$((tried + 1))
    where=$(addr2line -e "$bin" "0x$addr" 2>/dev/null | head -n 1)
    case $where in "$ROOT"/*.rs:[1-9]* | src/*.rs:[1-9]* | cli/src/*.rs:[1-9]*) resolved=$((resolved + 1)) ;; esac
done < <(nm --defined-only "$bin" | awk '$2 ~ /^[tT]$/ && $3 ~ /^_ZN8zcluster/ { print $1 }' | head -n 40)

printf 'release binary (cargo install --path cli): %s bytes (%s MB)\n' "$bytes" \
    "$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1e6 }')"
printf '  debug sections %s bytes, symbol table %s bytes\n' "$debug" "$symtab"
printf '  zcluster functions addr2line places at a line of ours: %s of %s\n' "$resolved" "$tried"
result binary.bytes "$bytes" B
result binary.debug_bytes "$debug" B
result binary.symtab_bytes "$symtab" B
result binary.lines_resolved "$resolved" functions
result binary.lines_tried "$tried" functions
