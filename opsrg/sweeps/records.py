"""The typed states of a sweep's records, read tolerantly from what is on disk.

Both are ``(str, Enum)``: a state compares equal to the string the manifests hold, and writes as
that string, so files of earlier opsrg versions read unchanged and new files read the same.
"""

from __future__ import annotations

import enum


class RunState(str, enum.Enum):
    """A run's state in its ``run_manifest.json``; it only moves forward (see :attr:`rank`)."""

    SUBMITTED = "submitted"
    RUNNING = "running"
    SYNCED = "synced"        # its summary reached the durable folder
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return self in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED)

    @property
    def rank(self) -> int:
        """Order of progress: an update never moves a run to a lower rank (final states share the top)."""
        return {RunState.SUBMITTED: 0, RunState.RUNNING: 1, RunState.SYNCED: 2}.get(self, 3)


class LaunchState(str, enum.Enum):
    """How far the command that started or resumed a campaign got (``launch`` in the sweep manifest).

    ``pending``: its files are written, the workflow state not yet committed; ``launching``:
    committed, run manifests and driver or jobs being created; ``launched``. A launch whose process
    died on the way is settled by the next monitor pass or doctor: ``aborted`` (nothing was
    started) or ``interrupted`` (the runs it had not started are failed, so ``--resume`` redoes them).
    """

    PENDING = "pending"
    LAUNCHING = "launching"
    LAUNCHED = "launched"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

    @property
    def is_open(self) -> bool:
        return self in (LaunchState.PENDING, LaunchState.LAUNCHING)

    @property
    def is_cut(self) -> bool:
        return self in (LaunchState.ABORTED, LaunchState.INTERRUPTED)


RUN_STATES = tuple(RunState)
FINAL = tuple(s for s in RunState if s.is_final)
LAUNCH_OPEN = tuple(s for s in LaunchState if s.is_open)
LAUNCH_CUT = tuple(s for s in LaunchState if s.is_cut)
