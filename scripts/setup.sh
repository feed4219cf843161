#!/usr/bin/env bash
# One-time (and idempotent) set-up: Debian packages when root, the venv, the package.
# A second run finds everything in place and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

DEBS=(tmux rsync git openssh-server openssh-client slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[setup] warning: missing Debian packages (${missing[*]}); not root, so not installing them" >&2
  fi
fi

stamp="$VENV/.opsrg-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing opsrg and its dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c "import opsrg, invoke, fabric, numpy, numba, rich, filelock" # fail loudly if the install did not work
  touch "$stamp"
fi
# The environment disables bytecode writing; compile once so commands start fast.
"$VENV/bin/python" -m compileall -q opsrg tasks.py >/dev/null 2>&1 || true
