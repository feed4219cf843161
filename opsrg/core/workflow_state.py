"""The persisted workflow state: ``_control/workflow_state.json`` and its history log.

The state file holds the current state only, so it stays small however long a pod lives; every
transition is also appended, under the same lock, to ``workflow_state.history.jsonl`` beside it
(one JSON object a line), which ``fsm-history`` reads. A file of an older opsrg, with its
history inline, is read as it is and migrated on its first write.

Readers never lock (writes are atomic renames); writers hold ``workflow_state.json.lock`` for
the read-check-write, so 20 concurrent commands never lose an update. A long command checks
its state up front, runs unlocked, and commits with a compare-and-set: if somebody moved the
state meanwhile, the commit refuses instead of overwriting.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsrg.core import fsm
from opsrg.core.atomic import atomic_write_bytes, atomic_write_json, locked
from opsrg.core.clock import now_iso
from opsrg.core.errors import ConfigError, IllegalStateError
from opsrg.core.fsm import State

HISTORY_SUFFIX = ".history.jsonl"


@dataclass
class WorkflowState:
    state: State = State.INIT
    updated_at: str = ""
    command: str = ""
    transitions: int = 0
    log: Path | None = field(default=None, repr=False)
    inline: list[dict[str, Any]] = field(default_factory=list, repr=False)  # an older file's history

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every recorded transition, oldest first (read from the log on demand)."""
        return read_history(self.log, self.inline)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "updated_at": self.updated_at,
            "command": self.command,
            "transitions": self.transitions,
            "history_log": self.log.name if self.log else "",
        }


def read_history(log: Path | None, inline: list[dict[str, Any]] = (), last: int | None = None) -> list[dict[str, Any]]:
    """The transitions of ``inline`` (not yet migrated) and then of the log; ``last``: only the newest N.

    A torn last line (a writer killed inside its append) is skipped: it never committed a state.
    """
    lines = _tail_lines(log, last) if log is not None else []
    out = list(inline)
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except ValueError:
            continue
    return out[-last:] if last else out


