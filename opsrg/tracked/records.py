"""A tracked task's record and files, named once: what every runner writes and every observer reads.

``<outputs>/_tasks/<id>/`` holds ``command.sh``, ``stdout.log``, ``status.json`` (``pending ->
running -> success|failed|timed_out``), ``heartbeat`` and ``supervise.py``; a tmux task and a
Slurm job produce the same :class:`TaskRecord`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from opsrg.core.enums import StateEnum
from opsrg.core.errors import InputError
from opsrg.core.layout import reserved
from opsrg.tracked import supervisor

ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class TaskState(StateEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskState.SUCCESS, TaskState.FAILED, TaskState.TIMED_OUT)



# task-wait's exit codes, one per terminal state (124 as in timeout(1)).
EXIT_CODES = {TaskState.SUCCESS: 0, TaskState.FAILED: 1, TaskState.TIMED_OUT: 124}
WAIT_TIMEOUT_EXIT = 124


def validate_id(task_id: str) -> str:
    if not ID_RE.match(task_id or "") or ".." in task_id or task_id.startswith((".", "-")):
        raise InputError(
            f"invalid task id {task_id!r}: use 1-128 of [A-Za-z0-9._-], no '..', not starting with '.' or '-'"
        )
    why = reserved(task_id)
    if why:  # sweep rows run as tasks named by their run id: one rule for both
        raise InputError(f"invalid task id: {why}")
    return task_id


@dataclass(frozen=True)
class TaskPaths:
    """Every file a task writes, named once."""

    root: str

    @property
    def status(self) -> str:
        return f"{self.root}/{supervisor.STATUS}"

    @property
    def log(self) -> str:
        return f"{self.root}/{supervisor.LOG}"

    @property
    def command(self) -> str:
        return f"{self.root}/{supervisor.COMMAND}"

    def earlier_log(self, n: int) -> str:
        """The log of attempt ``n`` of this task id (``stdout.log`` is the latest one's)."""
        return f"{self.root}/{supervisor.EARLIER_LOG.format(n=n)}"

    @property
    def heartbeat(self) -> str:
        return f"{self.root}/{supervisor.HEARTBEAT}"

    @property
    def supervisor(self) -> str:
        return f"{self.root}/supervise.py"

    @property
    def ended(self) -> str:
        """Where a Slurm job's elements leave their end markers (empty files ``<index>.<restart>``):
        a waiting monitor sees an end with a stat, before any scheduler call."""
        return f"{self.root}/ended"


@dataclass
class TaskRecord:
    id: str
    state: TaskState
    command: str = ""
    exit_code: int | None = None
    reason: str = ""
    evidence: str = ""
    host: str = ""
    runner: str = "tmux"
    pid: int | None = None
    created_at: str = ""
    started_at: str = ""
    ended_at: str = ""
    timeout_secs: float | None = None
    tmux: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        return cls(
            id=data["id"], state=TaskState(data["state"]), command=data.get("command", ""),
            exit_code=data.get("exit_code"), reason=data.get("reason", ""), evidence=data.get("evidence", ""),
            host=data.get("host", ""), runner=data.get("runner", "tmux"), pid=data.get("pid"),
            created_at=data.get("created_at", ""), started_at=data.get("started_at", ""),
            ended_at=data.get("ended_at", ""), timeout_secs=data.get("timeout_secs"),
            tmux=data.get("tmux") or {}, raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        return {**self.raw, "state": self.state.value}

    @property
    def elapsed(self) -> float | None:
        if not self.started_at:
            return None
        end = supervisor.parse_iso(self.ended_at) if self.ended_at else time.time()
        return max(0.0, end - supervisor.parse_iso(self.started_at))


TAIL_BYTES = 8192  # how far back from a log's end its last lines are looked for


def tail_lines(data: bytes, lines: int = 10) -> list[str]:
    """The last ``lines`` non-empty lines of the end of a log (pure)."""
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:]


def read_tail(path: str, lines: int = 10) -> list[str]:
    """:func:`tail_lines` of a log on this machine, read from its end ([] when there is none)."""
    import os

    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - TAIL_BYTES))
            return tail_lines(fh.read(), lines)
    except OSError:
        return []


def describe(rec: TaskRecord) -> str:
    """One human line for a task."""
    bits = [f"{rec.id}: {rec.state}"]
    if rec.exit_code is not None:
        bits.append(f"exit {rec.exit_code}")
    if rec.reason and rec.reason != f"exit code {rec.exit_code}":  # said just before
        bits.append(rec.reason)
    if rec.elapsed is not None:
        bits.append(f"{rec.elapsed:.1f}s")
    line = ", ".join(bits)
    if rec.evidence:
        line += f" [evidence: {rec.evidence}]"
    return line


RECENT_ENDED = 30  # what `task-list` shows of the tasks that ended, newest last


def recent(recs: list[TaskRecord], ended: int = RECENT_ENDED) -> list[TaskRecord]:
    """Every live task and the newest ``ended`` that ended, in the order given (oldest first)."""
    done = [r for r in recs if r.state.is_terminal]
    keep = {id(r) for r in done[-ended:]} if ended > 0 else set()
    return [r for r in recs if not r.state.is_terminal or id(r) in keep]

