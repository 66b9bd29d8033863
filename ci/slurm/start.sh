#!/usr/bin/env bash
# Start a single-node SLURM cluster on loopback (munged, MariaDB, slurmdbd, slurmctld, slurmd) for CI.
#
# Usage: bash ci/slurm/start.sh        (as root; Debian/Ubuntu with apt)
# State, configs, logs and PIDs live in $UNIPIPE_SLURM_DIR (default /tmp/unipipe-slurm).
#
# SLURM 22.05's daemons bind every interface and have no bind option, so they run in a network
# namespace of their own that has nothing but loopback ($STATE/netns): nothing outside this
# machine can reach them and they can reach nothing else. Every client (sinfo, sbatch, sacct,
# snakemake --executor slurm) must run in that namespace too:
#     bash ci/slurm/exec.sh <command...>
# Stop with: bash ci/slurm/stop.sh (kills exactly the PIDs recorded here, then drops the namespace).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${UNIPIPE_SLURM_DIR:-/tmp/unipipe-slurm}"
HOST="$(hostname -s)"
CTLD_PORT="${UNIPIPE_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${UNIPIPE_SLURMD_PORT:-6818}"
DBD_PORT="${UNIPIPE_SLURMDBD_PORT:-6819}"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
T0=$SECONDS
STARTED=0 # set once this run owns $STATE: only then does a failure stop what it started

