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
from pathlib import Path
from typing import Any

from opsrg.core import layout
from opsrg.core.atomic import atomic_write_json, locked
from opsrg.core.clock import now_iso
from opsrg.rg.run import RunPaths
from opsrg.sweeps.records import RunManifest, RunState


@dataclass(frozen=True)
class SweepPaths:
    """Every sweep-level path under one outputs folder, spelled once."""

    outputs: str

    @property
    def manifests(self) -> Path:
        return Path(self.outputs) / layout.MANIFESTS

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
        return Path(self.outputs) / layout.DOCS / "slurm_job_list.md"

    def run_dir(self, run_id: str) -> Path:
        return Path(self.outputs) / run_id

    def run_manifest(self, run_id: str) -> Path:
        return self.run_dir(run_id) / layout.RUN_MANIFEST

    def summary(self, run_id: str) -> Path:
        return RunPaths(self.run_dir(run_id)).summary


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


def metrics(paths: SweepPaths, run_id: str, names: list[str], summary: Any = None) -> dict[str, Any]:
    """The values of ``names`` a run reports: its metrics.json, else its summary.json (top level,
    or its ``metrics`` table; ``summary``: that file, already read); None for a name neither has."""
    if not names:
        return {}
    rp = RunPaths(paths.run_dir(run_id))
    found: dict[str, Any] = {}
    for doc in (read_json(rp.metrics), summary if summary is not None else read_json(rp.summary)):
        if not isinstance(doc, dict):
            continue
        for table in (doc, doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}):
            for n in names:
                if n not in found and isinstance(table.get(n), (int, float)) and not isinstance(table.get(n), bool):
                    found[n] = table[n]
    return {n: found.get(n) for n in names}


def create(paths: SweepPaths, run_id: str, campaign: str, backend: str, row: dict[str, Any],
           state: RunState | str = RunState.SUBMITTED, **extra: Any) -> dict[str, Any]:
    """Write a fresh manifest for a (re)submitted run; earlier attempts are kept in ``previous``."""
    path = paths.run_manifest(run_id)
    with locked(path):
        old = read_json(path)
        state = RunState(state)
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


def update(paths: SweepPaths, run_id: str, state: RunState | str | None = None, reason: str = "",
           **changes: Any) -> dict[str, Any] | None:
    """Apply ``changes`` and move to ``state`` unless that moves backwards or leaves a final state."""
    path = paths.run_manifest(run_id)
    if state is not None:
        state = RunState(state)  # ValueError: not a run state
    with locked(path):
        m = read_json(path)
        if m is None:
            return None
        old = RunState(m.get("state", RunState.SUBMITTED))
        if state is not None and (old.is_final or state.rank < old.rank):
            state = None
        if old.is_final:
            changes = {k: v for k, v in changes.items() if k in ("job_ids", "tasks")}
        if state is not None and state != old:
            m["state"] = state
            m["history"].append({"state": state, "at": now_iso(), **({"reason": reason} if reason else {})})
            if state == RunState.RUNNING and not m.get("started_at"):
                m["started_at"] = now_iso()
            if state.is_final:
                m["completed_at"] = now_iso()
                m["reason"] = reason
        m.update(changes)
        atomic_write_json(path, m)
        return m


def append(paths: SweepPaths, run_id: str, field_name: str, item: Any) -> bool:
    """Append ``item`` to the list ``field_name`` of the run's manifest, read and written under its
    lock (two monitors at once each keep their entry); a final run is left as it is."""
    path = paths.run_manifest(run_id)
    with locked(path):
        m = read_json(path)
        if m is None or RunState(m.get("state", RunState.SUBMITTED)).is_final:
            return False
        m[field_name] = list(m.get(field_name) or []) + [item]
        atomic_write_json(path, m)
        return True


def read(paths: SweepPaths, run_id: str) -> RunManifest | None:
    """The run's manifest; None when there is none, or it is unreadable or no run manifest."""
    d = read_json(paths.run_manifest(run_id))
    try:
        return RunManifest.from_json(d) if d is not None else None
    except (ValueError, TypeError):
        return None


def state_of(paths: SweepPaths, run_id: str) -> RunState | None:
    rm = read(paths, run_id)
    return rm.state if rm is not None else None


