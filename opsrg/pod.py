"""The pod lifecycle: bring it up, check it, bootstrap it."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from .context import Context
from .errors import HostError

PREREQS = ("tmux", "rsync", "git")


def up(ctx: Context) -> str:
    """Local provider: the pod is a folder of this machine; create its layout."""
    for d in (ctx.outputs_dir, ctx.control_dir, f"{ctx.outputs_dir}/_tasks"):
        ctx.host.run(["mkdir", "-p", d])
    return f"pod ready: {ctx.s.pod_provider} host {ctx.host.name}, outputs in {ctx.outputs_dir}"


def status(ctx: Context) -> dict[str, Any]:
    info: dict[str, Any] = {"provider": ctx.s.pod_provider, "host": None, "reachable": False}
    try:
        host = ctx.host
        r = host.run("uptime -p 2>/dev/null || uptime", timeout=15)
        info.update(host=host.name, reachable=True, uptime=r.stdout.strip())
    except HostError as e:
        info["error"] = str(e)
        info["fsm_state"] = ctx.store.read().state.value
        return info
    r = host.run(["df", "-Pk", ctx.outputs_dir if host.exists(ctx.outputs_dir) else "/"], check=False)
    if r.ok and len(r.stdout.splitlines()) > 1:
        info["disk_free_gib"] = round(int(r.stdout.splitlines()[1].split()[3]) / 2**20, 1)
    r = host.run("command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total "
                 "--format=csv,noheader || true", check=False)
    info["gpus"] = [g.strip() for g in r.stdout.splitlines() if g.strip()]
    r = host.run(["tmux", "-L", ctx.s.ops_tmux_socket, "list-sessions", "-F", "#{session_name}"], check=False)
    info["tmux_sessions"] = r.stdout.split() if r.ok else []
    info["fsm_state"] = ctx.store.read().state.value
    return info


def check_prereqs(ctx: Context) -> dict[str, str | None]:
    """Each prerequisite's version on the pod, or None when it is missing."""
    script = "; ".join(f"printf '%s=' {p}; (command -v {p} >/dev/null && echo yes) || echo no" for p in PREREQS)
    script += f"; printf 'python='; {shlex.quote(ctx.s.remote_python_bin)} -c " \
              "'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null || echo no"
    r = ctx.host.run(script)
    found: dict[str, str | None] = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition("=")
        found[k] = None if v == "no" else v
    return found


def bootstrap(ctx: Context) -> str:
    found = check_prereqs(ctx)
    missing = [k for k in PREREQS if not found.get(k)]
    py = found.get("python")
    if not py or tuple(int(x) for x in re.findall(r"\d+", py)[:2]) < (3, 10):
        missing.append(f"python3>=3.10 (found {py or 'none'})")
    if missing:
        raise HostError(f"{ctx.host.name}: missing prerequisites: {', '.join(missing)}",
                        hint="install them (apt-get install tmux rsync git python3), then `inv bootstrap`")
    if ctx.loaded.env_file:
        ctx.host.write_text(ctx.pod_path(ctx.s.remote_env_path), ctx.loaded.env_file.read_text())
    return "bootstrapped: " + json.dumps(found)
