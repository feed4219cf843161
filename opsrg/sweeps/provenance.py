"""Where a result came from: code version, packages, machine, config, seed, times.

``identity`` names a run by what decides its result (resolved config and seed), so an
identical sweep row is recognised and not recomputed unless forced.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from opsrg.core import layout
from opsrg.core.atomic import atomic_write_json
from opsrg.core.checkout import REPO_ROOT
from opsrg.core.clock import now_iso

PACKAGES = ("opsrg", "numpy", "numba", "cupy-cuda12x", "cupy-cuda13x", "invoke", "fabric", "pydantic-settings")


def identity(resolved: dict[str, Any], seed: int) -> str:
    """A short, stable hash of the resolved config and seed."""
    blob = json.dumps({"config": resolved, "seed": int(seed)}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=8)  # the tmux driver records many rows in one process: ask once
def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "note": f"{root} is not a git checkout"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty), "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    from importlib import metadata  # 40 ms to import: only `begin` needs it, not `end`

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


PUSHED = layout.PUSHED
# One shell line that describes a checkout's code (run where the checkout is: on the pod): the
# commit, branch, remote, whether files differ from it (tracked changes, or files git does not
# track and does not ignore), a hash of that difference, and the record of a push, if any.
# Not the project's code: push's record, and the venv that checkout builds in the checkout.
_NOT_CODE = f'":!{PUSHED}" ":!.venv"'
CODE_STATE_SH = ('cd "$1" 2>/dev/null && git rev-parse HEAD 2>/dev/null || exit 3; '
                 'git rev-parse --abbrev-ref HEAD; git remote get-url origin 2>/dev/null || echo; '
                 f'git status --porcelain --untracked-files=all -- . {_NOT_CODE} | head -c 1 | wc -c; '
                 '{ git diff HEAD --no-ext-diff --binary; git ls-files --others --exclude-standard -z -- . '
                 f'{_NOT_CODE} | xargs -0 -r sha256sum; }} | sha256sum | cut -c1-64; '
                 f'if [ -f {PUSHED} ]; then tr -d "\\n" < {PUSHED}; fi; echo')


def without_credentials(url: str) -> str:
    """A remote URL without the user:token part (an https token must never land in a file)."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url.strip())


def parse_code_state(out: str, returncode: int) -> dict[str, Any]:
    """The project's code, from :data:`CODE_STATE_SH`'s output: what a command row's identity keys on."""
    lines = out.splitlines()
    if returncode != 0 or len(lines) < 5:
        return {"commit": None, "note": "not a git checkout: changed code cannot be told apart"}
    commit, branch, remote, dirty, diff = (ln.strip() for ln in lines[:5])
    dirty_b = dirty not in ("", "0")
    out = {"commit": commit, "branch": branch, "remote": without_credentials(remote) or None, "dirty": dirty_b,
           "diff_sha256": diff if dirty_b else None}
    if len(lines) > 5 and lines[5].strip():
        try:
            out["pushed"] = json.loads(lines[5])  # the working tree came by `push`, not by git
        except ValueError:
            out["pushed"] = {"note": f"unreadable {PUSHED}"}
    return out


def code_key(code: dict[str, Any]) -> dict[str, Any]:
    """The part of the code state that decides a result: the commit and the uncommitted diff."""
    return {"commit": code.get("commit"), "diff_sha256": code.get("diff_sha256")}


def why_not_reused(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between a completed run's meta.json and a row planned now, in words."""
    oc, nc = old.get("config") or {}, new.get("config") or {}
    bits = []
    ocode, ncode = oc.get("code"), nc.get("code")
    if ocode != ncode:
        o, n = ocode or {}, ncode or {}
        if o.get("commit") != n.get("commit"):
            bits.append(f"the project's code changed (commit {str(o.get('commit'))[:10]} -> {str(n.get('commit'))[:10]})")
        else:
            bits.append("the project's uncommitted changes differ")
    keys = sorted(k for k in set(oc) | set(nc) if k != "code" and oc.get(k) != nc.get(k))
    if keys:
        bits.append("its configuration differs in " + ", ".join(keys))
    if old.get("seed") != new.get("seed"):
        bits.append(f"the seed differs ({old.get('seed')} -> {new.get('seed')})")
    return "; ".join(bits) or "its identity differs"


@functools.lru_cache(maxsize=1)
def device() -> str:
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=10, check=False)
        if p.returncode == 0 and p.stdout.strip():
            return "gpu: " + ", ".join(x.strip() for x in p.stdout.splitlines() if x.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model}"


