"""The one contract of a sweep backend: tmux (opsrg.sweeps.tmux) and Slurm (opsrg.sweeps.slurm).

Both produce the same things: a tracked-task record (``_tasks/<id>/status.json``) per job, a
``run_manifest.json`` per run and each run's ``summary.json``. Callers (the sweep commands,
doctor) hold a :class:`Backend` and never ask which one it is; what differs between the two lives
behind these methods. ``refresh`` advances the manifests from the evidence (task records,
scheduler answers, marker files): it is what ``inv sweep-monitor`` and ``inv sweep-status`` run.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from opsrg.sweeps import runs
from opsrg.sweeps.records import Campaign

if TYPE_CHECKING:
    from opsrg.sweeps.campaign import SweepEnv


Claim = Callable[[dict[str, dict[str, Any]]], None]


@dataclass(frozen=True)
class PlannedJob:
    """One unit a launch would start, in the one shape every backend's dry run prints."""

    key: str                      # the task id of its record
    kind: str                     # row (tmux), gen | merge | shell (Slurm)
    runs: list[str]               # the runs it works for
    after: list[str]              # what it waits for: run ids (tmux) or job keys (Slurm)
    script: str                   # exactly what it would run
    timeout_secs: float | None = None
    array: list[int] | None = None  # array element indices (Slurm); None: one job

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "runs": self.runs, "after": self.after,
                "timeout_secs": self.timeout_secs, "array": self.array, "script": self.script}


@dataclass(frozen=True)
class Lag:
    """A run recorded unfinished although the evidence says its work ended (doctor reports it)."""

    run_id: str
    why: str


class Backend(abc.ABC):
    name: ClassVar[str]
    unreachable: str = ""  # why the scheduler did not answer the last refresh ('' when it did, or there is none)
    shares_gpus: ClassVar[bool] = False  # whether it shares a pod's GPUs out to rows (a row's ``gpus``)
    per_job_requests: ClassVar[bool] = False  # whether a row's gpus, cpus and mem become its jobs' requests

    # ------------------------------------------------------------ launch
    def preflight(self, env: SweepEnv) -> None:
        """Refuse, before anything is written, what this backend could never launch here."""
        return None

    @abc.abstractmethod
    def run_tasks(self, run_id: str) -> list[str]:
        """The task ids a fresh run manifest lists before anything is started."""

    @abc.abstractmethod
    def plan(self, env: SweepEnv, m: Campaign, todo: list[str],
             fresh: frozenset[str] = frozenset()) -> tuple[list[PlannedJob], dict[str, Any]]:
        """What a launch of ``todo`` would start, and what else the plan depends on (for the dry run).

        ``fresh``: runs planned from nothing whatever their folders hold (--force sets those aside).
        """

    @abc.abstractmethod
    def start(self, env: SweepEnv, m: Campaign, todo: list[str], claim: Claim | None = None) -> None:
        """Start the runs ``todo`` of the campaign ``m``.

        ``claim(known)`` writes their fresh run manifests, with what the backend ``known`` of each
        run by then (``{run_id: {"job_ids": [...], "tasks": [...]}}``); it is called once, before
        anything can run, so each manifest is written once. ``None``: they exist already (a resume
        claims its runs under its lock).
        """

    @abc.abstractmethod
    def launched(self, env: SweepEnv, m: Campaign) -> bool:
        """Whether a launch whose process died had gone through (only its last write was lost)."""

    def abandon(self, env: SweepEnv, m: Campaign) -> None:
        """Undo what a launch cut short had set up but not let run."""
        return None

    # ------------------------------------------------------------ observe and control
    @abc.abstractmethod
    def refresh(self, env: SweepEnv, m: Campaign) -> None:
        """Advance the run manifests from the evidence; sets :attr:`unreachable`."""

    @abc.abstractmethod
    def cancel(self, env: SweepEnv, m: Campaign, run_ids: list[str]) -> None:
        """Stop the work of ``run_ids`` and record them cancelled (or completed, when they were)."""

    def alive(self, env: SweepEnv, m: Campaign, run_id: str) -> bool:
        """Whether the run may still produce results (its manifest is not final)."""
        rm = runs.read(env.paths, run_id)
        return rm is not None and not rm.is_final

    def wake_at(self, env: SweepEnv, m: Campaign) -> float | None:
        """When the next end is due that no file of the run will announce (a job's time limit):
        the monitor looks again then instead of at its next backed-off poll. None: nothing due."""
        return None

    def end_watch(self, env: SweepEnv, m: Campaign, running: list[str]) -> Callable[[], bool] | None:
        """A cheap check (stats of files the work leaves, no scheduler call) that turns True once
        some work ended since it was made: a waiting monitor naps on it and wakes within 0.2 s of
        an end. None: nothing announces ends here (the monitor sleeps its backed-off delay)."""
        return None

    def busy(self, env: SweepEnv, m: Campaign) -> str:
        """Why the campaign cannot be resumed now ('' when it can)."""
        return ""

    @abc.abstractmethod
    def lagging(self, env: SweepEnv, m: Campaign, unfinished: list[str]) -> list[Lag]:
        """Runs among ``unfinished`` whose work the evidence shows ended (a monitor pass would advance
        them). Raises OpsError when the evidence cannot be had (a scheduler that does not answer)."""
