"""Runs on disk: list them with state, size, identity and age; expire old ones safely.

A run is a folder under the outputs folder (names starting with '_' or '.' are opsrg's own).
Its state comes from ``run_manifest.json`` when a sweep made it, else from ``summary.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .context import Context


@dataclass
class RunInfo:
    run_id: str
    path: str
    state: str
    size_bytes: int
    identity: str | None
    age_days: float
    live_task: str | None = None


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_state(run: Path) -> str:
    manifest = _read(run / "run_manifest.json")
    if manifest and manifest.get("state"):
        return str(manifest["state"])
    summary = _read(run / "summary.json")
    if summary is not None:
        return "completed" if summary.get("ok") else "failed"
    return "incomplete"


def _size_and_mtime(run: Path) -> tuple[int, float]:
    size, newest = 0, run.stat().st_mtime
    for p in run.rglob("*"):
        try:
            st = p.lstat()
        except OSError:
            continue
        size += st.st_size if p.is_file() else 0
        newest = max(newest, st.st_mtime)
    return size, newest


def _live_writers(ctx: Context) -> dict[str, str]:
    """Run folder -> id of a live (non-terminal, alive) task whose command or cwd names it."""
    out: dict[str, str] = {}
    tasks = ctx.tasks
    for rec in tasks.list(check=False):
        if rec.state.is_terminal or tasks.probe(rec.id).get("alive") is False:
            continue
        text = f"{rec.command} {rec.raw.get('cwd', '')}"
        for run in Path(ctx.outputs_dir).iterdir():
            if run.is_dir() and (str(run) in text or f"/{run.name}" in text or f" {run.name}" in text):
                out[run.name] = rec.id
    return out


def list_runs(ctx: Context) -> list[RunInfo]:
    root = Path(ctx.outputs_dir)
    if not root.is_dir():
        return []
    live = _live_writers(ctx)
    now = time.time()
    runs = []
    for run in sorted(root.iterdir()):
        if not run.is_dir() or run.name.startswith(("_", ".")) or run.name == "docs":
            continue
        size, newest = _size_and_mtime(run)
        meta = _read(run / "meta.json") or {}
        runs.append(RunInfo(run.name, str(run), run_state(run), size, meta.get("identity"),
                            round((now - newest) / 86400, 3), live.get(run.name)))
    return runs


def gc(ctx: Context, ttl_days: float, dry_run: bool = False) -> tuple[list[RunInfo], list[tuple[RunInfo, str]]]:
    """Remove runs untouched for ``ttl_days``; never one that a live task is still writing."""
    removed, kept = [], []
    for r in list_runs(ctx):
        if r.age_days < ttl_days:
            continue
        if r.live_task:
            kept.append((r, f"live task {r.live_task} is writing it"))
            continue
        if r.state in ("submitted", "running", "synced"):
            kept.append((r, f"its manifest says {r.state}; run `inv sweep-monitor` or `inv doctor` first"))
            continue
        if not dry_run:
            shutil.rmtree(r.path)
        removed.append(r)
    return removed, kept


def as_json(runs: list[RunInfo]) -> list[dict]:
    return [asdict(r) for r in runs]


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
