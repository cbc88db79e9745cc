#!/usr/bin/env bash
# Stops what .ci/slurm/start.sh started: slurmd, slurmctld (by their pid
# files), then munged (by its own pid file). Safe to run when nothing runs.
set -uo pipefail
dir="${DYNO_SLURM_DIR:-/tmp/dyno-slurm}"
stop_pidfile() {
    local file="$1"
    [ -s "$file" ] || return 0
    local pid
    pid="$(cat "$file")"
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}
stop_pidfile "$dir/slurmd.pid"
stop_pidfile "$dir/slurmctld.pid"
stop_pidfile /run/munge/munged.pid
exit 0
