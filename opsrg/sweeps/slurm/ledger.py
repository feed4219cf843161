"""The Slurm job ledger: ``<outputs>/docs/slurm_job_list.md``, one table row per submission.

Append-only (under a lock); ``verify`` checks every row against the run manifests and, when a
scheduler is given, against what the scheduler knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from opsrg.core.atomic import locked
from opsrg.core.clock import now_iso
from opsrg.sweeps.runs import SweepPaths, read

HEADER = ("# Slurm job list\n\nOne row per submission (written by `inv sweep-start`; checked by "
          "`inv slurm-ledger --verify`).\n\n| at | campaign | run_id | job | job_id | status |\n"
          "|---|---|---|---|---|---|\n")


@dataclass(frozen=True)
class Entry:
    at: str
    campaign: str
    run_id: str
    job: str
    job_id: str
    status: str


def append(paths: SweepPaths, entries: list[Entry]) -> None:
    if not entries:
        return
    p = paths.ledger
    p.parent.mkdir(parents=True, exist_ok=True)
    with locked(p):
        new = not p.exists()
        with open(p, "a", encoding="utf-8") as fh:
            if new:
                fh.write(HEADER)
            fh.writelines(f"| {e.at} | {e.campaign} | {e.run_id} | {e.job} | {e.job_id} | {e.status} |\n" for e in entries)
            fh.flush()


def entry(campaign: str, run_id: str, job: str, job_id: str, status: str) -> Entry:
    return Entry(now_iso(), campaign, run_id, job, job_id, status)


def read_entries(paths: SweepPaths) -> list[Entry]:
    try:
        text = paths.ledger.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] not in ("at", "---") and not cells[0].startswith("-"):
            out.append(Entry(*cells))
    return out


def verify(paths: SweepPaths, known_to_scheduler: Callable[[list[str]], set[str]] | None = None) -> list[str]:
    """Problems found: rows whose run manifest does not list the job, and jobs the scheduler lost."""
    problems = []
    entries = read_entries(paths)
    if not entries:
        return [f"{paths.ledger}: no ledger rows"]
    for n, e in enumerate(entries, 1):
        m = read(paths, e.run_id)
        if m is None:
            problems.append(f"row {n}: {e.run_id}: no run manifest")
            continue
        ids = set(m.job_ids)
        for prev in m.previous:
            ids |= set(prev.get("job_ids", []))
        if e.job_id not in ids and e.job_id.split("_")[0] not in ids:  # an element of a listed array is fine
            problems.append(f"row {n}: {e.run_id}: job {e.job_id} ({e.job}) not in its run manifest")
    if known_to_scheduler is not None:
        ids = sorted({e.job_id for e in entries})
        known = known_to_scheduler(ids)
        for jid in ids:
            if jid not in known:
                problems.append(f"job {jid}: unknown to the scheduler (sacct/scontrol/jobcomp)")
    return problems
