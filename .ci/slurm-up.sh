#!/usr/bin/env bash
# Start a one-node SLURM cluster on this host (for hpcxfer tests / CI).
#
# Idempotent: if the daemons are already running, the node is usable and the
# running config matches what this script would write, it prints the "up" line
# and exits 0 without touching anything. Otherwise it (re)writes the config and
# (re)starts whatever is needed.
#
# Needs root. Works without systemd and without cgroups (proctrack/linuxproc,
# task/none). Accounting storage is none (no slurmdbd): the real `sacct` exits 1
# ("Slurm accounting storage is disabled"), so a small fallback is installed as
# /usr/local/bin/sacct that answers from `scontrol show job` (see below).
# Logs: /var/log/slurm/{slurmctld,slurmd}.log; stop with .ci/slurm-down.sh.
#
# Environment knobs:
#   HPCXFER_SLURM_MAX_ARRAY_SIZE  MaxArraySize (default 6 -> array indices 0..5)
#   HPCXFER_SLURM_CPUS            advertise this many CPUs instead of the real
#                                 count (uses SlurmdParameters=config_overrides;
#                                 lets more 1-CPU jobs run at once on a 2-core box)
#   HPCXFER_SLURM_MIN_JOB_AGE     seconds a finished job stays visible to
#                                 scontrol/squeue (default 3600)
#   HPCXFER_SLURM_CRED_EXPIRE     AuthInfo=cred_expire, seconds; also the delay
#                                 before a requeued job may start again (10)
#   HPCXFER_SLURM_TIMEOUT         seconds to wait for the node to go idle (60)
#   HPCXFER_SLURM_SACCT_SHIM=0    do not install the /usr/local/bin/sacct fallback
#   HPCXFER_SLURM_FRESH=1         wipe slurmctld state (all jobs) before starting
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"   # daemons live in sbin

MAX_ARRAY_SIZE="${HPCXFER_SLURM_MAX_ARRAY_SIZE:-6}"
MIN_JOB_AGE="${HPCXFER_SLURM_MIN_JOB_AGE:-3600}"
TIMEOUT="${HPCXFER_SLURM_TIMEOUT:-60}"
CRED_EXPIRE="${HPCXFER_SLURM_CRED_EXPIRE:-10}"
CPUS_OVERRIDE="${HPCXFER_SLURM_CPUS:-}"

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
CTLD_STATE=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
JOBCOMP_LOG="$LOG_DIR/jobcomp.log"

log() { echo "slurm-up: $*" >&2; }
# last log lines minus the harmless "can not load PMIx library" noise
logtail() { grep -v -i 'pmix' "$1" 2>/dev/null | tail -n 15; }
die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "must run as root"

# serialize concurrent callers (e.g. several pytest-xdist workers)
exec 9>/run/hpcxfer-slurm-up.lock
flock -w 180 9 || die "another slurm-up.sh holds /run/hpcxfer-slurm-up.lock"
if [[ ! "$MAX_ARRAY_SIZE" =~ ^[0-9]+$ ]] || (( MAX_ARRAY_SIZE > 4000001 )); then
    die "HPCXFER_SLURM_MAX_ARRAY_SIZE must be an integer 0..4000001 (0 disables arrays), got '$MAX_ARRAY_SIZE'"
fi
[[ "$MIN_JOB_AGE" =~ ^[0-9]+$ ]] || die "HPCXFER_SLURM_MIN_JOB_AGE must be an integer"
[[ "$CRED_EXPIRE" =~ ^[1-9][0-9]*$ ]] || die "HPCXFER_SLURM_CRED_EXPIRE must be a positive integer"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "HPCXFER_SLURM_TIMEOUT must be a positive integer"
# MaxJobCount "should be much larger than MaxArraySize" (default 10000)
MAX_JOB_COUNT=$(( MAX_ARRAY_SIZE * 2 > 10000 ? MAX_ARRAY_SIZE * 2 : 10000 ))
[[ -z "$CPUS_OVERRIDE" || "$CPUS_OVERRIDE" =~ ^[1-9][0-9]*$ ]] || die "HPCXFER_SLURM_CPUS must be a positive integer"

