#!/usr/bin/env bash
# Run a command as a client of the CI SLURM cluster: inside its loopback-only network namespace,
# with SLURM_CONF pointing at its config.
#
# Usage: bash ci/slurm/exec.sh sinfo
#        bash ci/slurm/exec.sh snakemake --profile profiles/slurm-ci ...
# Exits 3 with a message when no cluster from $UNIPIPE_SLURM_DIR (default /tmp/unipipe-slurm) is up.
set -euo pipefail

STATE="${UNIPIPE_SLURM_DIR:-/tmp/unipipe-slurm}"
if [[ ! -f "$STATE/env.sh" ]] || ! mountpoint -q "$STATE/netns" 2>/dev/null; then
    echo "[slurm-ci] no CI SLURM cluster in $STATE (start one with: bash ci/slurm/start.sh)" >&2
    exit 3
fi
# shellcheck source=/dev/null
source "$STATE/env.sh"
exec nsenter --net="$STATE/netns" "$@"
