"""When a Slurm job element is requeued, and when it has had enough (pure: no I/O).

``SLURM_MAX_REQUEUE`` is a budget per array element, not per array: one element preempted twice
spends its own budget, never its neighbours'. Requeues come from two places, both recorded on the
job (``requeues`` in the sweep manifest, one entry per requeue):

- opsrg's own: an element that ended PREEMPTED or NODE_FAIL is requeued while budget is left;
- Slurm's: with ``JobRequeue=1`` (Slurm's default) a batch job on a failed node is requeued by the
  scheduler itself and never seen ending; its restart count says how many happened. Past the
  budget such an element is cancelled and reported as ended by its cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REQUEUEABLE = frozenset({"PREEMPTED", "NODE_FAIL"})


@dataclass(frozen=True)
class RequeuePolicy:
    max_requeue: int

    @staticmethod
    def used(job: dict[str, Any], element: str) -> int:
        """Requeues of ``element`` so far, by anyone."""
        return sum(1 for r in job.get("requeues", []) if r["element"] == element)

    @staticmethod
    def seen(job: dict[str, Any], element: str) -> int:
        """Requeues of ``element`` known to have happened (opsrg's that Slurm accepted, and Slurm's)."""
        return sum(1 for r in job.get("requeues", []) if r["element"] == element and r.get("ok"))

    def should_requeue(self, job: dict[str, Any], element: str, state: str) -> bool:
        """Whether opsrg requeues an element that ended in ``state``."""
        return state in REQUEUEABLE and self.used(job, element) < self.max_requeue

    def unseen(self, job: dict[str, Any], element: str, restarts: int) -> range:
        """The restarts Slurm reports for ``element`` that no entry records yet (their indices)."""
        return range(self.seen(job, element), restarts)

    def over_budget(self, job: dict[str, Any], element: str) -> bool:
        """Whether ``element`` was requeued more often than allowed (Slurm's own requeues can do that)."""
        return self.used(job, element) > self.max_requeue

    def entry(self, job: dict[str, Any], element: str, state: str, *, by: str, ok: bool, at: str,
              attempt: int | None = None, ended_at: str | None = None) -> dict[str, Any]:
        """The record of one requeue; ``attempt`` (1 = the first run) defaults to the next one."""
        e = {"element": element, "state": state, "at": at, "ok": ok, "by": by,
             "attempt": attempt if attempt is not None else self.used(job, element) + 2}
        if ended_at is not None:
            e["ended_at"] = ended_at
        return e
