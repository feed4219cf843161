#!/usr/bin/env bash
# One-time (and idempotent) set-up: Debian packages when root, the venv, the package.
# A second run finds everything in place and returns in about a second.
#   scripts/setup.sh demo   what `make demo` needs: tmux, rsync, git
#   scripts/setup.sh test   what `make test` needs besides: sshd, Slurm, munge, MariaDB (the default)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
FOR=${1:-test}

DEBS=(tmux rsync git)
if [ "$FOR" = test ]; then
  DEBS+=(openssh-server openssh-client slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
fi
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # another install holding dpkg's lock (unattended-upgrades at boot) is waited for, not a failure
    wait=(-o DPkg::Lock::Timeout=300)
    if command -v fuser >/dev/null && fuser /var/lib/dpkg/lock-frontend >/dev/null 2>&1; then
      echo "[setup] another package install holds dpkg's lock: waiting for it (up to 5 minutes)" >&2
    fi
    apt-get "${wait[@]}" update -qq
    apt-get "${wait[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[setup] warning: missing Debian packages (${missing[*]}); not root, so not installing them" >&2
  fi
fi

stamp="$VENV/.opsrg-installed-$FOR"
extras=rg,dev
[ "$FOR" = demo ] && extras=rg
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing opsrg and its dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c "import opsrg, invoke, fabric, numpy, numba, rich, tmuxp, libtmux" # fail loudly if the install did not work
  [ "$FOR" = demo ] || "$VENV/bin/python" -c "import pytest, xdist, lium"
  touch "$stamp"
fi
# The environment disables bytecode writing; compile once so commands start fast.
"$VENV/bin/python" -m compileall -q opsrg tasks.py >/dev/null 2>&1 || true