# ---------------------------------------------------------------- packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge via apt"
    # The packages' postinst scripts run `invoke-rc.d slurmd start || exit 1`;
    # without a slurm.conf that start fails and so would the install. A
    # policy-rc.d that exits 101 ("action forbidden") makes them skip starting
    # daemons (Docker base images already ship one). We start them ourselves.
    POLICY_RC=/usr/sbin/policy-rc.d; OUR_POLICY=0
    if [[ ! -e "$POLICY_RC" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"; chmod 0755 "$POLICY_RC"; OUR_POLICY=1
    fi
    # apt output goes to stderr: stdout is reserved for the single "up" line
    apt_rc=0
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge; } >&2 || apt_rc=$?
    [[ "$OUR_POLICY" == 1 ]] && rm -f "$POLICY_RC"
    [[ "$apt_rc" == 0 ]] || die "apt-get install slurm-wlm munge failed (exit $apt_rc)"
fi
# the Debian packages create these users; make sure they exist anyway
id munge >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin munge

pid_alive() { # pidfile [process-name]
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # PID 1 in some containers does not reap orphans: a killed daemon can stay
    # a zombie (kill -0 still succeeds), so treat state Z as dead
    ! grep -qs '^State:[[:space:]]*Z' "/proc/$pid/status" || return 1
    if [[ -n "${2:-}" && -r "/proc/$pid/comm" ]]; then
        [[ "$(cat "/proc/$pid/comm")" == "$2" ]] || return 1
    fi
}

# ------------------------------------------------------------------- munge
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0711 /var/lib/munge
chmod 0755 /run/munge

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    if pid_alive /run/munge/munged.pid munged; then
        die "munged is running but 'munge -n | unmunge' fails; see /var/log/munge/munged.log"
    fi
    log "starting munged"
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged 9>&-   # 9>&-: do not leak the lock fd into daemons
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munged did not come up; see /var/log/munge/munged.log"
fi

# ------------------------------------------------------------------ config
HOST="$(hostname -s)"
# slurmd -C prints e.g.
#   NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
HW="$(slurmd -C | head -n1)"
hw_field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
REAL_CPUS="$(hw_field CPUs)"
REAL_MEM="$(hw_field RealMemory)"
[[ -n "$REAL_CPUS" && -n "$REAL_MEM" ]] || die "could not parse 'slurmd -C' output: $HW"
# Round memory down to a multiple of 256 MiB (min 256) so small fluctuations in
# what the kernel reports never make the node "Low RealMemory" -> drained, and
# the generated config is stable across runs.
MEM=$(( REAL_MEM / 256 * 256 )); (( MEM >= 256 )) || MEM="$REAL_MEM"

if [[ -n "$CPUS_OVERRIDE" ]]; then
    NODE_HW="CPUs=$CPUS_OVERRIDE"
    SLURMD_PARAMS="SlurmdParameters=config_overrides"
else
    # real topology as reported by slurmd -C (CPUs, Boards, Sockets..., Threads)
    NODE_HW="$(grep -o '\bCPUs=.*ThreadsPerCore=[0-9]*' <<<"$HW")" || NODE_HW="CPUs=$REAL_CPUS"
    SLURMD_PARAMS=""
fi

mkdir -p "$CONF_DIR" "$LOG_DIR" "$CTLD_STATE" "$SLURMD_SPOOL"
NEW_CONF="$(mktemp)"
trap 'rm -f "$NEW_CONF"' EXIT
cat >"$NEW_CONF" <<EOF
# Generated by hpcxfer .ci/slurm-up.sh -- one-node test cluster. Do not edit.
ClusterName=hpcxfer
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again
# (BeginTime = requeue time + cred_expire; default 120 s -> far too slow for tests)
AuthInfo=cred_expire=${CRED_EXPIRE}
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${CTLD_STATE}
SlurmdSpoolDir=${SLURMD_SPOOL}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
# no cgroup plugins: works without systemd/cgroup delegation (containers, this VM)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no slurmdbd: the real sacct exits 1 (see the shim below); 'sacct -c' reads
# this jobcomp log but shows raw job ids only (no 123_4 array ids)
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=${JOBCOMP_LOG}
SchedulerType=sched/backfill
# default sched_interval=60/bf_interval=30: a job that becomes eligible by time
# (requeued job's BeginTime, --begin) would wait up to a minute to be looked at
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
PreemptType=preempt/none
PreemptMode=OFF
# slurmctld 22.05 rejects PreemptParameters= (newer releases only); equivalent:
SlurmctldParameters=preempt_send_user_signal
ReturnToService=2
KillWait=5
JobRequeue=1
# array indices must be < MaxArraySize (it bounds the index, not the count)
MaxArraySize=${MAX_ARRAY_SIZE}
MaxJobCount=${MAX_JOB_COUNT}
MinJobAge=${MIN_JOB_AGE}
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
Waittime=0
${SLURMD_PARAMS}
NodeName=${HOST} NodeAddr=127.0.0.1 ${NODE_HW} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

# ------------------------------------------------------------- sacct shim
# Without slurmdbd the real sacct exits 1 ("Slurm accounting storage is
# disabled"); submitit polls `sacct -o JobID,State,NodeList --parsable2 -j ID`
# and would report every job as UNKNOWN (and never notice jobs that died
# without writing a result). The shim falls back to `scontrol show job`.
SHIM=/usr/local/bin/sacct
if [[ "${HPCXFER_SLURM_SACCT_SHIM:-1}" != 0 ]]; then
    if [[ ! -e "$SHIM" ]] || grep -q 'hpcxfer-sacct-shim' "$SHIM"; then
        SHIM_TMP="$(mktemp)"
        cat >"$SHIM_TMP" <<'SHIM_EOF'
#!/usr/bin/env bash
# hpcxfer-sacct-shim (installed by hpcxfer .ci/slurm-up.sh; safe to delete)
# The test cluster runs without slurmdbd (AccountingStorageType=none), so the
# real sacct only prints "Slurm accounting storage is disabled" and exits 1.
# This wrapper runs the real sacct first; if accounting is disabled it answers
# from slurmctld's in-memory job records (`scontrol show job -o`), which keep
# finished jobs for MinJobAge seconds. Supported: -j/--jobs, -o/--format,
# -b/--brief, -P/--parsable2, -p/--parsable, -n/--noheader, -s/--state;
# -X, -a, -S, -E, -u, -D, -L, --name, ... are accepted and ignored.
# There are no job steps (no "123.batch" lines). JobID is "123" for plain jobs,
# "123_4" for array tasks and "123_[5-9%2]" for not-yet-split pending tasks.
set -uo pipefail
REAL_SACCT=/usr/bin/sacct
err="$(mktemp)"; trap 'rm -f "$err"' EXIT
out="$("$REAL_SACCT" "$@" 2>"$err")"; rc=$?
if [[ $rc == 0 ]] || ! grep -qi 'accounting storage is disabled' "$err"; then
    [[ -n "$out" ]] && printf '%s\n' "$out"
    cat "$err" >&2
    exit "$rc"
fi

jobs=() ; fmt="" ; brief=0 ; parsable=0 ; header=1 ; states=""
while (($#)); do
    a="$1"; shift
    case "$a" in
        -j|--jobs|-o|--format|-s|--state|-S|--starttime|-E|--endtime|-u|--user|--uid|-A|--accounts|-M|--clusters|--name|-r|--partition|-q|--qos|-N|--nodelist|-g|--group|--gid|-W|--wckeys|-x|--associations|-T|--truncate-never|-i|--nnodes|-I|--ncpus|-k|--timelimit-min|-K|--timelimit-max|--delimiter)
            v="${1:-}"; (($#)) && shift ;;
        --*=*) v="${a#*=}"; a="${a%%=*}" ;;
        -[josSEuAMrqNgWxiIkK]?*) v="${a:2}"; a="${a:0:2}" ;;
        *) v="" ;;
    esac
    case "$a" in
        -j|--jobs) IFS=',' read -r -a _j <<<"$v"; jobs+=("${_j[@]}") ;;
        -o|--format) fmt="${fmt:+$fmt,}$v" ;;
        -s|--state) states="${states:+$states,}$v" ;;
        -b|--brief) brief=1 ;;
        -P|--parsable2) parsable=2 ;;
        -p|--parsable) parsable=1 ;;
        -n|--noheader) header=0 ;;
        -h|--help|--usage) "$REAL_SACCT" --help; exit 0 ;;
        *) : ;;
    esac
