"""`inv doctor`: reconcile what the records say with what is true, and repair it with --fix.

Each check yields findings with their evidence; without ``fix`` nothing is changed (a doctor
that looks must not alter what it looks at). Checks work on the local outputs folder; tasks
are probed through their host, so a remote pod is reconciled where it runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from .context import Context

TMP_AGE_SECS = 300.0
DONE_RE = re.compile(r"^DONE_RG(\d+)\.json$")
READY_RE = re.compile(r"^part_(\d+)\.READY$")


@dataclass
class Finding:
    kind: str
    subject: str
    evidence: str
    repair: str
    fixed: bool = False

    def line(self) -> str:
        state = "fixed" if self.fixed else "found"
        return f"[{state}] {self.kind}: {self.subject}: {self.evidence}" + (
            f"\n        -> {'did' if self.fixed else 'fix'}: {self.repair}" if self.repair else "")


def check_tasks(ctx: Context, fix: bool) -> Iterator[Finding]:
    """Tasks recorded pending/running whose supervisor is dead."""
    tasks = ctx.tasks
    for rec in tasks.list(check=False):
        if rec.state.is_terminal:
            continue
        p = tasks.paths(rec.id)
        probe = tasks.probe(rec.id)
        if probe["alive"] is not False:
            continue
        f = Finding("task", rec.id, f"recorded {rec.state} but {probe['evidence']}",
                    "record it failed (lost) with this evidence")
        if fix:
            f.fixed = tasks.status(rec.id).state.is_terminal
        yield f


def check_temp_files(root: Path, fix: bool) -> Iterator[Finding]:
    """Temp files of atomic writers that were killed mid-write."""
    now = time.time()
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.startswith(".") and n.endswith(".tmp"):
                path = Path(dirpath) / n
                age = now - path.stat().st_mtime
                if age < TMP_AGE_SECS:
                    continue
                f = Finding("temp", str(path), f"leftover of an interrupted write, {age:.0f}s old "
                            "(the file it was meant to replace is intact)", "delete it")
                if fix:
                    path.unlink(missing_ok=True)
                    f.fixed = True
                yield f


def check_locks(root: Path, fix: bool) -> Iterator[Finding]:
    """Locks are flock()s: the kernel frees them when the holder dies. Report ones held now."""
    for dirpath, _, names in os.walk(root):
        for n in names:
            if not n.endswith(".lock"):
                continue
            path = Path(dirpath) / n
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                yield Finding("lock", str(path), "held by a live process right now (a dead holder's "
                              "flock is released by the kernel, so this is not stale)", "")
            finally:
                os.close(fd)


def check_rg_runs(root: Path, fix: bool) -> Iterator[Finding]:
    """DONE/READY markers whose files are missing: resume would trust them."""
    for done in sorted(root.glob("*/DONE_RG*.json")):
        m = DONE_RE.match(done.name)
        if not m:
            continue
        k, run = int(m.group(1)), done.parent
        try:
            meta = json.loads(done.read_text())
        except ValueError:
            meta = None
        missing = [] if meta is not None else ["a readable marker"]
        mode = (meta or {}).get("mode", "fp")
        if mode == "fp":
            for name in (f"z_hist_unsym_RG{k}.npz", f"sym_z_hist_RG{k}.npz"):
                if not (run / name).exists():
                    missing.append(name)
        if not missing:
            continue
        f = Finding("marker", f"{run.name}/{done.name}", f"step {k} marked done but missing {', '.join(missing)}",
                    f"remove the marker so `resume` recomputes step {k}")
        if fix:
            done.unlink(missing_ok=True)
            f.fixed = True
        yield f
    for ready in sorted(root.glob("*/shards/RG*/part_*.READY")):
        part = ready.with_suffix(".npz")
        if part.exists():
            continue
        f = Finding("marker", str(ready.relative_to(root)), "shard marked READY but its partial histogram is "
                    "missing", "remove the marker so the shard is generated again")
        if fix:
            ready.unlink(missing_ok=True)
            f.fixed = True
        yield f


CHECKS: dict[str, Callable[..., Iterator[Finding]]] = {
    "tasks": check_tasks,
    "temp files": check_temp_files,
    "locks": check_locks,
    "rg runs": check_rg_runs,
}


def run(ctx: Context, fix: bool = False) -> list[Finding]:
    from .hosts import LocalHost

    findings: list[Finding] = list(check_tasks(ctx, fix))
    if isinstance(ctx.host, LocalHost) and Path(ctx.outputs_dir).exists():
        root = Path(ctx.outputs_dir)
        for name in ("temp files", "locks", "rg runs"):
            findings.extend(CHECKS[name](root, fix))
    return findings


def as_json(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]
