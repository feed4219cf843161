# slurm-local-lib.sh: the process helpers of slurm-local-up.sh and slurm-local-down.sh (sourced).

log() { echo "[slurm-local] $*" >&2; }

# A pid is "running" if /proc has it and it is not a zombie: PID 1 on these machines does not
# reap orphans, so a dead daemon can linger as <defunct> with its old name in /proc/PID/comm.
running() { local st; st=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null); [ -n "$st" ] && [ "$st" != Z ]; }
alive() { # alive PIDFILE NAME: pid file points at a running process with that name
  local pid; [ -s "$1" ] || return 1; pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
stop() { # stop PIDFILE NAME: SIGTERM, wait up to 10 s, then SIGKILL
  alive "$1" "$2" || { rm -f "$1"; return 0; }
  local pid; pid=$(cat "$1"); kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then echo "[slurm-local] $2 ($pid) ignored SIGTERM: SIGKILL" >&2; kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$1"; echo "[slurm-local] $2 stopped" >&2
}