done
if [[ -z "$fmt" ]]; then
    if [[ $brief == 1 ]]; then fmt="JobID,State,ExitCode"
    else fmt="JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode"; fi
fi

records() {
    if ((${#jobs[@]})); then
        local j
        for j in "${jobs[@]}"; do
            [[ -n "$j" ]] && scontrol show job -o "${j%%.*}" 2>/dev/null
        done
    else
        scontrol show job -o 2>/dev/null
    fi
    return 0
}

records | awk -v fmt="$fmt" -v parsable="$parsable" -v header="$header" -v states="$states" '
function val(k,   m) {  # value of " Key=value" in the current record
    if (match(" " $0, " " k "=[^ ]*")) { m = substr(" " $0, RSTART + length(k) + 2, RLENGTH - length(k) - 2); return m }
    return ""
}
function nul(v) { return (v == "(null)" || v == "N/A") ? "" : v }
BEGIN {
    nf = split(fmt, F, ",")
    for (i = 1; i <= nf; i++) { sub(/%.*/, "", F[i]); L[i] = tolower(F[i]) }
    ab["CD"]="COMPLETED"; ab["R"]="RUNNING"; ab["PD"]="PENDING"; ab["F"]="FAILED"; ab["CA"]="CANCELLED"
    ab["TO"]="TIMEOUT"; ab["OOM"]="OUT_OF_MEMORY"; ab["NF"]="NODE_FAIL"; ab["RQ"]="REQUEUED"; ab["PR"]="PREEMPTED"
    ab["BF"]="BOOT_FAIL"; ab["DL"]="DEADLINE"; ab["S"]="SUSPENDED"; ab["RS"]="RESIZING"; ab["RV"]="REVOKED"
    ns = split(toupper(states), S, ",")
    for (i = 1; i <= ns; i++) { s = (S[i] in ab) ? ab[S[i]] : S[i]; want[s] = 1 }
    n = 0
}
/^JobId=/ {
    id = val("JobId"); aj = val("ArrayJobId"); at = val("ArrayTaskId")
    if (id in seen) next; seen[id] = 1
    st = val("JobState")
    if (ns && !(st in want)) next
    if (aj != "") { jid = (at ~ /^[0-9]+$/) ? aj "_" at : aj "_[" at "]"; key = sprintf("%012d %012d", aj, (at ~ /^[0-9]+$/) ? at : 999999999) }
    else          { jid = id; key = sprintf("%012d %012d", id, 0) }
    u = val("UserId"); uname = u; sub(/\(.*/, "", uname); uid = u; sub(/.*\(/, "", uid); sub(/\).*/, "", uid)
    nl = nul(val("NodeList")); if (nl == "") nl = "None assigned"
    line = ""
    for (i = 1; i <= nf; i++) {
        f = L[i]
        if (f == "jobid") v = jid
        else if (f == "jobidraw") v = id
        else if (f == "jobname") v = val("JobName")
        else if (f == "partition") v = val("Partition")
        else if (f == "account") v = nul(val("Account"))
        else if (f == "qos") v = nul(val("QOS"))
        else if (f == "alloccpus" || f == "ncpus" || f == "reqcpus") v = val("NumCPUs")
        else if (f == "nnodes" || f == "allocnodes") v = val("NumNodes")
        else if (f == "state") v = st
        else if (f == "exitcode") v = val("ExitCode")
        else if (f == "derivedexitcode") v = val("DerivedExitCode")
        else if (f == "nodelist") v = nl
        else if (f == "start") v = val("StartTime")
        else if (f == "end") v = val("EndTime")
        else if (f == "submit") v = val("SubmitTime")
        else if (f == "eligible") v = val("EligibleTime")
        else if (f == "elapsed") v = val("RunTime")
        else if (f == "timelimit") v = val("TimeLimit")
        else if (f == "reason") v = val("Reason")
        else if (f == "workdir") v = val("WorkDir")
        else if (f == "user") v = uname
        else if (f == "uid") v = uid
        else if (f == "priority") v = val("Priority")
        else if (f == "restarts") v = val("Restarts")
        else v = ""
        out[i] = v
        line = line (i > 1 ? "\t" : "") v
    }
    rec[++n] = key "\t" line
}
END {
    # sort by (array) job id, then task id
    for (i = 2; i <= n; i++) { t = rec[i]; j = i - 1; while (j > 0 && rec[j] > t) { rec[j+1] = rec[j]; j-- } rec[j+1] = t }
    if (header) emit("", 1)
    for (r = 1; r <= n; r++) { s = rec[r]; sub(/^[^\t]*\t/, "", s); emit(s, 0) }
}
function emit(s, ishdr,   k, parts, o, w, v) {
    if (ishdr) { for (k = 1; k <= nf; k++) parts[k] = F[k] }
    else split(s, parts, "\t")
    o = ""
    for (k = 1; k <= nf; k++) {
        v = parts[k]
        if (parsable) o = o (k > 1 ? "|" : "") v
        else { w = (L[k] == "jobid" || L[k] == "jobidraw") ? 12 : 10; if (length(v) > w) v = substr(v, 1, w - 1) "+"; o = o (k > 1 ? " " : "") sprintf((L[k] ~ /^jobid/ ? "%-" : "%") w "s", v) }
    }
    if (parsable == 1) o = o "|"
    print o
    if (ishdr && !parsable) {
        o = ""
        for (k = 1; k <= nf; k++) { w = (L[k] == "jobid" || L[k] == "jobidraw") ? 12 : 10; d = sprintf("%" w "s", ""); gsub(/ /, "-", d); o = o (k > 1 ? " " : "") d }
        print o
    }
}'
SHIM_EOF
        if ! cmp -s "$SHIM_TMP" "$SHIM"; then install -m 0755 "$SHIM_TMP" "$SHIM"; log "installed sacct shim $SHIM"; fi
        rm -f "$SHIM_TMP"
    else
        log "not installing sacct shim: $SHIM exists and is not ours"
    fi
elif [[ -e "$SHIM" ]] && grep -q 'hpcxfer-sacct-shim' "$SHIM"; then
    rm -f "$SHIM"; log "removed sacct shim $SHIM"
fi

ctld_up() { pid_alive "$CTLD_PID" slurmctld && scontrol ping 2>/dev/null | grep -q 'is UP'; }
slurmd_up() { pid_alive "$SLURMD_PID" slurmd; }
node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1; }
node_usable() { # idle, or busy running jobs; not drained / down / not responding
    case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

CONF_SAME=0
if [[ -f "$CONF" ]] && cmp -s "$NEW_CONF" "$CONF"; then CONF_SAME=1; fi

# ---------------------------------------------------------- already up?
if [[ "$CONF_SAME" == 1 && "${HPCXFER_SLURM_FRESH:-0}" != 1 ]] && ctld_up && slurmd_up && node_usable; then
    echo "SLURM cluster is up (already running): node ${HOST} $(node_state), partition debug, MaxArraySize=${MAX_ARRAY_SIZE}"
    exit 0
fi

# ---------------------------------------------------------- (re)start
stop_daemon() { # pidfile name
    local pid
    pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid="$(cat "$1")"
    log "stopping $2 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do pid_alive "$1" "$2" || break; sleep 0.1; done
    if pid_alive "$1" "$2"; then log "$2 did not exit, sending SIGKILL"; kill -9 "$pid" 2>/dev/null || true; sleep 0.5; fi
    rm -f "$1"
}

if [[ "$CONF_SAME" != 1 ]]; then
    log "writing $CONF"
    # Config changed (or first run): restart daemons so everything re-reads it.
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld
    install -m 0644 "$NEW_CONF" "$CONF"
fi

if [[ "${HPCXFER_SLURM_FRESH:-0}" == 1 ]]; then
    log "HPCXFER_SLURM_FRESH=1: wiping slurmctld state"
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld
    rm -rf "${CTLD_STATE:?}"/* "${SLURMD_SPOOL:?}"/*
fi

touch "$JOBCOMP_LOG"

if ! ctld_up; then
    stop_daemon "$CTLD_PID" slurmctld   # stale/wedged process, if any
    log "starting slurmctld"
    # -i: ignore unreadable/incompatible state files instead of refusing to start
    slurmctld -i 9>&- || die "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
    for _ in $(seq $(( TIMEOUT * 5 ))); do ctld_up && break; sleep 0.2; done
    ctld_up || die "slurmctld not answering 'scontrol ping' after ${TIMEOUT}s; tail of $LOG_DIR/slurmctld.log:
$(logtail "$LOG_DIR/slurmctld.log")"
fi

if ! slurmd_up; then
    log "starting slurmd"
    slurmd 9>&- || die "slurmd failed to start; see $LOG_DIR/slurmd.log"
    # slurmd daemonizes; its pid file appears a moment after the command returns
    for _ in $(seq 50); do slurmd_up && break; sleep 0.1; done
fi

# ---------------------------------------------------------- wait for idle
deadline=$(( SECONDS + TIMEOUT ))
resumed=0
while :; do
    st="$(node_state)"
    if [[ "$st" == idle || "$st" == mixed || "$st" == allocated ]]; then break; fi
    if [[ "$resumed" == 0 && ( "$st" == *drain* || "$st" == down* ) ]]; then
        # left over from an earlier unclean stop; ReturnToService=2 handles most
        # cases, an explicit resume handles the rest
        scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
        resumed=1
    fi
    if (( SECONDS >= deadline )); then
        die "node ${HOST} not idle after ${TIMEOUT}s (state: '${st:-unknown}').
sinfo -R:
$(sinfo -R 2>&1)
tail of $LOG_DIR/slurmd.log:
$(logtail "$LOG_DIR/slurmd.log")
tail of $LOG_DIR/slurmctld.log:
$(logtail "$LOG_DIR/slurmctld.log")"
    fi
    slurmd_up || die "slurmd exited; tail of $LOG_DIR/slurmd.log:
$(logtail "$LOG_DIR/slurmd.log")"
    sleep 0.5
done

echo "SLURM cluster is up: node ${HOST} ${st} (${NODE_HW}, RealMemory=${MEM}), partition debug, MaxArraySize=${MAX_ARRAY_SIZE}"
