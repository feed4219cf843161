"""Moving files between this machine and the pod: push, pull and a verified fetch-run.

All three are rsync through :meth:`Host.sync` (resumable: ``--partial-dir``), so an interrupted
transfer continues where it stopped when the command is run again. ``fetch-run`` adds a
manifest (size and sha256 of every file) computed on the pod, checked after the transfer;
only a run whose every file matches gets its ``FETCHED.json`` marker.

Only results travel home: lock files, temp files of atomic writes and rsync's partial folders
(:data:`opsrg.localsync.NOT_RESULTS`) are left out of the manifest and the copy alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json
from .context import Context
from .errors import HostError, InputError
from .localsync import NOT_RESULTS
from .settings import REPO_ROOT
from .ssh import LinkDropped

FETCHED = "FETCHED.json"
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PUSH_EXCLUDES = (".git", ".venv", ".opsrg", "artifacts", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
PULL_EXCLUDES = NOT_RESULTS

# Runs on the pod with any Python 3 (stdlib only). Hashes every file under the run folder except
# those whose name (or a folder's) matches an rsync exclude pattern of argv[3] (as the copy skips
# them), reusing the previous manifest's sha256 for a file whose size and mtime did not change.
MANIFEST_PY = r"""
import fnmatch, hashlib, json, os, sys, tempfile
root, out, skip = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def kept(name):
    return not any(fnmatch.fnmatchcase(name, pat) for pat in skip)
try:
    old = {f["path"]: f for f in json.load(open(out))["files"]}
except Exception:
    old = {}
