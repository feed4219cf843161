"""Moving files between this machine and the pod: push, pull and a verified fetch-run.

All three are rsync through :meth:`Host.sync` (resumable: ``--partial-dir``), so an interrupted
transfer continues where it stopped when the command is run again. ``fetch-run`` adds a
manifest (size and sha256 of every file) computed on the pod, checked after the transfer;
only a run whose every file matches gets its ``FETCHED.json`` marker.

Only results travel home: lock files, opsrg's own temp files and rsync's partial folders
(:data:`opsrg.hosts.rsync.NOT_RESULTS`) are left out of the manifest and the copy alike; every other
file, dotfiles included, is a result. Symlinks are never followed: a link out of the run refuses
the fetch, a link within it travels as a link, listed and verified by its target. Sparse files
stay sparse, and a copy that would not fit at home is refused before it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsrg.core import layout
from opsrg.core.atomic import TMP_MARK, TMP_SUFFIX, atomic_write_json
from opsrg.core.checkout import REPO_ROOT
from opsrg.core.clock import now_iso
from opsrg.core.errors import HostError, InputError, LinkDropped
from opsrg.hosts.rsync import NOT_RESULTS

if TYPE_CHECKING:  # the caller's context; nothing here builds one
    from opsrg.context import Context

FETCHED = "FETCHED.json"
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PUSH_EXCLUDES = (".git", ".venv", ".opsrg", "artifacts", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
PULL_EXCLUDES = NOT_RESULTS

# Runs on the pod with any Python 3 (stdlib only). Hashes every file under the run folder except
# those whose name (or a folder's) matches an rsync exclude pattern of argv[3] (as the copy skips
# them), reusing the previous manifest's sha256 for a file whose size and mtime did not change.
# Symlinks are never followed: each is listed with its target (as read, never dereferenced) and
# whether it resolves inside the run. A run folder that is itself a symlink is reported, not walked.
# ``alloc`` is what a file takes on disk (less than ``size`` for a sparse file). argv[4]: the start
# of opsrg's temp-file marker (opsrg.atomic.TMP_MARK), argv[5] its suffix.
MANIFEST_PY = r"""
import fnmatch, hashlib, json, os, sys, tempfile
root, out, skip, mark, suffix = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
def kept(name):
    return not any(fnmatch.fnmatchcase(name, pat) for pat in skip)
try:
    old = {f["path"]: f for f in json.load(open(out))["files"]}
except Exception:
    old = {}
files, links = [], []
top = root.rstrip("/") or "/"
real_root = os.path.realpath(top)
def link(p, rel):
    real = os.path.realpath(p)
    inside = real == real_root or real.startswith(real_root.rstrip("/") + "/")
    links.append({"path": rel, "target": os.readlink(p), "inside": inside})
if os.path.islink(top):
    doc = {"root": root, "root_link": os.readlink(top), "files": [], "links": []}
    print(json.dumps(doc, sort_keys=True))
    sys.exit(0)
for d, dirs, names in os.walk(top):
    for x in sorted(x for x in dirs if kept(x) and os.path.islink(os.path.join(d, x))):
        link(os.path.join(d, x), os.path.relpath(os.path.join(d, x), top))
    dirs[:] = sorted(x for x in dirs if kept(x) and not os.path.islink(os.path.join(d, x)))
    for n in sorted(filter(kept, names)):
        p = os.path.join(d, n)
        rel = os.path.relpath(p, top)
        if os.path.islink(p):
            link(p, rel)
            continue
        if not os.path.isfile(p):
            continue
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
        alloc = st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
        files.append({"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha, "alloc": alloc})
doc = {"root": root, "files": files, "links": links}
os.makedirs(os.path.dirname(out), exist_ok=True)
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix="." + os.path.basename(out) + mark, suffix=suffix)
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
    links: int = 0  # symlinks inside the run, copied as links (never followed)

    def describe(self) -> str:
        also = f", {self.links} symlinks within the run kept as links" if self.links else ""
        if self.already_complete:
            return f"{self.run_id}: already fetched and verified ({self.files} files{also}) in {self.local_dir}"
        return (f"{self.run_id}: {self.files} files, {self.bytes} bytes verified in {self.local_dir} "
                f"({self.transferred} transferred{also})")


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
    r = ctx.host.sync(str(source), dst, to_host=True, delete=delete, dry_run=dry_run,
                      excludes=(*PUSH_EXCLUDES, layout.PUSHED))
    files = _changed(r.stdout)
    if not dry_run:  # provenance says the checkout holds a pushed working tree, not a commit alone
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True)
        record = {"at": now_iso(), "from": f"{socket.gethostname()}:{source}",
                  "source_commit": head.stdout.strip() or None}
        ctx.host.write_text(f"{dst}/{layout.PUSHED}", json.dumps(record, sort_keys=True) + "\n")
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
    cmd = [host.python, "-c", MANIFEST_PY, f"{ctx.outputs_dir}/{run_id}", out, json.dumps(NOT_RESULTS),
           TMP_MARK, TMP_SUFFIX]
    try:
        r = host.run(cmd, timeout=3600)
    except LinkDropped:  # hashing is safe to repeat: once more, within the host's reconnect budget
        r = host.run(cmd, timeout=3600)
    return json.loads(r.stdout.strip().splitlines()[-1])