log() { echo "[slurm-ci] $*"; }
die() {
    echo "[slurm-ci] ERROR: $*" >&2
    if ((STARTED)) && [[ -d "$STATE/log" ]]; then
        echo "[slurm-ci] daemon logs are in $STATE/log/ (last lines follow)" >&2
        tail -n 5 "$STATE"/log/*.log >&2 2>/dev/null || true
    fi
    if ((STARTED)); then
        echo "[slurm-ci] stopping what was started: bash $HERE/stop.sh" >&2
        bash "$HERE/stop.sh" >&2 || true
    fi
    exit 1
}

# Poll a command until it succeeds: wait_for <what> <timeout_s> <cmd...>; fails at once if the
# daemon spawned last ($WATCH) has died.
wait_for() {
    local what="$1" timeout_s="$2"
    shift 2
    local deadline=$((SECONDS + timeout_s))
    until "$@" >/dev/null 2>&1; do
        if [[ -n "${WATCH:-}" ]] && ! kill -0 "$(cat "$STATE/pids/$WATCH")" 2>/dev/null; then
            die "$WATCH exited while starting; see $STATE/log/$WATCH.out: $(tail -n 3 "$STATE/log/$WATCH.out")"
        fi
        ((SECONDS < deadline)) || die "$what not ready after ${timeout_s}s"
        sleep 0.2
    done
    log "$what ready ($((SECONDS - T0))s)"
}

# Run a command inside the cluster's loopback-only network namespace.
inns() { nsenter --net="$STATE/netns" "$@"; }

# Start a daemon in the background, log its stdout/stderr, record its PID as $STATE/pids/<name>.
# nsenter is called directly (not through inns, which would fork a subshell): it enters the
# namespace and execs the daemon, so $! is the daemon's own PID.
spawn() {
    local name="$1"
    shift
    nsenter --net="$STATE/netns" "$@" >"$STATE/log/$name.out" 2>&1 &
    echo $! >"$STATE/pids/$name"
    WATCH="$name"
    log "started $name (pid $!)"
}

# --- 0. preconditions -------------------------------------------------------------------------
[[ "$(id -u)" == 0 ]] || die "must run as root (daemons run as root on this throwaway node)"
if [[ -d "$STATE/pids" ]] && compgen -G "$STATE/pids/*" >/dev/null; then
    for f in "$STATE"/pids/*; do
        if [[ "$(cat "/proc/$(cat "$f")/comm" 2>/dev/null)" == "$(basename "$f")" ]]; then
            die "a cluster from $STATE is still running ($(basename "$f") pid $(cat "$f")); run stop.sh first"
        fi
    done
fi
for tool in nsenter unshare ip; do
    command -v "$tool" >/dev/null || die "$tool not found (util-linux / iproute2 are needed for the namespace)"
done
getent hosts "$HOST" | grep -q '^127\.' || die "host name $HOST must resolve to a 127.x address (see /etc/hosts)"

# --- 1. packages --------------------------------------------------------------------------------
install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get to install them"
    log "installing ${missing[*]}"

    # A policy-rc.d that exits 101 stops dpkg from starting the services itself.
    local policy=/usr/sbin/policy-rc.d saved=""
    if [[ -e "$policy" ]]; then
        saved="$(mktemp)"
        cp -p "$policy" "$saved"
    fi
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    local rc=0
    {
        if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then apt-get update -qq; fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    } >"${TMPDIR:-/tmp}/unipipe-slurm-apt.log" 2>&1 || rc=$?
    if [[ -n "$saved" ]]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
    ((rc == 0)) || die "apt-get install failed (rc $rc), see ${TMPDIR:-/tmp}/unipipe-slurm-apt.log"
    log "packages installed ($((SECONDS - T0))s)"
}
install_packages

# --- 2. state dir and configs -------------------------------------------------------------------
STARTED=1
if mountpoint -q "$STATE/netns" 2>/dev/null; then umount "$STATE/netns"; fi
rm -rf "$STATE"
mkdir -p "$STATE"/{etc,pids,log,run,munge,mysql,spool/ctld,spool/d}
chmod 700 "$STATE/munge"

# A persistent network namespace (bind-mounted on $STATE/netns) with only `lo`, brought up.
touch "$STATE/netns"
unshare --net="$STATE/netns" true || die "cannot create a network namespace (needs CAP_SYS_ADMIN)"
inns ip link set lo up || die "cannot bring up lo in the namespace"
# SLURM resolves its listen address with AI_ADDRCONFIG, which glibc answers only when some IPv4
# address other than 127.0.0.1 exists; a second loopback address satisfies it.
inns ip addr add 127.0.0.2/8 dev lo || die "cannot add 127.0.0.2 to lo in the namespace"
[[ "$(inns ip -o link show | wc -l)" == 1 ]] || die "the namespace has interfaces besides lo"

CPUS="$(nproc)"
MEM_MB=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 3 / 4 / 1024))
render() {
    sed -e "s|@STATE@|$STATE|g" -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" \
        -e "s|@MEM_MB@|$MEM_MB|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g" "$1" >"$2"
}
render "$HERE/slurm.conf.in" "$STATE/etc/slurm.conf"
render "$HERE/gres.conf.in" "$STATE/etc/gres.conf"
render "$HERE/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf"
chmod 600 "$STATE/etc/slurmdbd.conf"

export SLURM_CONF="$STATE/etc/slurm.conf"
# Clients must also find the config without SLURM_CONF: the executor plugin's job step
# (snakemake-executor-plugin-slurm-jobstep 0.6.1) strips every SLURM_* variable, SLURM_CONF
# included, before its inner `srun`, which then only looks at the compiled-in /etc/slurm.
SYSTEM_CONF=/etc/slurm/slurm.conf
if [[ -L "$SYSTEM_CONF" ]]; then
    # A link left by an earlier run of this script (dangling, or into a state dir) is replaced.
    target="$(readlink "$SYSTEM_CONF")"
    other="$(dirname "$(dirname "$target")")"
    [[ "$target" == */etc/slurm.conf && (! -e "$target" || -d "$other/pids") ]] ||
        die "$SYSTEM_CONF links to $target, not to a state dir of this script; refusing to replace it"
    if [[ "$other" != "$STATE" && -f "$other/pids/slurmctld" &&
        "$(cat "/proc/$(cat "$other/pids/slurmctld")/comm" 2>/dev/null)" == slurmctld ]]; then
        die "another CI cluster runs from $other; stop it first: UNIPIPE_SLURM_DIR=$other bash $HERE/stop.sh"
    fi
    rm -f "$SYSTEM_CONF"
elif [[ -e "$SYSTEM_CONF" ]]; then
    die "$SYSTEM_CONF exists (a real SLURM config?); refusing to replace it"
