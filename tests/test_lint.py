"""The lint rules of pyproject.toml hold over the whole tree (ruff is pinned, so this is stable)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from support import REPO


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).parent / "ruff"
    exe = str(ruff) if ruff.exists() else shutil.which("ruff")
    assert exe, "ruff is not installed: run `make setup` (it installs the dev extra)"
    r = subprocess.run([exe, "check", "--no-cache", "opsrg", "tests", "tasks.py", "bench"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
