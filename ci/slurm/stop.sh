#!/usr/bin/env bash
# Stop the CI SLURM cluster started by ci/slurm/start.sh: TERM, wait, then KILL each recorded PID.
#
# Idempotent: with nothing recorded or nothing running it does nothing and exits 0.
# Cancels the cluster's own jobs, kills only the PIDs in $UNIPIPE_SLURM_DIR/pids (default
# /tmp/unipipe-slurm/pids) in reverse start order, then drops the cluster's network namespace.
set -uo pipefail

STATE="${UNIPIPE_SLURM_DIR:-/tmp/unipipe-slurm}"
PIDS="$STATE/pids"
[[ -d "$PIDS" ]] || exit 0

alive() { [[ -f "$PIDS/$1" ]] && [[ "$(cat "/proc/$(cat "$PIDS/$1")/comm" 2>/dev/null)" == "$1" ]]; }

# Jobs first, so their slurmstepd and processes end with the cluster.
if alive slurmctld && mountpoint -q "$STATE/netns"; then
    SLURM_CONF="$STATE/etc/slurm.conf" timeout 10 nsenter --net="$STATE/netns" scancel --full \
        --user=root 2>/dev/null || true
    for _ in $(seq 1 25); do
        [[ -z "$(SLURM_CONF="$STATE/etc/slurm.conf" timeout 5 nsenter --net="$STATE/netns" \
            squeue -h -o %i 2>/dev/null)" ]] && break
        sleep 0.2
    done
fi

# Reverse of the start order so jobs end before the controller and the database.
for name in slurmd slurmctld slurmdbd mariadbd munged; do
    f="$PIDS/$name"
    [[ -f "$f" ]] || continue
    pid="$(cat "$f")"
    # Only signal the PID if it is still that daemon (not a reused PID).
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$comm" == "$name" ]]; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "[slurm-ci] $name (pid $pid) ignored TERM for 10s, sending KILL"
            kill -KILL "$pid" 2>/dev/null
        fi
        echo "[slurm-ci] stopped $name (pid $pid)"
    fi
    rm -f "$f"
done

# The /etc/slurm/slurm.conf link start.sh made, if it still points into this state dir.
if [[ -f "$PIDS/.owner" ]]; then
    link="$(cat "$PIDS/.owner")"
    if [[ -L "$link" && "$(readlink "$link")" == "$STATE/etc/slurm.conf" ]]; then
        rm -f "$link" && echo "[slurm-ci] removed $link"
    fi
    rm -f "$PIDS/.owner"
fi

if mountpoint -q "$STATE/netns" 2>/dev/null; then
    umount "$STATE/netns" && echo "[slurm-ci] removed network namespace $STATE/netns"
fi
exit 0
