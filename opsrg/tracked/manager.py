"""Tracked tasks: long commands run detached, with files that say what happened.

Each task owns ``<outputs>/_tasks/<id>/``: ``command.sh`` (the exact command),
``stdout.log`` (stdout and stderr, streamed), ``status.json`` (``pending -> running ->
success|failed|timed_out``), ``heartbeat`` and ``supervise.py`` (the stdlib supervisor that
runs it). Observers never change a record except on evidence of death, which is recorded.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from opsrg.core import layout
from opsrg.core.errors import InputError, OpsError, TaskError
from opsrg.hosts.base import Host
from opsrg.hosts.local import LocalHost
from opsrg.tracked import supervisor
from opsrg.tracked.records import ID_RE, TAIL_BYTES, TaskPaths, TaskRecord, read_tail, tail_lines, validate_id
from opsrg.tracked.tmux import TmuxRunner

SUPERVISOR_SOURCE = Path(supervisor.__file__)
PROBE_EVERY = 2.0  # seconds between liveness probes of a task being waited on (its record is read each tick)


class TaskManager:
    """Create, observe and stop the tracked tasks under one outputs folder of one host."""

    def __init__(self, host: Host, outputs_dir: str, *, tmux_socket: str, tmux_session: str,
                 kill_grace: float = 5.0, stale_secs: float = 30.0) -> None:
        self.host = host
        self.root = f"{outputs_dir.rstrip('/')}/{layout.TASKS}"
        self.runner = TmuxRunner(host, tmux_socket, tmux_session)
        self.kill_grace, self.stale_secs = kill_grace, stale_secs

    def paths(self, task_id: str) -> TaskPaths:
        return TaskPaths(f"{self.root}/{validate_id(task_id)}")

    # ------------------------------------------------------------ start
    def run(self, task_id: str, command: str, *, timeout_secs: float | None = None, replace: bool = False,
            cwd: str | None = None, env: dict[str, str] | None = None, workdir: str = "",
            env_file: str = "") -> TaskRecord:
        """Create the task's files and start it in tmux; returns at once with the pending record.

        The id is claimed atomically: the files are written to a folder of this call's own under
        ``.incoming/``, which is then renamed onto ``<id>/``. That rename fails while another task holds the
        id, so of concurrent calls exactly one starts and the others fail (TaskError) without touching its
        files. With ``replace``, an ended task's folder is moved to ``.replaced/`` first, under its status
        lock (see :func:`supervisor.claim`). ``workdir`` (the project's checkout) is where the
        command runs without a ``cwd``, with its ``.venv/bin`` first on PATH, if the pod has them.
        ``env`` reaches the command's environment only (through tmux); ``env_file``, a file on the
        pod, is sourced just before it.
        """
        p = self.paths(task_id)
        if not command.strip():
            raise InputError("empty command: pass --cmd 'COMMAND'")
        if timeout_secs is not None and not (math.isfinite(timeout_secs) and timeout_secs > 0):
            raise InputError(f"--timeout-secs must be a positive number of seconds, got {timeout_secs}")
        if self.host.exists(p.root):  # a friendly early answer; the claim below is what decides
            try:
                old_state: str = self.status(task_id).state.value
            except TaskError:  # unreadable or missing status: nothing live to protect
                old_state = "unreadable"
            if not replace:
                raise self._refusal(task_id, {"why": "exists", "state": old_state})
            if old_state in ("pending", "running"):
                raise self._refusal(task_id, {"why": "live", "state": old_state})
        token = f"{task_id}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}"
        prep = TaskPaths(f"{self.root}/.incoming/{token}")
        rec = {
            "id": task_id, "state": "pending", "command": command, "cwd": cwd or "", "workdir": workdir,
            "env_file": env_file, "env_names": sorted(env or {}),  # the names only: values never land in a file
            "timeout_secs": timeout_secs, "kill_grace_secs": self.kill_grace, "runner": "tmux",
            "created_at": supervisor.now_iso(), "host": self.host.name, "exit_code": None,
            "tmux": {"socket": self.runner.socket, "session": self.runner.session, "window": task_id},
            "paths": {"status": p.status, "log": p.log, "command": p.command},
            # who created it: if this process dies before the window starts, observers know at once
            "launcher_pid": os.getpid(), "launcher_host": socket.gethostname(),
        }
        try:
            self.host.run(["mkdir", "-p", prep.root])
            self.host.write_text(prep.command, f"#!/usr/bin/env bash\n{command}\n", mode=0o755)
            self.host.write_text(prep.supervisor, SUPERVISOR_SOURCE.read_text(encoding="utf-8"))
            self.host.write_text(prep.log, "")
            self.host.write_text(prep.status, json.dumps(rec, indent=2, sort_keys=True) + "\n")
            out = self._claim(prep, p, f"{self.root}/.replaced/{token}" if replace else None)
        except BaseException:
            self._discard(prep)
            raise
        if not out.get("claimed"):
            self._discard(prep)  # ours alone: the winner's files are untouched
            raise self._refusal(task_id, out)
        try:
            target = self.runner.start(task_id, [self.host.python, p.supervisor, "run", p.root], env)
        except OpsError as e:
            self._call("finalize_failed", p, f"could not start: {e}")
            raise
        self._update(p, tmux=target.as_dict())
        return self.status(task_id, check=False)

    def register(self, task_id: str, *, runner: str, command: str, log: str,
                 **fields: Any) -> TaskPaths:
        """The pending record of a task another runner starts (a Slurm job): ``<id>/status.json``.

        A folder of an earlier task of that id is set aside under ``.replaced/`` first, as ``run
        --replace`` does; ``log`` is the path its runner writes output to, ``fields`` the rest of the
        record (``timeout_secs``, the runner's own section).
        """
        p = self.paths(task_id)
        rec = {"id": task_id, "state": "pending", "runner": runner, "command": command,
               "created_at": supervisor.now_iso(), "host": self.host.name, "exit_code": None,
               **fields, "paths": {"status": p.status, "command": command, "log": log}}
        keep = f"{self.root}/.replaced/{task_id}-{int(time.time() * 1000)}"
        if isinstance(self.host, LocalHost):  # many at a time (a Slurm launch): no process per file
            if os.path.exists(p.root):
                os.makedirs(os.path.dirname(keep), exist_ok=True)
                os.rename(p.root, keep)
            os.makedirs(p.root)
            supervisor.write_json_atomic(p.status, rec)
        else:
            self.host.run(f"if [ -e {shlex.quote(p.root)} ]; then mkdir -p {shlex.quote(os.path.dirname(keep))} && "
                          f"mv {shlex.quote(p.root)} {shlex.quote(keep)}; fi; mkdir {shlex.quote(p.root)}")
            self.host.write_text(p.status, json.dumps(rec, indent=2, sort_keys=True) + "\n")
        return p

    def _claim(self, prep: TaskPaths, p: TaskPaths, keep: str | None) -> dict[str, Any]:
        """:func:`supervisor.claim` where the task lives: in-process here, on the pod over SSH."""
        if isinstance(self.host, LocalHost):
            return supervisor.claim(prep.root, p.root, keep)
        r = self.host.run([self.host.python, prep.supervisor, "claim", prep.root, p.root, *([keep] if keep else [])])
        return json.loads(r.stdout.strip().splitlines()[-1])

    def _discard(self, prep: TaskPaths) -> None:
        """Remove this call's own prepared folder (gone already once claimed)."""
        try:
            self.host.run(["rm", "-rf", "--", prep.root], check=False)
        except OpsError:
            pass

    def _refusal(self, task_id: str, out: dict[str, Any]) -> TaskError:
        state, why = out.get("state", "unreadable"), out.get("why")
        if why == "live":
            return TaskError(f"task {task_id!r} is {state}: stop it first", hint=f"inv task-kill --id {task_id}")
        if why == "raced":
            return TaskError(f"task {task_id!r} was replaced by another task-run at the same moment ({state}); "
                             "this one did not start", hint=f"inv task-status --id {task_id}")
        return TaskError(f"task {task_id!r} already exists ({state}); pass --replace to start it again",
                         hint=f"inv task-status --id {task_id}")

    # ------------------------------------------------------------ observe
    def read(self, task_id: str) -> TaskRecord:
        p = self.paths(task_id)
        text = self.host.read_text(p.status)
        if text is None:
            known = ", ".join(self.ids()[:20]) or "none"  # names only: a folder without a record is no task
            raise TaskError(f"no task {task_id!r} under {self.root} (known: {known})")
        try:
            return TaskRecord.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as e:
            raise TaskError(f"{p.status}: unreadable task status ({e.__class__.__name__}: {e})",
                            hint="inspect it; `inv task-run --replace` starts the task afresh") from None

    def status(self, task_id: str, *, check: bool = True) -> TaskRecord:
        """The record; a live-looking task is probed and marked lost only on evidence."""
        rec = self.read(task_id)
        if check and not rec.state.is_terminal:
            out = self._call("check", self.paths(task_id))
            rec = TaskRecord.from_json(out["record"])
        return rec

    def probe(self, task_id: str) -> dict[str, Any]:
        """Liveness of the task's supervisor, read-only: {'alive': bool|None, 'evidence': str}."""
        return self._call("probe", self.paths(task_id))

    def ids(self) -> list[str]:
        """The task folders' names (folders only: a stray file under ``_tasks`` is no task)."""
        r = self.host.run(["find", self.root, "-mindepth", "1", "-maxdepth", "1", "-type", "d", "-printf", "%f\\n"],
                          check=False)
        return sorted(x for x in r.stdout.split("\n") if ID_RE.match(x) and not x.startswith("."))

    def list(self, *, check: bool = True,
             on_error: Callable[[TaskError], None] | None = None) -> list[TaskRecord]:
        """Every task; an unreadable record is reported through ``on_error``, never hidden. A record whose
        probe found its task dead but could not write that down (a full disk) is listed as last recorded,
        with the failure reported through ``on_error``."""
        out = []
        for task_id in self.ids():
            try:
                out.append(self.status(task_id, check=check))
            except TaskError as e:
                if on_error:
                    on_error(e)
            except OSError as e:
                if on_error:
                    on_error(TaskError(f"task {task_id}: could not record what its probe found: "
                                       f"{e.strerror or e} at {e.filename}; shown as last recorded"))
                try:
                    out.append(self.read(task_id))
                except TaskError:
                    pass
        return sorted(out, key=lambda t: t.created_at)

    def wait(self, task_id: str, timeout: float | None = None, poll: float = 0.1,
             on_tick: Callable[[TaskRecord], None] | None = None) -> tuple[TaskRecord, bool]:
        """Block until the task ends; returns (record, timed_out_waiting)."""
        from opsrg.core.errors import LinkDropped

        t0 = time.monotonic()
        last_check = 0.0
        try:
            rec = self.status(task_id)
        except LinkDropped:  # safe to repeat (see below)
            rec = self.status(task_id)
        while not rec.state.is_terminal:
            now = time.monotonic()
            if timeout is not None and now - t0 >= timeout:
                return rec, True
            time.sleep(poll)
            # Cheap file read each tick; the liveness probe every PROBE_EVERY seconds.
            try:
                if now - last_check >= PROBE_EVERY:
                    rec, last_check = self.status(task_id), now
                else:
                    rec = self.read(task_id)
            except LinkDropped:
                # Reading and probing are safe to repeat: the next tick reconnects (within the
                # host's retry budget) or raises UnreachableError; the task is not judged on it.
                continue
            if on_tick:
                on_tick(rec)
        return rec, False

    def tail(self, task_id: str, lines: int = 10) -> list[str]:
        """The last ``lines`` non-empty lines of the task's log: what a failure's reason quotes."""
        log = self.paths(task_id).log
        if isinstance(self.host, LocalHost):
            return read_tail(log, lines)
        r = self.host.run(f"tail -c {TAIL_BYTES} {shlex.quote(log)} 2>/dev/null || true", check=False)
        return tail_lines(r.stdout.encode(), lines)

    def logs(self, task_id: str, *, follow: bool = False, poll: float = 0.2,
             chunk: int = 1 << 20) -> Iterator[str]:
        """The log's content in pieces of at most ``chunk`` bytes (never the whole log in memory);
        with ``follow``, new text until the task ends. Read-only."""
        import codecs
        import contextlib

        p = self.paths(task_id)
        self.read(task_id)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span two pieces
        with contextlib.ExitStack() as stack:
            if isinstance(self.host, LocalHost):
                try:
                    fh = stack.enter_context(open(p.log, "rb"))
                except FileNotFoundError:
                    fh = None

                def piece(offset: int) -> bytes:
                    return fh.read(chunk) if fh is not None else b""
            else:
                def piece(offset: int) -> bytes:
                    return self._remote_piece(p.log, offset, 4 * chunk)
            offset, last_pass = 0, not follow
            while True:
                data = piece(offset)
                if data:
                    offset += len(data)
                    text = decoder.decode(data)
                    if text:
                        yield text
                    continue
                if last_pass:
                    rest = decoder.decode(b"", final=True)
                    if rest:
                        yield rest
                    return
                if self.read(task_id).state.is_terminal:
                    last_pass = True  # read what it wrote before it ended, then stop
                    continue
                time.sleep(poll)

    def _remote_piece(self, path: str, offset: int, size: int) -> bytes:
        """Bytes ``offset..offset+size`` of a file on the pod (base64 over the command's stdout)."""
        import base64

        code = ("import base64, sys\ntry:\n    f = open(sys.argv[1], 'rb')\nexcept FileNotFoundError:\n"
                "    sys.exit(0)\nf.seek(int(sys.argv[2]))\n"
                "sys.stdout.write(base64.b64encode(f.read(int(sys.argv[3]))).decode())")
        r = self.host.run([self.host.python, "-c", code, path, str(offset), str(size)])
        return base64.b64decode(r.stdout.strip())

    # ------------------------------------------------------------ control
    def kill(self, task_id: str) -> TaskRecord:
        p = self.paths(task_id)
        rec = self.read(task_id)
        if rec.state.is_terminal:
            return rec
        return TaskRecord.from_json(self._call("kill", p))

    def attach_argv(self, task_id: str) -> list[str]:
        rec = self.read(task_id)
        from opsrg.tracked.tmux import TmuxTarget

        t = TmuxTarget(**{k: rec.tmux.get(k, "") for k in ("socket", "session", "window", "window_id")})
        if rec.state.is_terminal or not self.runner.window_exists(task_id):
            raise TaskError(f"task {task_id!r} is {rec.state}; its tmux window is gone",
                            hint=f"inv task-logs --id {task_id}")
        return self.runner.attach_argv(t)

    # ------------------------------------------------------------ the single writer
    def _update(self, p: TaskPaths, **changes: Any) -> None:
        if isinstance(self.host, LocalHost):
            supervisor.update_status(p.root, **changes)
        else:
            code = ("import json,sys; sys.path.insert(0, sys.argv[1]); import supervise; "
                    "supervise.update_status(sys.argv[1], **json.loads(sys.argv[2]))")
            self.host.run([self.host.python, "-c", code, p.root, json.dumps(changes)])

    def _call(self, what: str, p: TaskPaths, arg: str = "") -> dict[str, Any]:
        """Run a supervisor operation where the task lives: in-process here, remotely over SSH."""
        if what == "finalize_failed":
            self._update(p, state="failed", reason=arg, ended_at=supervisor.now_iso())
            return {}
        if isinstance(self.host, LocalHost):
            if what == "check":
                return supervisor.check(p.root, self.stale_secs)
            if what == "probe":
                return supervisor.probe(p.root, self.stale_secs)
            return supervisor.request_kill(p.root, self.kill_grace)
        extra = str(self.kill_grace if what == "kill" else self.stale_secs)
        r = self.host.run([self.host.python, p.supervisor, what, p.root, extra])
        return json.loads(r.stdout.strip().splitlines()[-1])


def quote_cmd(argv: list[str]) -> str:
    return shlex.join(argv)
