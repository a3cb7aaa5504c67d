#!/usr/bin/env bash
# Start hpcxfer's one-node SLURM test cluster, or say it is up (idempotent).
#
# It lives apart from any SLURM the machine runs: its config, state, spool, logs and pid
# files are under $HPCXFER_SLURM_DIR (default /var/lib/hpcxfer-slurm), its daemons listen
# on ports of its own, and it never reads the system slurm.conf. Clients reach it with
#     export SLURM_CONF=$HPCXFER_SLURM_DIR/slurm.conf      (tests/conftest.py does this)
# A slurm.conf there that this script did not write is refused (exit 2): it stops only
# daemons whose pid files are in that folder. Needs root and the Debian packages slurm-wlm
# and munge (scripts/setup.sh installs them); works without systemd and cgroups. It uses the
# machine's munged (starting it if none runs). Stop it with .ci/slurm-down.sh.
#
#   HPCXFER_SLURM_DIR             its folder (default /var/lib/hpcxfer-slurm)
#   HPCXFER_SLURM_PORT            slurmctld's port; slurmd takes the next (default 16817)
#   HPCXFER_SLURM_MAX_ARRAY_SIZE  MaxArraySize (default 6: array indices 0..5)
#   HPCXFER_SLURM_CPUS            CPUs the node advertises (default: the real count)
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

DIR="${HPCXFER_SLURM_DIR:-/var/lib/hpcxfer-slurm}"
PORT="${HPCXFER_SLURM_PORT:-16817}"
MAX_ARRAY_SIZE="${HPCXFER_SLURM_MAX_ARRAY_SIZE:-6}"
CONF="$DIR/slurm.conf"
MARK="# Written by hpcxfer .ci/slurm-up.sh: its own one-node test cluster."

die() { echo "slurm-up: $*" >&2; exit "${2:-1}"; }

# Refuse before anything else, root or not: this folder must be ours or new.
if [[ -e "$CONF" ]] && [[ "$(head -n1 "$CONF" 2>/dev/null)" != "$MARK" ]]; then
    die "$CONF was not written by this script: refusing to touch that SLURM (set HPCXFER_SLURM_DIR)" 2
fi
[[ "$PORT" =~ ^[0-9]+$ ]] && (( PORT >= 1024 && PORT < 65535 )) || die "HPCXFER_SLURM_PORT: not a port 1024..65534: '$PORT'" 2
[[ "$MAX_ARRAY_SIZE" =~ ^[0-9]+$ ]] || die "HPCXFER_SLURM_MAX_ARRAY_SIZE: not an integer: '$MAX_ARRAY_SIZE'" 2
[[ -z "${HPCXFER_SLURM_CPUS:-}" || "$HPCXFER_SLURM_CPUS" =~ ^[1-9][0-9]*$ ]] || die "HPCXFER_SLURM_CPUS: not a positive integer" 2
[[ "$(id -u)" == 0 ]] || die "must run as root"
command -v slurmctld >/dev/null && command -v munged >/dev/null || die "slurm-wlm and munge are not installed (scripts/setup.sh)"

mkdir -p "$DIR"/{state,spool,log,run}
exec 9>"$DIR/run/up.lock"   # one caller at a time
flock -w 180 9 || die "another slurm-up.sh holds $DIR/run/up.lock"
export SLURM_CONF="$CONF"

alive() { # pidfile name: the daemon named there runs (a zombie does not count)
    local pid; pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    ! grep -qs '^State:[[:space:]]*Z' "/proc/$pid/status" && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}
stop() { # pidfile name
    alive "$1" "$2" || { rm -f "$1"; return 0; }
    local pid; pid="$(cat "$1")"; kill "$pid"
    for _ in $(seq 100); do alive "$1" "$2" || break; sleep 0.1; done
    alive "$1" "$2" && kill -9 "$pid"; rm -f "$1"
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# munge: the machine's own, started as its package would if it is not running.
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- munged 9>&-
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munged does not answer; see /var/log/munge/munged.log"
fi

HOST="$(hostname -s)"
HW="$(slurmd -C | head -n1)"   # NodeName=vm CPUs=2 Boards=1 ... ThreadsPerCore=1 RealMemory=24105
MEM="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")"
MEM=$(( MEM / 256 * 256 ))      # stable across runs, never more than the node reports
NODE_HW="$(grep -o 'CPUs=.*ThreadsPerCore=[0-9]*' <<<"$HW")"
[[ -n "${HPCXFER_SLURM_CPUS:-}" ]] && NODE_HW="CPUs=$HPCXFER_SLURM_CPUS"
NEW="$(mktemp)"; trap 'rm -f "$NEW"' EXIT
cat >"$NEW" <<EOF
$MARK
ClusterName=hpcxfer-test
SlurmctldHost=${HOST}(127.0.0.1)
SlurmctldPort=${PORT}
SlurmdPort=$(( PORT + 1 ))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start (default 120 s)
AuthInfo=cred_expire=10
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=${DIR}/run/slurmctld.pid
SlurmdPidFile=${DIR}/run/slurmd.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd.log
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=5
JobRequeue=1
MaxArraySize=${MAX_ARRAY_SIZE}
MinJobAge=3600
$([[ -n "${HPCXFER_SLURM_CPUS:-}" ]] && echo SlurmdParameters=config_overrides)
NodeName=${HOST} NodeAddr=127.0.0.1 ${NODE_HW} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF

node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1; }
usable() { case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac; }
up() { alive "$DIR/run/slurmctld.pid" slurmctld && alive "$DIR/run/slurmd.pid" slurmd && usable; }

if cmp -s "$NEW" "$CONF" && up; then
    echo "SLURM test cluster is up (already running): SLURM_CONF=$CONF, node $HOST $(node_state)"; exit 0
fi
if ! cmp -s "$NEW" "$CONF"; then   # a new config: our daemons restart to read it
    stop "$DIR/run/slurmd.pid" slurmd
    stop "$DIR/run/slurmctld.pid" slurmctld
    install -m 0644 "$NEW" "$CONF"
fi
for daemon in "slurmctld $PORT" "slurmd $(( PORT + 1 ))"; do   # a port ours do not hold
    set -- $daemon
    if ! alive "$DIR/run/$1.pid" "$1" && listening "$2"; then
        die "port $2 is taken by another program: set HPCXFER_SLURM_PORT" 2
    fi
done
if ! alive "$DIR/run/slurmctld.pid" slurmctld; then
    slurmctld -f "$CONF" -i 9>&- || die "slurmctld did not start; see $DIR/log/slurmctld.log"
    for _ in $(seq 300); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
fi
alive "$DIR/run/slurmd.pid" slurmd || slurmd -f "$CONF" 9>&- || die "slurmd did not start; see $DIR/log/slurmd.log"
for _ in $(seq 120); do
    usable && break
    [[ "$(node_state)" == *drain* || "$(node_state)" == down* ]] && scontrol update NodeName="$HOST" State=RESUME 2>/dev/null
    sleep 0.5
done
usable || die "node $HOST is '$(node_state)' after 60 s; see $DIR/log/slurmctld.log and slurmd.log"
echo "SLURM test cluster is up: SLURM_CONF=$CONF, node $HOST $(node_state) ($NODE_HW), MaxArraySize=$MAX_ARRAY_SIZE"
