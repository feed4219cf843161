"""Runs on disk: list them with state, size, identity and age; expire old ones safely.

A run is a folder under the outputs folder that carries one of opsrg's run markers
(:data:`RUN_MARKERS`); names starting with '_' or '.' are opsrg's own and never listed. Its state
comes from ``run_manifest.json`` when a sweep made it, else from ``summary.json``.

``artifacts-ls`` lists every other entry too, marked as what it is, so nothing is hidden:
``kind`` is ``run``, ``not a run`` (a folder without a marker: a user's, never removed) or
``symlink`` (never followed, never removed; ``note`` gives its target). ``artifacts-gc`` removes
only ``run`` entries, and refuses an outputs folder that is ``/``, the home folder, the project
folder or a folder above one of them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from opsrg.context import Context
from opsrg.core import layout
from opsrg.core.errors import InputError
from opsrg.rg.run import RunPaths

# What makes a folder a run, i.e. what opsrg writes into every run it makes: the sweep runner's
# manifest (opsrg/runs.py), provenance's meta.json (opsrg/provenance.py, first thing a sweep row
# writes), and the RG engine's run.json / summary.json (opsrg/rg/pipeline.py RunPaths; a sweep's
# shell row ends with summary.json too). The one list of them.
RUN_MARKERS = (layout.RUN_MANIFEST, layout.META, RunPaths.RUN_JSON, RunPaths.SUMMARY)
RUN, NOT_A_RUN, SYMLINK = "run", "not a run", "symlink"


@dataclass
class RunInfo:
    run_id: str
    path: str
    state: str
    size_bytes: int
    identity: str | None
    age_days: float
    live_task: str | None = None
    kind: str = RUN
    note: str = ""


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_run(folder: Path) -> bool:
    """A real folder (not a symlink) that carries one of opsrg's run markers (as regular files)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    for name in RUN_MARKERS:
        try:
            if stat.S_ISREG((folder / name).lstat().st_mode):
                return True
        except OSError:
            continue
    return False


def run_state(run: Path) -> str:
    manifest = _read(run / layout.RUN_MANIFEST)
    if manifest and manifest.get("state"):
        return str(manifest["state"])
    summary = _read(RunPaths(run).summary)
    if summary is not None:
        return "completed" if summary.get("ok") else "failed"
    return "incomplete"


def _size_and_mtime(run: Path) -> tuple[int, float]:
    """Bytes of the regular files under ``run`` and the newest mtime, without following a symlink."""
    size, newest = 0, run.lstat().st_mtime
    for dirpath, dirs, names in os.walk(run):
        for n in dirs + names:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            size += st.st_size if stat.S_ISREG(st.st_mode) else 0
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
    """Every entry of the outputs folder but opsrg's own ('_', '.') and plain files: runs, and the
    folders and symlinks that are not runs, marked as such (``kind``). On a pod over SSH they are
    listed there (opsrg.sweeps.remote)."""
    from opsrg.sweeps import remote

    if remote.is_remote(ctx):
        return [RunInfo(**r) for r in remote.call(ctx, "artifacts-ls", {})]
    root = Path(ctx.outputs_dir)
    if not root.is_dir():
        return []
    live = _live_writers(ctx)
    now = time.time()
    runs = []
    for run in sorted(root.iterdir()):
        if run.name.startswith(("_", ".")) or run.name == "docs":
            continue
        if run.is_symlink():
            try:
                target, mtime = os.readlink(run), run.lstat().st_mtime
            except OSError:
                continue
            runs.append(RunInfo(run.name, str(run), SYMLINK, 0, None, round((now - mtime) / 86400, 3),
                                live.get(run.name), SYMLINK, f"symlink to {target} (never followed nor removed)"))
            continue
        if not run.is_dir():
            continue
        try:
            size, newest = _size_and_mtime(run)
        except OSError:
            continue
        age = round((now - newest) / 86400, 3)
        if not is_run(run):
            runs.append(RunInfo(run.name, str(run), NOT_A_RUN, size, None, age, live.get(run.name), NOT_A_RUN,
                                f"no run marker ({', '.join(RUN_MARKERS)}): not opsrg's, never removed"))
            continue
        meta = _read(run / layout.META) or {}
        runs.append(RunInfo(run.name, str(run), run_state(run), size, meta.get("identity"), age,
                            live.get(run.name)))
    return runs


def check_outputs_root(ctx: Context) -> Path:
    """The outputs folder, refused (InputError) if removing runs in it could remove what is not a run:
    ``/``, the home folder, the project folder, or a folder above one of them."""
    root = Path(ctx.outputs_dir).resolve()
    guarded = {Path("/"): "the root folder", Path.home().resolve(): "your home folder",
               ctx.loaded.root.resolve(): "the project folder"}
    for place, what in guarded.items():
        if root == place or root in place.parents:
            name = what if root == place else f"a folder above {what} ({place})"
            raise InputError(f"OPS_REMOTE_OUTPUTS_DIR is {root}, {name}: artifacts-gc removes runs only from a "
                             "folder of their own", hint="set OPS_REMOTE_OUTPUTS_DIR to the outputs folder itself "
                                                         "(e.g. .opsrg/pod/outputs)")
    return root


def gc(ctx: Context, ttl_days: float, dry_run: bool = False) -> tuple[list[RunInfo], list[tuple[RunInfo, str]]]:
    """Remove runs untouched for ``ttl_days``; never one that a live task is still writing, never a
    folder that is not a run, never a symlink (nor what it points to)."""
    from opsrg.sweeps import remote

    if remote.is_remote(ctx):
        raise InputError(f"artifacts-gc removes runs of the local pod only, not on {ctx.host.name}",
                         hint="list them with inv artifacts-ls; remove old run folders on the pod yourself")
    check_outputs_root(ctx)
    removed, kept = [], []
    for r in list_runs(ctx):
        if r.age_days < ttl_days:
            continue
        if r.kind != RUN:
            kept.append((r, r.note))
            continue
        if r.live_task:
            kept.append((r, f"live task {r.live_task} is writing it"))
            continue
        if r.state in ("submitted", "running", "synced"):
            kept.append((r, f"its manifest says {r.state}; run `inv sweep-monitor` or `inv doctor` first"))
            continue
        if not dry_run:
            try:
                if not is_run(Path(r.path)):  # became a link, or lost its marker, since it was listed
                    kept.append((r, "no longer a run folder"))
                    continue
                shutil.rmtree(r.path)
            except OSError as e:
                kept.append((r, f"could not remove it: {e}"))
                continue
        removed.append(r)
    return removed, kept


def as_json(runs: list[RunInfo]) -> list[dict]:
    return [asdict(r) for r in runs]
