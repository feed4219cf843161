"""Renting a pod through the ``lium`` command line (PyPI ``lium-io``), as the CLI behaves.

opsrg calls the CLI rather than its SDK, so the user's own lium configuration (API key, SSH key)
is the single source of credentials. Every call runs with ``LIUM_OUTPUT=json`` (an error is one
JSON line on stderr: its code, message and hint), never at a prompt and never interactively:

- ``lium up NODE|--gpu TYPE --name NAME --yes --json --timeout S --ttl T``: rent, wait until the
  pod is RUNNING with an ssh command, print ``{"pod": ...}`` and return (without ``--json`` it
  would open an SSH session). lium's ``--timeout`` sits below opsrg's own bound on the call, so
  lium gives up (and says which pod it left) before opsrg would kill it;
- ``lium ps --format json``: the pods (``id``, ``huid``, ``name``, ``status``, ``ssh_cmd``);
- ``lium rm ID --yes``: give one pod back, by the id recorded at ``pod-up`` (names are not
  unique to lium, ``all`` and numbers mean other things there); exit 5 means it is gone already.

The pod's record, ``.opsrg/lium_pod.json``, is written as soon as a rented pod's id is known
(also when it failed to start or is not ready yet), so no pod that costs money goes unrecorded.
Its host key is kept in a file of its own (``.opsrg/lium_known_hosts/<pod id>``), dropped at
``pod-down``: providers reuse host:port, and a new pod there has a new key.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsrg.core.atomic import atomic_write_json
from opsrg.core.errors import ConfigError, HostError
from opsrg.hosts.ssh import SSHTarget

EXE = "lium"
RECORD = ".opsrg/lium_pod.json"
KNOWN_HOSTS_DIR = ".opsrg/lium_known_hosts"
READY = "RUNNING"  # and an ssh command: lium's own rule
# Statuses a pod never leaves (lium's own list): waiting on one is waiting forever.
TERMINAL = frozenset({"FAILED", "STOPPED", "ERROR", "TERMINATED", "DELETED", "REMOVED", "CANCELLED",
                      "CREATION_FAILED", "BROKEN", "REBOOT_FAILED", "DELETING"})
EXIT_NOT_FOUND = 5
CALL_GRACE_SECS = 60.0  # opsrg's bound on `lium up` is lium's own --timeout plus this
# what lium needs to run unattended: errors as JSON, no prompt, digits never a row of an old listing
CALL_ENV = {"LIUM_OUTPUT": "json", "LIUM_NONINTERACTIVE": "1", "LIUM_NO_POD_INDEX": "1"}


@dataclass(frozen=True)
class LiumError:
    """What a failed ``lium`` call said: its exit code and, from its JSON line, code, message, hint, data."""

    exit_code: int
    code: str
    message: str
    hint: str
    data: dict[str, Any]

    @classmethod
    def parse(cls, exit_code: int, stdout: str, stderr: str) -> LiumError:
        for line in reversed((stderr or "").strip().splitlines()):  # progress lines come first under --json
            try:
                env = json.loads(line)
            except ValueError:
                continue
            if isinstance(env, dict) and isinstance(env.get("error"), dict):
                e = env["error"]
                return cls(exit_code, str(e.get("code", "")), str(e.get("message", "")), str(e.get("hint", "")),
                           env.get("data") if isinstance(env.get("data"), dict) else {})
        text = (stderr or stdout or "").strip()
        return cls(exit_code, "", text[-1500:], "", {})


def classify(pod: dict[str, Any]) -> str:
    """``ready``, ``dead`` (a status it never leaves) or ``starting``."""
    status = str(pod.get("status", "")).upper()
    if status == READY and pod.get("ssh_cmd"):
        return "ready"
    return "dead" if status in TERMINAL else "starting"


# ---------------------------------------------------------------- command lines (pure)
def up_argv(s, timeout_secs: int) -> list[str]:
    """``lium up`` from the settings: one node or a GPU type, never an interactive session."""
    argv = [EXE, "up", s.lium_node] if s.lium_node else [EXE, "up", "--gpu", s.lium_gpu]
    argv += ["--name", s.lium_pod_name, "--yes", "--json", "--timeout", str(int(timeout_secs))]
    if s.lium_ttl != "none":
        argv += ["--ttl", s.lium_ttl]
    if s.lium_budget_usd:
        argv += ["--budget", f"{s.lium_budget_usd:g}"]
    if s.lium_gpu_count:
        argv += ["-c", str(s.lium_gpu_count)]
    if s.lium_template:
        argv += ["-t", s.lium_template]
    if s.lium_image:
        argv += ["--image", s.lium_image]
        for word in shlex.split(s.lium_env):
            argv += ["-e", word]
    if s.lium_volume:
        argv += ["--volume", s.lium_volume]
    if s.lium_verify_gpus:
        argv.append("--verify-gpus")
    return argv


def ps_argv() -> list[str]:
    return [EXE, "ps", "--format", "json"]


def rm_argv(pod_id: str) -> list[str]:
    if not pod_id or pod_id.startswith("-") or pod_id.lower() == "all" or "," in pod_id or pod_id.isdigit():
        raise HostError(f"refusing to remove lium pod {pod_id!r}: not a pod id")
    return [EXE, "rm", pod_id, "--yes"]


# ---------------------------------------------------------------- calls
def _call(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise ConfigError("POD_PROVIDER=lium needs the `lium` command (pip install lium-io, then `lium init`)")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, **CALL_ENV})
    except subprocess.TimeoutExpired:
        raise HostError(f"`{shlex.join(argv)}` did not answer within {timeout:g}s") from None


def _failed(argv: list[str], err: LiumError) -> Exception:
    """The error a user can act on, from lium's own code."""
    cmd = shlex.join(argv[:2])
    if err.code == "no_api_key":
        return ConfigError(f"`{cmd}`: lium has no API key", hint="set LIUM_API_KEY or run `lium init`")
    if err.code in ("invalid_api_key", "permission_denied", "missing_scope", "budget_exceeded",
                    "insufficient_balance"):
        return ConfigError(f"`{cmd}`: {err.message} ({err.code})", hint=err.hint or "check `lium init`")
    if err.code in ("value_error", "invalid_arguments", "confirmation_required", "config_error"):
        return ConfigError(f"`{cmd}`: {err.message} ({err.code})", hint=err.hint or "fix the LIUM_* settings")
    what = f" ({err.code})" if err.code else ""
    return HostError(f"`{cmd}` failed with exit {err.exit_code}{what}: {err.message}",
                     hint=err.hint or "see `lium ps`")