def verify(local_dir: Path, files: list[dict[str, Any]], recorded: dict[str, Any] | None = None,
           links: list[dict[str, Any]] = ()) -> list[str]:
    """Problems with the local copy; a file already verified with the same size and mtime is trusted.

    Each of ``links`` must be a symlink with the same target; a file must be a regular file (never
    a symlink standing in for it), and no other symlink may be in the copy."""
    seen = {f["path"]: f for f in (recorded or {}).get("files", [])}
    problems = []
    for f in files:
        p = local_dir / f["path"]
        try:
            st = p.lstat()
        except FileNotFoundError:
            problems.append(f"{f['path']}: missing")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{f['path']}: not a regular file")
            continue
        if st.st_size != f["size"]:
            problems.append(f"{f['path']}: size {st.st_size} != {f['size']}")
            continue
        prev = seen.get(f["path"])
        if prev and prev["sha256"] == f["sha256"] and prev.get("local_mtime_ns") == st.st_mtime_ns:
            continue
        if _sha256(p) != f["sha256"]:
            problems.append(f"{f['path']}: sha256 differs")
    for ln in links:
        p = local_dir / ln["path"]
        if not p.is_symlink():
            problems.append(f"{ln['path']}: symlink missing")
        elif os.readlink(p) != ln["target"]:
            problems.append(f"{ln['path']}: symlink to {os.readlink(p)!r}, not {ln['target']!r}")
    listed = {ln["path"] for ln in links}
    problems += [f"{rel}: symlink not in the manifest" for rel in _local_links(local_dir) if rel not in listed]
    return problems


def _local_links(local_dir: Path) -> list[str]:
    """Every symlink in the local copy (relative paths), found without following any."""
    out = []
    for d, dirs, names in os.walk(local_dir):
        for n in dirs + names:
            if os.path.islink(os.path.join(d, n)):
                out.append(os.path.relpath(os.path.join(d, n), local_dir))
    return sorted(out)


def _check_links(run_id: str, where: str, man: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's symlinks that stay inside it (copied as links, never followed); refuse the others.

    Refusing is the safe choice for a link that leaves the run (``-> /etc``, ``-> ../../..``): a copy
    of it at home would point into this machine's own files, where any tool that follows it (a
    loader, ``du``, a cleanup ``rm -r link/``) reads or deletes what is not the run's; following it on
    the pod would copy, as a "verified" result, files that are not the run's. A link inside the run
    (``latest -> step_5.npz``) is harmless: it is copied as a link, listed with its target in the
    manifest and FETCHED.json, and checked (same target) like a file."""
    if man.get("root_link") is not None:
        raise InputError(f"fetch-run {run_id}: {where} is a symlink (to {man['root_link']!r}), not a run folder; "
                         f"opsrg never follows it, so nothing was fetched",
                         hint="fetch the run under its real name, or replace the link by the folder")
    links = man.get("links", [])
    out = [ln for ln in links if not ln["inside"]]
    if out:
        shown = ", ".join(f"{ln['path']} -> {ln['target']}" for ln in out[:10]) + \
            (f", and {len(out) - 10} more" if len(out) > 10 else "")
        raise InputError(f"fetch-run {run_id}: {len(out)} symlink(s) in {where} point out of the run ({shown}); "
                         f"opsrg neither follows nor copies such a link, so nothing was fetched",
                         hint=f"remove them from the run on the pod (or replace each by a copy of what it points "
                              f"to), then run: inv fetch-run {run_id}")
    return [{"path": ln["path"], "target": ln["target"]} for ln in links]


def _free_bytes(path: Path) -> int:
    """Free space (for an unprivileged writer) on the disk that holds, or will hold, ``path``."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def space_needed(local_dir: Path, files: list[dict[str, Any]]) -> int:
    """Bytes the copy will add at home: a file already there (same size and mtime: rsync skips it)
    adds nothing, any other its size on the pod's disk (``alloc``: a sparse file is copied sparse)."""
    need = 0
    for f in files:
        try:
            st = (local_dir / f["path"]).lstat()
            if stat.S_ISREG(st.st_mode) and st.st_size == f["size"] and st.st_mtime_ns == f.get("mtime_ns"):
                continue
        except OSError:
            pass
        need += min(f["size"], f.get("alloc", f["size"]))
    return need


