"""Helpers shared by the tests (importable as `support`; `conftest` is not a unique module name)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SERVICE_MARKS = ("tmux", "ssh", "slurm")
# Under pytest-xdist each worker is its own pytest session (gw0, gw1, ...); "" when run serially.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


# Names of what a test run sets up outside its temp folder (Slurm clusters, port blocks): per
# checkout, so that runs of two checkouts on one machine do not meet, and per worker.
CHECKOUT = hashlib.sha256(str(REPO).encode()).hexdigest()[:6]


def instance_tag() -> str:
    return f"{CHECKOUT}-{WORKER}" if WORKER else CHECKOUT


def worker_index() -> int:
    """0 for a serial run or worker gw0, N for worker gwN: what per-worker ports and folders derive from."""
    return int(WORKER[2:]) if WORKER.startswith("gw") and WORKER[2:].isdigit() else 0


def require(tool: str, why: str) -> None:
    """Skip locally, fail in CI, when ``tool`` is not on PATH."""
    if shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}"):
        return
    if IN_CI:
        pytest.fail(f"{tool} is required in CI ({why}) but was not found")
    pytest.skip(f"{tool} not installed ({why})")


def unavailable(why: str) -> None:
    """Skip locally, fail in CI, when something this machine kind has (root, a tmpfs mount) is missing."""
    if IN_CI:
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


def inv(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `inv ARGS` from the repository, as a user would."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "inv"), *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def retry_until(fn, timeout=10.0, interval=0.05, what="condition"):
    """Poll ``fn`` until it returns something truthy; raise TimeoutError naming ``what``."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def cgroup_or_skip() -> None:
    """Skip locally, fail in CI, unless this process may create a cgroup v2 (root and a writable
    cgroup2 mount, as this machine kind has)."""
    from opsrg.tracked import supervisor as sv

    if sv.cgroup2_root() is None:
        unavailable("no cgroup v2 hierarchy mounted here")
    cg = sv.cgroup_create(f"/opsrg-test-probe-{os.getpid()}", sv.now_iso())  # one per process: workers probe at once
    if cg is None:
        unavailable("cgroup v2 is not writable here (needs root and a writable cgroup2 mount)")
    sv.cgroup_remove(cg)


def sleeping(token: str) -> list[int]:
    """Live processes whose command line is exactly ``sleep TOKEN``."""
    from opsrg.tracked.supervisor import proc_cmdline, proc_state

    return [int(n) for n in os.listdir("/proc") if n.isdigit()
            and proc_cmdline(int(n)).split() == ["sleep", token] and proc_state(int(n)) not in (None, "Z")]


def warm_once(cpu) -> None:
    """Compile the numba kernels in one test process at a time: the first compiles them into the
    checkout's cache (about 30 CPU-seconds), the others then load it in a second, instead of every
    pytest-xdist worker compiling its own copy at once on a fresh clone."""
    from opsrg.core.atomic import locked

    with locked(REPO / ".pytest_cache" / "numba-compile", timeout=900):
        cpu.warm()