def list_pods() -> list[dict[str, Any]]:
    argv = ps_argv()
    p = _call(argv, timeout=120)
    if p.returncode != 0:
        raise _failed(argv, LiumError.parse(p.returncode, p.stdout, p.stderr))
    try:
        pods = json.loads(p.stdout.strip() or "[]")
    except ValueError:
        raise HostError(f"`lium ps --format json` printed no JSON: {p.stdout[:300]!r}") from None
    if not isinstance(pods, list):
        raise HostError(f"`lium ps --format json`: expected a list, got {type(pods).__name__}")
    return pods


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


# ---------------------------------------------------------------- the record
def record_path(ctx) -> Path:
    return ctx.loaded.local_path(RECORD)


def known_hosts_path(ctx, pod_id: str) -> Path:
    """The pod's own known_hosts file; an id that is no plain file name (``..``, a slash) is hashed."""
    import hashlib
    import re

    name = pod_id if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", pod_id) else \
        "id-" + hashlib.sha256(pod_id.encode()).hexdigest()[:32]
    return ctx.loaded.local_path(KNOWN_HOSTS_DIR) / name


def read_record(ctx) -> dict[str, Any] | None:
    path = record_path(ctx)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ConfigError(f"{path}: unreadable ({e})",
                          hint="check `lium ps` for the pod it named, delete the file, then run: inv pod-up") from None
    return rec if isinstance(rec, dict) else None


