#!/usr/bin/env bash
# Stop the test cluster .ci/slurm-up.sh started: only the daemons whose pid files are in
# its folder ($HPCXFER_SLURM_DIR, default /var/lib/hpcxfer-slurm); munged keeps running.
#   --purge   also delete its state (every job record)
set -euo pipefail
DIR="${HPCXFER_SLURM_DIR:-/var/lib/hpcxfer-slurm}"
alive() { # pid name
    kill -0 "$1" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status" \
        && [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == "$2" ]]
}
for name in slurmd slurmctld; do
    pid="$(cat "$DIR/run/$name.pid" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" "$name"; then
        kill "$pid"
        for _ in $(seq 100); do alive "$pid" "$name" || break; sleep 0.1; done
        if alive "$pid" "$name"; then kill -9 "$pid"; fi
        echo "slurm-down: stopped $name (pid $pid)"
    else
        echo "slurm-down: $name not running"
    fi
    rm -f "$DIR/run/$name.pid"
done
case "${1:-}" in
    --purge) rm -rf "${DIR:?}/state" "${DIR:?}/spool"; echo "slurm-down: purged $DIR/state and $DIR/spool" ;;
    "") ;;
    *) echo "slurm-down: unknown argument '$1'" >&2; exit 2 ;;
esac
