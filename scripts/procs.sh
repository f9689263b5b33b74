# Process helpers for scripts that start a cluster. Sourced, not run.

# stop_pids TENTHS PID...: SIGTERM each process, give each up to TENTHS
# tenths of a second to exit, then SIGKILL what is left and reap it.
stop_pids() {
    local tenths=$1 pid i
    shift
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for ((i = 0; i < tenths; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
