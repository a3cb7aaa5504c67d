#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by .ci/slurm-up.sh.
#   --purge   also delete slurmctld/slurmd state (all job records)
#   --munge   also stop munged
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

PURGE=0; STOP_MUNGE=0
for a in "$@"; do
    case "$a" in
        --purge) PURGE=1 ;;
        --munge) STOP_MUNGE=1 ;;
        -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
        *) echo "slurm-down: unknown argument '$a'" >&2; exit 2 ;;
    esac
done

alive() { # pid name -- running (not a zombie) and named like the daemon
    kill -0 "$1" 2>/dev/null || return 1
    ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status" || return 1
    [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == "$2" ]]
}

stop_daemon() { # pidfile name
    local pid=""
    if [[ -s "$1" ]]; then pid="$(cat "$1" 2>/dev/null || true)"; fi
    if [[ ! "$pid" =~ ^[0-9]+$ ]] || ! alive "$pid" "$2"; then
        rm -f "$1"; echo "slurm-down: $2 not running"; return 0
    fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do alive "$pid" "$2" || break; sleep 0.1; done
    if alive "$pid" "$2"; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$1"
    echo "slurm-down: stopped $2 (pid $pid)"
}

stop_daemon /run/slurmd.pid slurmd
stop_daemon /run/slurmctld.pid slurmctld
if [[ "$STOP_MUNGE" == 1 ]]; then stop_daemon /run/munge/munged.pid munged; fi
if [[ "$PURGE" == 1 ]]; then
    rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
    echo "slurm-down: purged /var/spool/slurmctld and /var/spool/slurmd"
fi