def _record(ctx, pod: dict[str, Any], **extra: Any) -> dict[str, Any]:
    rec = {"id": pod.get("id") or pod.get("pod_id"), "name": pod.get("name") or pod.get("pod_name"),
           "huid": pod.get("huid"), "status": str(pod.get("status", "")).upper(),
           "gpu": pod.get("config") or pod.get("gpu_type"), "removal_at": pod.get("removal_scheduled_at"),
           "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    if classify(pod) == "ready":
        rec["user"], rec["host"], rec["port"] = parse_ssh_cmd(pod["ssh_cmd"])
        rec["ssh_cmd"] = pod["ssh_cmd"]
    atomic_write_json(record_path(ctx), rec)
    return rec


def recorded_host(ctx) -> tuple[SSHTarget, Path]:
    """How to reach the recorded pod, and the known_hosts file of its own."""
    rec = read_record(ctx)
    if rec is None:
        raise ConfigError(f"no lium pod recorded in {record_path(ctx)}", hint="inv pod-up")
    if not rec.get("host"):
        raise ConfigError(f"lium pod {rec.get('name')!r} (id {rec.get('id')}) is not running yet "
                          f"(recorded {rec.get('status') or 'starting'})", hint="inv pod-up")
    target = SSHTarget(host=rec["host"], user=rec.get("user", "root"), port=int(rec.get("port", 22)),
                       key=ctx.s.ops_ssh_key or lium_ssh_key())
    return target, known_hosts_path(ctx, str(rec["id"]))


def lium_ssh_key() -> str:
    """The private key lium registers for its pods (``<key>.pub`` is what it sends): LIUM_SSH_KEY_PATH,
    ``[ssh] key_path`` of ``~/.lium/config.ini``, else the first of ``~/.ssh/id_ed25519``, id_rsa, id_ecdsa."""
    if os.environ.get("LIUM_SSH_KEY_PATH"):
        return os.path.expanduser(os.environ["LIUM_SSH_KEY_PATH"])
    cfg = configparser.ConfigParser()
    try:
        cfg.read(Path.home() / ".lium" / "config.ini", encoding="utf-8")
        if cfg.get("ssh", "key_path", fallback=""):
            return os.path.expanduser(cfg.get("ssh", "key_path"))
    except configparser.Error:
        pass
    for name in ("id_ed25519", "id_rsa", "id_ecdsa"):
        path = Path.home() / ".ssh" / name
        if path.is_file():
            return str(path)
    return ""


# ---------------------------------------------------------------- pod-up / pod-down
def _find(pods: list[dict[str, Any]], pod_id: str) -> dict[str, Any] | None:
    return next((p for p in pods if p.get("id") == pod_id), None)


def _rented_since(pods: list[dict[str, Any]], name: str, since: float) -> list[dict[str, Any]]:
    """The pods named ``name`` that were created after ``since`` (a minute's slack for clocks)."""
    from opsrg.core.clock import parse_iso

    out = []
    for pod in pods:
        try:
            created = parse_iso(str(pod.get("created_at")))
        except ValueError:
            continue
        if pod.get("name") == name and created >= since - 60:
            out.append(pod)
    return out


def _dead(pod: dict[str, Any]) -> HostError:
    return HostError(f"lium pod {pod.get('name')!r} (id {pod.get('id')}) is {pod.get('status')}: it will not start",
                     hint="give it back with: inv pod-down; then rent another with: inv pod-up")


def _wait(ctx, pod: dict[str, Any], budget: float, poll: float, **extra: Any) -> dict[str, Any]:
    """Record the pod as listed; while it is still starting, poll `lium ps` until it runs or can no
    longer. Returns the record of a running pod."""
    pod_id, t0 = pod.get("id"), time.monotonic()
    while True:
        state = classify(pod)
        if state != "starting" or time.monotonic() - t0 > budget:
            rec = _record(ctx, pod, **extra)
            if state == "ready":
                return rec
            if state == "dead":
                raise _dead(pod)
            raise HostError(f"lium pod {pod.get('name')!r} (id {pod_id}) is not running after {budget:g}s "
                            f"({pod.get('status')})", hint="it is recorded: inv pod-up waits again, inv pod-down removes it")
        time.sleep(poll)
        listed = _find(list_pods(), str(pod_id))
        if listed is None:
            raise HostError(f"lium pod {pod_id} is no longer listed by `lium ps`", hint="inv pod-down; inv pod-up")
        pod = listed


def up(ctx, *, poll: float = 5.0) -> dict[str, Any]:
    """Rent the pod, or wait for / reuse the one recorded, and record how to reach it."""
    s = ctx.s
    rec = read_record(ctx)
    if rec and rec.get("id"):
        pod = _find(list_pods(), rec["id"])
        if pod is not None:  # reused when running, waited for while starting, reported when dead
            return _wait(ctx, pod, s.lium_up_timeout_secs, poll)
        record_path(ctx).unlink(missing_ok=True)  # gone (removed, expired): rent a new one
    timeout = max(1, int(s.lium_up_timeout_secs))
    argv = up_argv(s, timeout)
    started = time.time()
    try:
        p = _call(argv, timeout=timeout + CALL_GRACE_SECS)
    except HostError as e:  # lium itself hung past its own --timeout: find what it rented, record it
        mine = _rented_since(list_pods(), s.lium_pod_name, started)
        if len(mine) == 1:
            _record(ctx, mine[0], error=str(e.message))
            e.hint = "the pod it rented is recorded: inv pod-up waits for it, inv pod-down gives it back"
        elif mine:
            e.hint = (f"lium lists {len(mine)} new pods named {s.lium_pod_name!r} (ids "
                      f"{', '.join(str(x.get('id')) for x in mine)}): remove them with `lium rm ID`")
        raise
    if p.returncode != 0:
        err = LiumError.parse(p.returncode, p.stdout, p.stderr)
        if err.data.get("pod_id"):  # a pod was rented: it costs money until removed, so it is recorded
            status = "FAILED" if err.code == "pod_start_failed" else "STARTING"
            _record(ctx, {"id": err.data["pod_id"], "name": err.data.get("pod_name"), "status": status},
                    error=f"{err.message} ({err.code})")
            raise HostError(f"lium pod {err.data.get('pod_name')!r} (id {err.data['pod_id']}) did not come up: "
                            f"{err.message} ({err.code})",
                            hint="it is recorded: inv pod-up tries it again, inv pod-down gives it back")
        raise _failed(argv, err)
    try:
        out = json.loads(p.stdout)
        pod = out["pod"]
    except (ValueError, KeyError, TypeError):
        raise HostError(f"`lium up --json` printed no pod: {p.stdout[:300]!r}") from None
    return _wait(ctx, pod, s.lium_up_timeout_secs, poll, termination_time=out.get("termination_time"))


def down(ctx) -> str:
    """Give the recorded pod back (``lium rm <id>``), then forget it and its host key."""
    rec = read_record(ctx)
    if not rec or not rec.get("id"):
        record_path(ctx).unlink(missing_ok=True)
        return f"no lium pod recorded in {record_path(ctx)}; nothing to remove (see `lium ps`)"
    argv = rm_argv(str(rec["id"]))
    p = _call(argv, timeout=300)
    if p.returncode == 0:
        msg = f"lium pod {rec.get('name')!r} (id {rec['id']}) removed"
    elif p.returncode == EXIT_NOT_FOUND:
        msg = f"lium pod {rec.get('name')!r} (id {rec['id']}) was already gone"
    else:
        raise _failed(argv, LiumError.parse(p.returncode, p.stdout, p.stderr))
    known_hosts_path(ctx, str(rec["id"])).unlink(missing_ok=True)
    record_path(ctx).unlink(missing_ok=True)
    return msg
