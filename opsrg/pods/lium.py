"""Renting a pod through the ``lium`` command line (package ``lium.io``).

opsrg calls the CLI rather than its SDK, so the user's own ``lium init`` configuration (API
key, SSH key) is the single source of credentials. The command lines used, from lium's
documented CLI:

- ``lium ps --format json``: the pods, each with ``name``, ``huid``, ``status`` and
  ``ssh_cmd`` (``ssh root@IP -p PORT``);
- ``lium up [EXECUTOR] [--gpu TYPE] --name NAME --yes``: rent a pod (``LIUM_TARGET`` is an
  executor id/index, or a GPU type such as ``H100``);
- ``lium rm NAME --yes``: give it back.

The pod's SSH details are recorded locally in ``.opsrg/lium_pod.json``; every later command
reaches the pod over plain SSH (:mod:`opsrg.ssh`).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from opsrg.core.atomic import atomic_write_json
from opsrg.core.errors import ConfigError, HostError
from opsrg.hosts.ssh import SSHTarget

EXE = "lium"
RECORD = ".opsrg/lium_pod.json"
READY = {"RUNNING"}
GPU_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def record_path(ctx) -> Path:
    return ctx.loaded.local_path(RECORD)


# A pod name or target reaches `lium` as one argument (never through a shell), but one starting with
# '-' would be read as an option, and whitespace or control characters are no name at all.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")


def _checked(key: str, value: str) -> str:
    if not NAME_RE.match(value or ""):
        raise ConfigError(f"{key}={value!r}: use letters, digits and '._:@-', not starting with '-' or '.'",
                          hint=f"fix {key} in workflow.env, then run: inv pod-up")
    return value


def up_argv(target: str, name: str) -> list[str]:
    """``lium up``: an executor id/index is positional, a GPU type goes to ``--gpu``."""
    _checked("LIUM_TARGET", target)
    _checked("LIUM_POD_NAME", name)
    argv = [EXE, "up"]
    looks_like_gpu = GPU_TYPE_RE.match(target) and not re.match(r"^[0-9a-f]{8}-", target)
    argv += ["--gpu", target] if looks_like_gpu else [target]
    return argv + ["--name", name, "--yes"]


def ps_argv() -> list[str]:
    return [EXE, "ps", "--format", "json"]


def rm_argv(name: str) -> list[str]:
    return [EXE, "rm", _checked("LIUM_POD_NAME", name), "--yes"]


def _call(argv: list[str], timeout: float = 300) -> str:
    if shutil.which(argv[0]) is None:
        raise ConfigError("POD_PROVIDER=lium needs the `lium` command (pip install lium.io, then `lium init`)")
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HostError(f"`{shlex.join(argv)}` did not answer within {timeout:g}s") from None
    if p.returncode != 0:
        raise HostError(f"`{shlex.join(argv)}` failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-1500:]}")
    return p.stdout


def list_pods() -> list[dict[str, Any]]:
    out = _call(ps_argv(), timeout=120).strip()
    try:
        pods = json.loads(out or "[]")
    except ValueError:
        raise HostError(f"`lium ps --format json` printed no JSON: {out[:300]!r}") from None
    if not isinstance(pods, list):
        raise HostError(f"`lium ps --format json`: expected a list, got {type(pods).__name__}")
    return pods


def find_pod(pods: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((p for p in pods if name in (p.get("name"), p.get("huid"), p.get("id"))), None)


def parse_ssh_cmd(cmd: str) -> tuple[str, str, int]:
    """``ssh root@1.2.3.4 -p 2222`` -> (user, host, port)."""
    words = shlex.split(cmd or "")
    if not words or words[0] != "ssh":
        raise HostError(f"lium gave no usable ssh command ({cmd!r})")
    port, dest, i = 22, "", 1
    while i < len(words):
        w = words[i]
        if w == "-p" and i + 1 < len(words):
            if not words[i + 1].isdigit():
                raise HostError(f"lium gave a non-numeric port in its ssh command ({cmd!r})")
            port, i = int(words[i + 1]), i + 2
            continue
        if w.startswith("-") and len(w) == 2 and i + 1 < len(words) and w in ("-i", "-o", "-l"):
            i += 2
            continue
        dest, i = w, i + 1
    user, _, host = dest.rpartition("@")
    if not host:
        raise HostError(f"lium gave no host in its ssh command ({cmd!r})")
    return user or "root", host, port


def up(ctx, *, poll: float = 10.0) -> dict[str, Any]:
    """Rent the pod (or find the one already rented under LIUM_POD_NAME), wait until it runs,
    and record how to reach it. Returns the record."""
    s = ctx.s
    name = s.lium_pod_name
    pod = find_pod(list_pods(), name)
    if pod is None:
        _call(up_argv(s.lium_target, name), timeout=s.lium_up_timeout_secs)
    t0 = time.monotonic()
    while True:
        pod = find_pod(list_pods(), name)
        if pod and str(pod.get("status", "")).upper() in READY and pod.get("ssh_cmd"):
            break
        if time.monotonic() - t0 > s.lium_up_timeout_secs:
            state = pod.get("status") if pod else "not listed"
            raise HostError(f"lium pod {name!r} is not running after {s.lium_up_timeout_secs:g}s ({state})",
                            hint="check `lium ps`; pod-up reuses the pod, run: inv pod-up")
        time.sleep(poll)
    user, host, port = parse_ssh_cmd(pod["ssh_cmd"])
    rec = {"name": name, "huid": pod.get("huid"), "id": pod.get("id"), "user": user, "host": host,
           "port": port, "ssh_cmd": pod["ssh_cmd"], "gpu": pod.get("config") or pod.get("gpu_type"),
           "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(record_path(ctx), rec)
    return rec


def recorded_target(ctx) -> SSHTarget:
    path = record_path(ctx)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no lium pod recorded in {path}", hint="inv pod-up") from None
    except ValueError as e:
        raise ConfigError(f"{path}: unreadable ({e})", hint="delete it, then run: inv pod-up") from None
    return SSHTarget(host=rec["host"], user=rec.get("user", "root"), port=int(rec.get("port", 22)),
                     key=ctx.s.ops_ssh_key)


def down(ctx) -> str:
    """Give the rented pod back (``lium rm``) and forget its record."""
    name = ctx.s.lium_pod_name
    if find_pod(list_pods(), name) is not None:
        _call(rm_argv(name))
        msg = f"lium pod {name!r} removed"
    else:
        msg = f"lium pod {name!r} was not listed by `lium ps`; nothing to remove"
    record_path(ctx).unlink(missing_ok=True)
    return msg
