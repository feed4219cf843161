"""The persisted workflow state: ``_control/workflow_state.json``.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import fsm
from .atomic import atomic_write_json, locked
from .errors import ConfigError, IllegalStateError
from .fsm import State


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class WorkflowState:
    state: State = State.INIT
    updated_at: str = ""
    command: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "updated_at": self.updated_at,
            "command": self.command,
            "history": self.history,
        }


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
            return WorkflowState(
                state=fsm.parse_state(data["state"]),
                updated_at=str(data.get("updated_at", "")),
                command=str(data.get("command", "")),
                history=list(data.get("history", [])),
            )
        except (ValueError, KeyError, TypeError, IllegalStateError) as e:
            raise ConfigError(
                f"{self.path}: workflow state file is unreadable ({e.__class__.__name__}: {e})",
                hint="inspect it, then `inv fsm-reset STATE` to rewrite it",
            ) from None

    def _write(self, ws: WorkflowState) -> None:
        atomic_write_json(self.path, ws.to_json())

    def set(self, target: State, command: str, *, expect: State | None = None, note: str = "") -> WorkflowState:
        """Move to ``target`` under the lock; with ``expect``, only from that state."""
        with locked(self.path):
            return self._set_locked(target, command, expect=expect, note=note)

    def _set_locked(self, target: State, command: str, *, expect: State | None = None,
                    note: str = "") -> WorkflowState:
        ws = self.read()
        if expect is not None and ws.state != expect:
            raise IllegalStateError(
                f"workflow state changed from {expect.value} to {ws.state.value} while "
                f"'{command}' ran (by '{ws.command}' at {ws.updated_at}); not overwriting it"
            )
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
        ws.history.append(entry)
        ws.state, ws.updated_at, ws.command = target, entry["at"], command
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
