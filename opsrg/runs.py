"""Run manifests: ``<outputs>/<run_id>/run_manifest.json``, one per sweep run.

States move forward only: ``submitted -> running -> synced -> completed | failed | cancelled``
(``completed_at`` is set for every final state). Every write is locked and atomic, so the
tmux driver, the monitor and ``sweep-cancel`` can all update a run without losing a change.
Also names every file a sweep writes (:class:`SweepPaths`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json, locked

RUN_STATES = ("submitted", "running", "synced", "completed", "failed", "cancelled")
FINAL = ("completed", "failed", "cancelled")
RANK = {"submitted": 0, "running": 1, "synced": 2, "completed": 3, "failed": 3, "cancelled": 3}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class SweepPaths:
    """Every sweep-level path under one outputs folder, spelled once."""

    outputs: str

    @property
    def manifests(self) -> Path:
        return Path(self.outputs) / "_manifests"

    @property
    def latest_csv(self) -> Path:
        return self.manifests / "sweep-latest.csv"

    def csv_copy(self, campaign: str) -> Path:
        return self.manifests / f"sweep-{campaign}.csv"

    def sweep_manifest(self, campaign: str) -> Path:
        return self.manifests / f"sweep-{campaign}.json"

    @property
    def latest(self) -> Path:
        """Holds the campaign id of the sweep started last."""
        return self.manifests / "LATEST"

    def scripts(self, campaign: str) -> Path:
        return self.manifests / f"scripts-{campaign}"

    @property
    def ledger(self) -> Path:
        return Path(self.outputs) / "docs" / "slurm_job_list.md"

    def run_dir(self, run_id: str) -> Path:
        return Path(self.outputs) / run_id

    def run_manifest(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "run_manifest.json"

    def summary(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "summary.json"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def summary_ok(paths: SweepPaths, run_id: str) -> bool | None:
    """True/False from the run's summary.json; None when there is none (yet)."""
    s = read_json(paths.summary(run_id))
    if s is None:
        return None
    return bool(s.get("ok"))


def create(paths: SweepPaths, run_id: str, campaign: str, backend: str, row: dict[str, Any],
           state: str = "submitted", **extra: Any) -> dict[str, Any]:
    """Write a fresh manifest for a (re)submitted run; earlier attempts are kept in ``previous``."""
    path = paths.run_manifest(run_id)
    with locked(path):
        old = read_json(path)
        m = {"run_id": run_id, "campaign": campaign, "backend": backend, "state": state,
             "submitted_at": now_iso(), "started_at": "", "completed_at": "", "reason": "",
             "job_ids": [], "tasks": [], "row": row, "summary_ok": None,
             "history": [{"state": state, "at": now_iso()}], **extra}
        if old is not None:
            prev = old.pop("previous", [])
            m["previous"] = (prev + [old])[-10:]
            m["attempt"] = int(old.get("attempt", 1)) + 1
        else:
            m["attempt"] = 1
        atomic_write_json(path, m)
        return m


def update(paths: SweepPaths, run_id: str, state: str | None = None, reason: str = "",
           **changes: Any) -> dict[str, Any] | None:
    """Apply ``changes`` and move to ``state`` unless that moves backwards or leaves a final state."""
    path = paths.run_manifest(run_id)
    if state is not None and state not in RANK:
        raise ValueError(f"unknown run state {state!r}")
    with locked(path):
        m = read_json(path)
        if m is None:
            return None
        old = m.get("state", "submitted")
        if state is not None and (old in FINAL or RANK[state] < RANK[old]):
            state = None
        if old in FINAL:
            changes = {k: v for k, v in changes.items() if k in ("job_ids", "tasks")}
        if state is not None and state != old:
            m["state"] = state
            m["history"].append({"state": state, "at": now_iso(), **({"reason": reason} if reason else {})})
            if state == "running" and not m.get("started_at"):
                m["started_at"] = now_iso()
            if state in FINAL:
                m["completed_at"] = now_iso()
                m["reason"] = reason
        m.update(changes)
        atomic_write_json(path, m)
        return m


def read(paths: SweepPaths, run_id: str) -> dict[str, Any] | None:
    return read_json(paths.run_manifest(run_id))


def write_shell_summary(run_dir: str, rc: int) -> None:
    """The summary of a shell row: ok when its command exited 0."""
    atomic_write_json(Path(run_dir) / "summary.json",
                      {"ok": rc == 0, "mode": "shell", "exit_code": rc, "written_at": now_iso()})


if __name__ == "__main__":  # python -m opsrg.runs shell-summary RUN_DIR RC
    if len(sys.argv) == 4 and sys.argv[1] == "shell-summary":
        write_shell_summary(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    print("usage: python -m opsrg.runs shell-summary RUN_DIR EXIT_CODE", file=sys.stderr)
    sys.exit(2)