def fetch_run(ctx: Context, run_id: str) -> FetchResult:
    """``<outputs>/RUN_ID/`` -> ``<artifacts>/RUN_ID/``: resumable, verified, idempotent.

    Symlinks are never followed: one that points out of the run (or a run folder that is itself a
    link) refuses the fetch, naming it; one inside the run is copied as a link and verified by its
    target (see :func:`_check_links`). Sparse files stay sparse (rsync ``--sparse``), and the free
    space at home is checked against what the copy will take before anything is copied: a run that
    does not fit fails with nothing marked fetched."""
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
    try:
        links = _check_links(run_id, f"{host.name}:{remote}", man)
    except InputError:
        marker.unlink(missing_ok=True)  # the run changed: the local copy is no longer known complete
        raise
    files = man["files"]
    if recorded and [(f["path"], f["sha256"]) for f in recorded.get("files", [])] == \
            [(f["path"], f["sha256"]) for f in files] and recorded.get("links", []) == links and \
            not verify(local, files, recorded, links):
        return FetchResult(run_id, local, len(files), sum(f["size"] for f in files), 0, True, len(links))
    # From here on the local copy is in flux: it is complete only when the marker says so.
    marker.unlink(missing_ok=True)
    from opsrg.core.ui import human_size

    need, free = space_needed(local, files), _free_bytes(local)
    if need > free:
        raise HostError(f"fetch-run {run_id}: the copy needs {human_size(need)} at {local} but only "
                        f"{human_size(free)} is free there; nothing was copied nor marked fetched",
                        hint=f"free some space (or set LOCAL_ARTIFACTS_DIR to a larger disk), then run: {resume}")
    try:
        r = host.sync(remote, str(local), to_host=False, excludes=(FETCHED, *NOT_RESULTS))
    except HostError as e:
        raise type(e)(f"fetch-run {run_id}: transfer interrupted ({e.message}); the partial copy in {local} "
                      f"is not marked complete", hint=f"it resumes where it stopped; run: {resume}") from None
    transferred = len(_changed(r.stdout))
    problems = verify(local, files, links=links)
    if problems:
        listed = {ln["path"] for ln in links}
        for f in files:  # drop bad copies, so the next run sends them whole again
            if any(pr.startswith(f["path"] + ":") for pr in problems):
                p = local / f["path"]
                if p.is_symlink() or not p.is_dir():
                    p.unlink(missing_ok=True)
        for rel in _local_links(local):  # a link that came after the manifest: never left behind
            if rel not in listed:
                (local / rel).unlink(missing_ok=True)
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise HostError(f"fetch-run {run_id}: {len(problems)} of {len(files) + len(links)} entries failed "
                        f"verification ({shown}); the run may still be writing, or the copy was damaged",
                        hint=f"run: {resume}")
    for f in files:
        f["local_mtime_ns"] = (local / f["path"]).stat().st_mtime_ns
    atomic_write_json(marker, {
        "run_id": run_id, "host": host.name, "remote": remote, "complete": True,
        "fetched_at": _now(), "files": files, "n_files": len(files),
        "bytes": sum(f["size"] for f in files), "links": links, "n_links": len(links),
    })
    return FetchResult(run_id, local, len(files), sum(f["size"] for f in files), transferred, False, len(links))


def _now() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def is_fetched(ctx: Context, run_id: str) -> bool:
    return (ctx.artifacts_dir / run_id / FETCHED).is_file()