fi
mkdir -p /etc/slurm
ln -s "$SLURM_CONF" "$SYSTEM_CONF"
echo "$SYSTEM_CONF" >"$STATE/pids/.owner"
export MYSQL_UNIX_PORT="$STATE/mysql/mysqld.sock"
cat >"$STATE/env.sh" <<ENV
# Sourced by ci/slurm/exec.sh: how clients reach the CI cluster started by ci/slurm/start.sh.
export SLURM_CONF="$SLURM_CONF"
export UNIPIPE_SLURM_DIR="$STATE"
ENV
log "configs in $STATE/etc (host $HOST, $CPUS CPUs, $MEM_MB MB, 1 fake GPU)"

# --- 3. munged ------------------------------------------------------------------------------------
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$STATE/munge/munge.key"
spawn munged munged --foreground --force \
    --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket.2" \
    --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
    --seed-file="$STATE/munge/munged.seed"
munge_ok() { munge -n -S "$STATE/munge/munge.socket.2" | unmunge -S "$STATE/munge/munge.socket.2"; }
wait_for munged 20 munge_ok

# --- 4. MariaDB (unix socket only) ------------------------------------------------------------------
mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql/data" \
    --auth-root-authentication-method=socket --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 ||
    die "mariadb-install-db failed, see $STATE/log/mariadb-install.log"
spawn mariadbd mariadbd --no-defaults --user=root --datadir="$STATE/mysql/data" \
    --socket="$MYSQL_UNIX_PORT" --pid-file="$STATE/run/mariadbd.pid" --skip-networking \
    --log-error="$STATE/log/mariadbd.log" --innodb-buffer-pool-size=64M
wait_for mariadbd 60 inns mariadb-admin --no-defaults --socket="$MYSQL_UNIX_PORT" ping

# --- 5. slurmdbd ----------------------------------------------------------------------------------
# slurmdbd has no -f: it reads slurmdbd.conf next to $SLURM_CONF.
spawn slurmdbd slurmdbd -D
wait_for slurmdbd 60 inns bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT"

# --- 6. slurmctld, account and user -----------------------------------------------------------------
spawn slurmctld slurmctld -D -c -f "$SLURM_CONF"
wait_for slurmctld 60 inns scontrol ping
sacctmgr_ok() {
    inns sacctmgr -i add cluster unipipe-ci >/dev/null 2>&1 || true
    inns sacctmgr -i add account ci Description="unipipe CI" Organization=unipipe >/dev/null 2>&1 || true
    inns sacctmgr -i add user root DefaultAccount=ci Account=ci >/dev/null 2>&1 || true
    inns sacctmgr -n -P list associations user=root account=ci format=account | grep -qx ci
}
wait_for "account ci + user root" 30 sacctmgr_ok

# --- 7. slurmd ------------------------------------------------------------------------------------
spawn slurmd slurmd -D -N "$HOST" -f "$SLURM_CONF"
node_idle() { [[ "$(inns sinfo -h -N -n "$HOST" -o %T | head -n1)" == idle ]]; }
wait_for "node $HOST idle" 60 node_idle

# --- 8. smoke test: srun, sbatch, a GPU job, sacct ----------------------------------------------
[[ "$(inns srun -A ci -N1 -n1 -t 1 hostname -s)" == "$HOST" ]] || die "smoke srun failed"
[[ "$(env -u SLURM_CONF nsenter --net="$STATE/netns" sinfo -h -o %P | head -n1)" == "debug*" ]] ||
    die "clients without SLURM_CONF do not find the cluster through $SYSTEM_CONF"
JOB="$(inns sbatch --parsable -A ci -p gpu --gpus=1 -t 1 -o "$STATE/log/smoke-%j.out" \
    --wrap 'echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}"')"
job_done() {
    [[ "$(inns sacct -n -X -P -j "$JOB" -o State | head -n1)" == COMPLETED ]]
}
wait_for "smoke sbatch job $JOB (sacct COMPLETED)" 60 job_done
grep -q '^CUDA_VISIBLE_DEVICES=0$' "$STATE/log/smoke-$JOB.out" ||
    die "the gpu job did not see the fake GPU: $(cat "$STATE/log/smoke-$JOB.out")"

log "SLURM is up in $((SECONDS - T0))s: partitions $(inns sinfo -h -o %P | paste -sd,), account ci"
log "clients run inside its namespace: bash $HERE/exec.sh sinfo"
