"""The host contract: where commands run and files live, one small interface.

Everything above this layer (tracked tasks, the FSM file, sweeps, fetch-run) talks to a
:class:`Host` only, so a pod reached over SSH (opsrg.hosts.ssh) behaves exactly like this machine
(opsrg.hosts.local).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# A name a shell and tmux take as an environment variable (what may be passed to a command).
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The variable a tracked task's processes carry (set by the supervisor, which spells it ``TAG``):
# a host never passes it on, so no command opsrg starts counts as part of the task that started it.
TASK_TAG = "OPSRG_TASK_TAG"


@dataclass(frozen=True)
class RunResult:
    command: str
    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exited == 0


Command = Sequence[str] | str


def as_shell(cmd: Command) -> str:
    """A command as one shell string; a list is quoted word by word."""
    return cmd if isinstance(cmd, str) else shlex.join(str(c) for c in cmd)


class Host(Protocol):
    """The whole host contract."""

    name: str
    python: str

    def run(self, cmd: Command, *, check: bool = True, timeout: float | None = None,
            env: dict[str, str] | None = None, cwd: str | None = None) -> RunResult: ...

    def put(self, local: str | os.PathLike[str], remote: str) -> None: ...

    def get(self, remote: str, local: str | os.PathLike[str]) -> None: ...

    def exists(self, path: str) -> bool: ...

    def read_text(self, path: str) -> str | None: ...

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None: ...

    def sync(self, src: str, dst: str, *, to_host: bool = True, delete: bool = False,
             dry_run: bool = False, excludes: Sequence[str] = ()) -> RunResult: ...
