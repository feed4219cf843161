"""The base of every state opsrg records (workflow, task, run, launch)."""

from __future__ import annotations

import enum


class StateEnum(str, enum.Enum):
    """A state that is its own string: it compares equal to, and writes as, what the files hold.

    (Not ``enum.StrEnum``: the records rely on ``(str, Enum)``'s behaviour in formatting.)
    """

    def __str__(self) -> str:
        return self.value
