"""examples/trainer, as the tutorial runs it: copied into a fresh git repository, driven with the
installed `opsrg` command on the local pod (real tmux)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

pytestmark = pytest.mark.tmux
BIN = Path(sys.executable).parent


def test_the_example_trainers_sweep_runs_as_the_tutorial_says(tmp_path, tmux_socket):
    root = tmp_path / "nanotrain"
    shutil.copytree(REPO / "examples" / "trainer", root)
    with (root / "workflow.env").open("a") as fh:
        fh.write(f"OPS_TMUX_SOCKET={tmux_socket}\nWF_TMUX_SESSION=t\nSWEEP_TMUX_SESSION=ts\n")
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "my trainer"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    env = {k: v for k, v in os.environ.items() if k != "OPSRG_ENV_FILE"}
    env["PATH"] = f"{BIN}:{env['PATH']}"  # `python` is the one opsrg is installed with, as after pip install

    def opsrg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "opsrg"), *args], cwd=root, capture_output=True, text=True, timeout=180,
                              env=env)

    for step in ("pod-up", "bootstrap", "checkout", "sweep-start"):
        r = opsrg(step)
        assert r.returncode == 0, f"{step}: {r.stdout}{r.stderr}"
    r = opsrg("sweep-monitor", "--wait", "--timeout-secs", "150")
    assert r.returncode == 1, r.stdout + r.stderr  # lr10-s1 diverges
    runs = {x["run_id"]: x for x in json.loads(opsrg("sweep-status", "--json").stdout)["runs"]}
    assert {k: v["state"] for k, v in runs.items()} == {
        "lr3e-2-s1": "completed", "lr1e-1-s1": "completed", "lr1e-1-s2": "completed", "lr10-s1": "failed"}
    assert runs["lr10-s1"]["exit_code"] == 2 and "diverged (lr=10.0)" in runs["lr10-s1"]["reason"]
    out = root / ".opsrg" / "pod" / "outputs"
    m = json.loads((out / "lr1e-1-s2" / "metrics.json").read_text())
    assert m["hidden"] == 32 and m["lr"] == 0.1 and m["seed"] == 2 and m["loss"] < 0.05
    assert (out / "lr1e-1-s2" / "ckpt.npz").is_file() and (out / "lr1e-1-s2" / "logs" / "stdout.log").is_file()
    assert json.loads((out / "lr3e-2-s1" / "meta.json").read_text())["project"]["dirty"] is False
    assert "loss" in opsrg("sweep-status").stdout  # SWEEP_METRICS=loss: a column of the table
    rep = json.loads(opsrg("sweep-report", "--json").stdout)
    losses = [x["metrics"]["loss"] for x in rep["runs"] if x["metrics"]["loss"] is not None]
    assert len(losses) == 3 and losses == sorted(losses) and rep["runs"][-1]["run_id"] == "lr10-s1"
    assert set(rep["runs"][0]["params"]) == {"lr", "hidden", "seed"}
    png = Path(rep["png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.parent == root / "artifacts"

    r = opsrg("sweep-start", "--resume")  # the diverging row again: it fails again, its first log kept
    assert r.returncode == 0 and "resumed: lr10-s1" in r.stdout, r.stdout + r.stderr
    assert opsrg("sweep-monitor", "--wait", "--timeout-secs", "60").returncode == 1
    assert (out / "lr10-s1" / "logs" / "stdout.1.log").is_file()
    r = opsrg("fetch-run", "lr3e-2-s1")
    assert r.returncode == 0, r.stderr
    assert (root / "artifacts" / "lr3e-2-s1" / "metrics.json").is_file()