def read_for(paths: SweepPaths, run_id: str, campaign: str) -> RunManifest | None:
    """The run's manifest if it belongs to ``campaign``; None if there is none or it is another campaign's.

    A run folder outlives campaigns: a row of a campaign whose launch was cut short may still hold
    the manifest of an earlier campaign, which says nothing about this one.
    """
    m = read(paths, run_id)
    return m if m is not None and m.campaign == campaign else None


def reconcile(paths: SweepPaths, run_id: str) -> dict[str, Any] | None:
    """A run recorded failed or cancelled whose summary.json is ok did complete: record it completed.

    The one move out of a final state. ``--resume`` never redoes a run whose summary is ok, so a
    manifest that disagrees with it would leave the campaign failed with nothing to redo.
    Returns the new manifest when it changed anything.
    """
    path = paths.run_manifest(run_id)
    if (read_json(path) or {}).get("state") not in (RunState.FAILED, RunState.CANCELLED) or summary_ok(paths, run_id) is not True:
        return None  # the common case, read without the lock
    with locked(path):
        m = read_json(path)
        if m is None or m.get("state") not in (RunState.FAILED, RunState.CANCELLED):
            return None
        was = f"was {m['state']}" + (f": {m['reason']}" if m.get("reason") else "")
        why = f"reconciled: summary.json is ok ({was})"
        m["history"].append({"state": RunState.COMPLETED, "at": now_iso(), "reason": why})
        m.update(state=RunState.COMPLETED, summary_ok=True, reason=why, completed_at=now_iso())
        atomic_write_json(path, m)
        return m


def write_summary(run_dir: str, mode: str, rc: int) -> tuple[int, str]:
    """The summary of a script row (``mode`` shell or command): the run's exit status, and why it
    differs from ``rc`` (see :func:`write_command_summary`)."""
    if mode == "shell":
        write_shell_summary(run_dir, rc)
        return rc, ""
    return write_command_summary(run_dir, rc)


def write_shell_summary(run_dir: str, rc: int) -> None:
    """The summary of a shell row: ok when its command exited 0."""
    atomic_write_json(RunPaths(Path(run_dir)).summary,
                      {"ok": rc == 0, "mode": "shell", "exit_code": rc, "written_at": now_iso()})


def write_command_summary(run_dir: str, rc: int) -> tuple[int, str]:
    """The summary of a command row; returns the run's exit status, and why it differs from ``rc``.

    A ``summary.json`` the program wrote itself stands, and its ``ok: false`` fails the run even
    at exit 0; a non-zero exit fails it whatever the program wrote (its summary is kept inside
    ours). Without one, the run is ok when the program exited 0."""
    path = RunPaths(Path(run_dir)).summary
    own = read_json(path)
    if isinstance(own, dict) and own.get("by") == "opsrg":  # ours, from a first close of this attempt
        return int(own.get("exit_code") or 0) if own.get("ok") is True else int(own.get("exit_code") or 1), ""
    if isinstance(own, dict) and "ok" in own:
        if own["ok"] is True and rc != 0:
            atomic_write_json(path, {"ok": False, "mode": "command", "exit_code": rc, "written_at": now_iso(),
                                     "by": "opsrg", "program_summary": own})
        elif own["ok"] is not True:
            return rc or 1, f"the program's {RunPaths.SUMMARY} says ok: {json.dumps(own['ok'])}"
        return rc, ""
    atomic_write_json(path, {"ok": rc == 0, "mode": "command", "exit_code": rc, "written_at": now_iso(),
                             "by": "opsrg"})
    return rc, ""


def main(argv: list[str]) -> int:
    """``python -m opsrg.runs shell-summary|command-summary RUN_DIR RC`` (the entry point in
    opsrg/runs.py)."""
    if len(argv) == 3 and argv[0] == "shell-summary":
        write_shell_summary(argv[1], int(argv[2]))
        return 0
    if len(argv) == 3 and argv[0] == "command-summary":
        status, why = write_command_summary(argv[1], int(argv[2]))
        if why:
            print(f"[opsrg] {why}", file=sys.stderr, flush=True)
        return status
    print("usage: python -m opsrg.runs shell-summary|command-summary RUN_DIR EXIT_CODE", file=sys.stderr)
    return 2