def collect(*, run_id: str, seed: int, resolved: dict[str, Any], config_file: str | None = None,
            overrides: dict[str, Any] | None = None, backend: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "run_id": run_id,
        "identity": identity(resolved, seed),
        "seed": seed,
        "config": resolved,
        "overrides": overrides or {},
        "config_file": config_file,
        "config_sha256": file_sha256(config_file) if config_file and Path(config_file).exists() else None,
        "git": dict(git_state()),
        "packages": dict(versions()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": device(),
        "backend": backend,
        "started_at": now_iso(),
        "ended_at": None,
    }
    return meta


def write_meta(run_dir: str | Path, meta: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / layout.META, meta)


def finish_meta(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    path = Path(run_dir) / layout.META
    meta = json.loads(path.read_text()) if path.exists() else {}
    meta.update(fields)
    meta["ended_at"] = now_iso()
    atomic_write_json(path, meta)
    return meta


# ------------------------------------------------------------------ entry point (runs where the run runs)
def planned(plan: dict[str, Any]) -> dict[str, Any]:
    """meta.json of a run starting here: the planned fields plus this machine's (not written).
    Another identity here than planned raises SystemExit."""
    meta = collect(run_id=plan["run_id"], seed=plan["seed"], resolved=plan["config"],
                   config_file=plan.get("config_file"), overrides=plan.get("overrides"), backend=plan.get("backend"))
    if meta["config_sha256"] is None:  # the config file is not on this machine: the launcher's hash
        meta["config_sha256"] = plan.get("config_sha256")
    meta.update({k: plan[k] for k in ("campaign", "out_dir", "out_mode", "project") if k in plan})
    if os.environ.get("SLURM_JOB_ID"):
        meta["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    if plan.get("identity") and plan["identity"] != meta["identity"]:
        raise SystemExit(f"{plan['run_id']}: identity {meta['identity']} here, {plan['identity']} when planned")
    return meta


def begin(meta_dir: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Write ``meta.json`` for a run starting here (:func:`planned`)."""
    meta = planned(plan)
    write_meta(meta_dir, meta)
    return meta


def _summary_ok(summary: str) -> bool:
    try:
        return bool(json.loads(Path(summary).read_text()).get("ok"))
    except (OSError, ValueError):
        return False


def end(meta_dir: str, summary: str, exit_code: int) -> dict[str, Any]:
    """Close ``meta.json``: ``ended_at``, the exit code and ``ok`` from the run's summary.json."""
    return finish_meta(meta_dir, ok=_summary_ok(summary) and exit_code == 0, exit_code=exit_code)


def books(meta_dir: str, plan: dict[str, Any], out_dir: str, mode: str, exit_code: int, started_at: str) -> int:
    """A script row's books in one interpreter start, once its command (and a final sync) ended:
    what a Slurm job runs instead of ``begin``, a summary and ``end``. meta.json is written once,
    whole (its start time taken by bash). Returns the run's status (a command row whose own
    summary says ``ok: false`` fails)."""
    from opsrg.sweeps import runs

    try:
        meta = planned(plan)
    except SystemExit as e:  # another identity than planned: recorded, and the run fails
        print(f"[opsrg] {e}", file=sys.stderr, flush=True)
        return 1
    status, why = runs.write_summary(out_dir, mode, exit_code)
    if why:
        print(f"[opsrg] {why}", file=sys.stderr, flush=True)
    meta.update(started_at=started_at or meta["started_at"], ended_at=now_iso(), exit_code=status,
                ok=_summary_ok(f"{out_dir}/summary.json") and status == 0)
    write_meta(meta_dir, meta)
    return status


def main(argv: list[str]) -> int:
    if len(argv) == 7 and argv[0] == "books":
        return books(argv[1], json.loads(argv[2]), argv[3], argv[4], int(argv[5]), argv[6])
    if len(argv) == 3 and argv[0] == "begin":
        begin(argv[1], json.loads(argv[2]))
        return 0
    if len(argv) == 4 and argv[0] == "end":
        end(argv[1], argv[2], int(argv[3]))
        return 0
    print("usage: python -m opsrg.provenance begin META_DIR PLAN_JSON\n"
          "       python -m opsrg.provenance end META_DIR SUMMARY_JSON EXIT_CODE\n"
          "       python -m opsrg.provenance books META_DIR PLAN_JSON OUT_DIR shell|command EXIT_CODE STARTED_AT",
          file=sys.stderr)
    return 2

