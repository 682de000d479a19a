#!/usr/bin/env bash
# Install a single-node SLURM (controller + compute daemon + client tools) and MUNGE from the distribution's
# packages, for tests/test_slurm.py. Idempotent: packages that are already installed are not touched, and a
# second run is a no-op apart from `dpkg-query`.
#
# The packages' own services are NOT started or enabled here: tests/slurm_cluster.py writes its own slurm.conf
# into a temporary directory (exported as SLURM_CONF) and runs munged/slurmctld/slurmd as child processes, so
# nothing under /etc/slurm is configured or needed.
#
# Usage (as root, or with sudo available):  .ci/install-slurm.sh
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-slurm: already installed: ${PACKAGES[*]}"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "install-slurm: installing ${missing[*]}"
  # policy-rc.d 101 keeps the packages' init scripts from starting daemons inside containers/CI runners
  # (they would fail for lack of a slurm.conf, and we start our own anyway).
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
  fi
  trap '[ "$created_policy" -eq 1 ] && $SUDO rm -f "$policy"' EXIT
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Report what the tests will use.
for b in munged slurmctld slurmd sbatch squeue sinfo scancel; do
  command -v "$b" >/dev/null || { echo "install-slurm: $b not on PATH after install" >&2; exit 1; }
done
slurmctld -V