def _tail_lines(path: Path, last: int | None, block: int = 1 << 16) -> list[str]:
    """The file's lines, or with ``last`` about the newest ``last`` of them, reading from the end."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return []
    with fh:
        if not last:
            return fh.read().decode("utf-8", "replace").splitlines()
        fh.seek(0, os.SEEK_END)
        pos, data = fh.tell(), b""
        while pos > 0 and data.count(b"\n") <= last:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
        lines = data.decode("utf-8", "replace").splitlines()
        return lines[1:] if pos > 0 else lines  # the first one may be cut


class StateStore:
    """One workflow state file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> WorkflowState:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return WorkflowState()
        try:
            data = json.loads(raw)
            inline = list(data.get("history", []))
            return WorkflowState(
                state=fsm.parse_state(data["state"]),
                updated_at=str(data.get("updated_at", "")),
                command=str(data.get("command", "")),
                transitions=int(data.get("transitions", len(inline))),
                log=self.log_path,
                inline=inline,
            )
        except (ValueError, KeyError, TypeError, AttributeError, IllegalStateError) as e:
            raise ConfigError(
                f"{self.path}: workflow state file is unreadable ({e.__class__.__name__}: {e})",
                hint="inspect it, then `inv fsm-reset STATE` to rewrite it",
            ) from None

    @property
    def log_path(self) -> Path:
        return self.path.with_name(self.path.stem + HISTORY_SUFFIX)

    def history(self, last: int | None = None) -> list[dict[str, Any]]:
        ws = self.read()
        return read_history(self.log_path, ws.inline, last)

    def _write(self, ws: WorkflowState) -> None:
        atomic_write_json(self.path, ws.to_json())

    def _append(self, ws: WorkflowState, entry: dict[str, Any]) -> None:
        """Append ``entry`` to the log (under the caller's lock); an older inline history moves there first."""
        log = self.log_path
        if ws.inline:  # migrate: the inline entries, then whatever the log already has, in one rename
            old = log.read_bytes() if log.exists() else b""
            atomic_write_bytes(log, b"".join(json.dumps(h, sort_keys=True).encode() + b"\n" for h in ws.inline) + old)
            ws.inline = []
        fd = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            line = json.dumps(entry, sort_keys=True).encode() + b"\n"
            end = os.lseek(fd, 0, os.SEEK_END)
            if end and os.pread(fd, 1, end - 1) != b"\n":  # a torn line of a killed writer: end it first
                line = b"\n" + line
            os.write(fd, line)  # one write: whole or nothing
            os.fsync(fd)
        finally:
            os.close(fd)

    def set(self, target: State, command: str, *, expect: State | None = None, note: str = "") -> WorkflowState:
        """Move to ``target`` under the lock; with ``expect``, only from that state (or none at all when
        it moved meanwhile to ``target`` itself: a sweep-cancel racing the sweep's own end, recorded
        by a monitor, finds its outcome already there, nothing to overwrite)."""
        with locked(self.path):
            return self._set_locked(target, command, expect=expect, note=note)

    def _set_locked(self, target: State, command: str, *, expect: State | None = None,
                    note: str = "") -> WorkflowState:
        ws = self.read()
        if expect is not None and ws.state not in (expect, target):
            raise IllegalStateError(
                f"workflow state changed from {expect.value} to {ws.state.value} while "
                f"'{command}' ran (by '{ws.command}' at {ws.updated_at}); not overwriting it"
            )
        if expect is not None and ws.state == target != expect:
            return ws
        entry = {
            "from": ws.state.value,
            "to": target.value,
            "command": command,
            "at": now_iso(),
            "user": _user(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        if note:
            entry["note"] = note
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._append(ws, entry)
        ws.state, ws.updated_at, ws.command = target, entry["at"], command
        ws.transitions += 1
        self._write(ws)
        return ws

    @contextlib.contextmanager
    def claim(self, command: str, *, enforce: bool = True, note: str = "") -> Iterator[WorkflowState]:
        """Check ``command`` may run, run the body and commit its target, all under one lock.

        For a command whose effect must be tied to the state it checked (``sweep-start``: two at
        once must not both launch): nobody can move the state between the check and the commit.
        The body should be short (it blocks every other writer); a body that raises commits nothing.
        """
        with locked(self.path):
            ws = self.read()
            msg = _refuse(command, ws.state, enforce)
            yield ws
            target = fsm.target_of(command, ws.state) if msg is None else fsm.rule_for(command).target
            if target is not None and target != ws.state:
                self._set_locked(target, command, expect=ws.state, note=note)

    def check(self, command: str, *, enforce: bool = True) -> WorkflowState:
        """The check of :meth:`transition` alone (a dry run): refuse, or with ``enforce=False`` warn."""
        ws = self.read()
        _refuse(command, ws.state, enforce)
        return ws

    @contextlib.contextmanager
    def transition(self, command: str, *, enforce: bool = True) -> Iterator[WorkflowState]:
        """Check ``command`` may run now, run the body, then commit its target state.

        A body that raises leaves the state as it was. With ``enforce=False`` an illegal call
        warns on stderr and proceeds.
        """
        ws = self.read()
        msg = _refuse(command, ws.state, enforce)
        yield ws
        target = fsm.target_of(command, ws.state) if msg is None else fsm.rule_for(command).target
        if target is not None and target != ws.state:
            self.set(target, command, expect=ws.state)


def _refuse(command: str, state: State, enforce: bool) -> str | None:
    """The refusal of ``command`` in ``state``: raised, or with ``enforce=False`` warned about and returned."""
    msg = fsm.refusal(command, state)
    if msg is not None:
        if enforce:
            raise IllegalStateError(msg)
        print(f"warning: {msg} (WF_FSM_ENFORCE=0: proceeding)", file=sys.stderr)
    return msg


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())
