"""Helpers shared by the tests (importable as `support`; `conftest` is not a unique module name)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SERVICE_MARKS = ("tmux", "ssh", "slurm")


def require(tool: str, why: str) -> None:
    """Skip locally, fail in CI, when ``tool`` is not on PATH."""
    if shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}"):
        return
    if IN_CI:
        pytest.fail(f"{tool} is required in CI ({why}) but was not found")
    pytest.skip(f"{tool} not installed ({why})")


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