files = []
for d, dirs, names in os.walk(root):
    dirs[:] = sorted(x for x in dirs if kept(x))
    for n in sorted(filter(kept, names)):
        p = os.path.join(d, n)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        rel = os.path.relpath(p, root)
        st = os.stat(p)
        prev = old.get(rel)
        if prev and prev["size"] == st.st_size and prev.get("mtime_ns") == st.st_mtime_ns:
            sha = prev["sha256"]
        else:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for b in iter(lambda: fh.read(1 << 20), b""):
                    h.update(b)
            sha = h.hexdigest()
        files.append({"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha})
doc = {"root": root, "files": files}
os.makedirs(os.path.dirname(out), exist_ok=True)
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".manifest.", suffix=".tmp")
with os.fdopen(fd, "w") as fh:
    json.dump(doc, fh, sort_keys=True)
os.replace(tmp, out)
print(json.dumps(doc, sort_keys=True))
"""


@dataclass
class FetchResult:
    run_id: str
    local_dir: Path
    files: int
    bytes: int
    transferred: int
    already_complete: bool

    def describe(self) -> str:
        if self.already_complete:
            return f"{self.run_id}: already fetched and verified ({self.files} files) in {self.local_dir}"
        return (f"{self.run_id}: {self.files} files, {self.bytes} bytes verified in {self.local_dir} "
                f"({self.transferred} transferred)")


def project_root(ctx: Context) -> Path:
    """What `push` sends: the project's git root, else the folder of workflow.env."""
    import subprocess

    p = subprocess.run(["git", "-C", str(ctx.loaded.root), "rev-parse", "--show-toplevel"],
                       capture_output=True, text=True)
    return Path(p.stdout.strip()) if p.returncode == 0 else (ctx.loaded.root if ctx.loaded.env_file else REPO_ROOT)


def _changed(out: str) -> list[str]:
    """Files rsync sent or would send, from ``--itemize-changes`` lines (``>f`` / ``<f``)."""
    return [ln.split(" ", 1)[1] for ln in out.splitlines() if ln[:2] in (">f", "<f") and " " in ln]


def push(ctx: Context, *, src: str | None = None, dry_run: bool = False, delete: bool = False) -> str:
    """The local working tree -> OPS_REMOTE_REPO on the pod (code only: no .git, venv, outputs)."""
    source = Path(src) if src else project_root(ctx)
    dst = ctx.pod_path(ctx.s.ops_remote_repo)
    r = ctx.host.sync(str(source), dst, to_host=True, delete=delete, dry_run=dry_run, excludes=PUSH_EXCLUDES)
    files = _changed(r.stdout)
    verb = "would push" if dry_run else "pushed"
    return f"{verb} {len(files)} files {source} -> {ctx.host.name}:{dst}"


def pull(ctx: Context, *, dry_run: bool = False) -> str:
    """The pod's outputs folder -> LOCAL_ARTIFACTS_DIR (all results; use fetch-run for a verified run)."""
    dst = ctx.artifacts_dir
    r = ctx.host.sync(ctx.outputs_dir, str(dst), to_host=False, dry_run=dry_run, excludes=PULL_EXCLUDES)
    files = _changed(r.stdout)
    verb = "would pull" if dry_run else "pulled"
    return f"{verb} {len(files)} files {ctx.host.name}:{ctx.outputs_dir} -> {dst}"


def known_runs(ctx: Context) -> list[str]:
    r = ctx.host.run(["ls", "-1", ctx.outputs_dir], check=False)
    out = []
    for name in sorted(r.stdout.split()):
        if name.startswith(("_", ".")) or not RUN_ID_RE.match(name):
            continue
        out.append(name)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def manifest(ctx: Context, run_id: str) -> dict[str, Any]:
    """Write (or refresh) the run's manifest on the pod, under ``_control/manifests``; return it."""
    host = ctx.host
    out = f"{ctx.control_dir}/manifests/{run_id}.json"
    cmd = [host.python, "-c", MANIFEST_PY, f"{ctx.outputs_dir}/{run_id}", out, json.dumps(NOT_RESULTS)]
    try:
        r = host.run(cmd, timeout=3600)
    except LinkDropped:  # hashing is safe to repeat: once more, within the host's reconnect budget
        r = host.run(cmd, timeout=3600)
    return json.loads(r.stdout.strip().splitlines()[-1])


def verify(local_dir: Path, files: list[dict[str, Any]], recorded: dict[str, Any] | None = None) -> list[str]:
    """Problems with the local copy; a file already verified with the same size and mtime is trusted."""
    seen = {f["path"]: f for f in (recorded or {}).get("files", [])}
    problems = []
    for f in files:
        p = local_dir / f["path"]
        try:
            st = p.stat()
        except FileNotFoundError:
            problems.append(f"{f['path']}: missing")
            continue
        if st.st_size != f["size"]:
            problems.append(f"{f['path']}: size {st.st_size} != {f['size']}")
            continue
        prev = seen.get(f["path"])
        if prev and prev["sha256"] == f["sha256"] and prev.get("local_mtime_ns") == st.st_mtime_ns:
            continue
        if _sha256(p) != f["sha256"]:
            problems.append(f"{f['path']}: sha256 differs")
    return problems


def fetch_run(ctx: Context, run_id: str) -> FetchResult:
    """``<outputs>/RUN_ID/`` -> ``<artifacts>/RUN_ID/``: resumable, verified, idempotent."""
    if not RUN_ID_RE.match(run_id or "") or ".." in run_id:
        raise InputError(f"invalid run id {run_id!r}: use [A-Za-z0-9._-], starting with a letter or digit")
    host = ctx.host
    remote = f"{ctx.outputs_dir}/{run_id}"
    if not host.exists(remote):
        known = known_runs(ctx)
        raise InputError(f"no run {run_id!r} under {host.name}:{ctx.outputs_dir}; "
                         f"known run ids: {', '.join(known) if known else 'none'}")
    local = ctx.artifacts_dir / run_id
    marker = local / FETCHED
    resume = f"inv fetch-run {run_id}"
    recorded = None
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            recorded = None
    man = manifest(ctx, run_id)
    files = man["files"]
    if recorded and [(f["path"], f["sha256"]) for f in recorded.get("files", [])] == \
            [(f["path"], f["sha256"]) for f in files] and not verify(local, files, recorded):
        return FetchResult(run_id, local, len(files), sum(f["size"] for f in files), 0, True)
    # From here on the local copy is in flux: it is complete only when the marker says so.
    marker.unlink(missing_ok=True)
    try:
        r = host.sync(remote, str(local), to_host=False, excludes=(FETCHED, *NOT_RESULTS))
    except HostError as e:
        raise type(e)(f"fetch-run {run_id}: transfer interrupted ({e.message}); the partial copy in {local} "
                      f"is not marked complete", hint=f"it resumes where it stopped; run: {resume}") from None
    transferred = len(_changed(r.stdout))
    problems = verify(local, files)
    if problems:
        for f in files:  # drop bad copies, so the next run sends them whole again
            if any(pr.startswith(f["path"] + ":") for pr in problems):
                (local / f["path"]).unlink(missing_ok=True)
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise HostError(f"fetch-run {run_id}: {len(problems)} of {len(files)} files failed verification "
                        f"({shown}); the run may still be writing, or the copy was damaged",
                        hint=f"run: {resume}")
    for f in files:
        f["local_mtime_ns"] = (local / f["path"]).stat().st_mtime_ns
    atomic_write_json(marker, {
        "run_id": run_id, "host": host.name, "remote": remote, "complete": True,
        "fetched_at": _now(), "files": files, "n_files": len(files),
        "bytes": sum(f["size"] for f in files),
    })
    return FetchResult(run_id, local, len(files), sum(f["size"] for f in files), transferred, False)


def _now() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def is_fetched(ctx: Context, run_id: str) -> bool:
    return (ctx.artifacts_dir / run_id / FETCHED).is_file()

