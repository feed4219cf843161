"""`opsrg init` in a user's own project: starter files that run their script, written whole or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _opsrg(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OPSRG_ENV_FILE"}
    return subprocess.run([str(BIN / "opsrg"), *args], cwd=root, capture_output=True, text=True, timeout=60, env=env)


def test_init_writes_a_project_that_plans_its_own_rows(tmp_path):
    root = tmp_path / "proj"
    (root / "config").mkdir(parents=True)
    (root / "train.py").write_text("print('hi')\n")
    (root / "config" / "small.py").write_text("lr = 1\n")
    (root / ".gitignore").write_text("__pycache__/\n")
    r = _opsrg(root, "sweep-status")
    assert r.returncode == 2 and f"no workflow.env in {root}" in r.stderr and "opsrg init --script" in r.stderr

    r = _opsrg(root, "init", "--script", "nope.py")
    assert r.returncode == 2 and "no script 'nope.py'" in r.stderr and not (root / "workflow.env").exists()
    r = _opsrg(root, "init", "--script", "train.py", "--config", "config/small.py", "--tasks-py")
    assert r.returncode == 0, r.stderr
    assert "next: opsrg pod-up && opsrg bootstrap && opsrg checkout && opsrg sweep-start" in r.stdout
    assert (root / ".gitignore").read_text() == "__pycache__/\n.opsrg/\nartifacts/\n"
    assert (root / "tasks.py").read_text().endswith("from opsrg.cli.tasks import ns  # noqa: F401\n")
    cfg = json.loads(_opsrg(root, "config-show", "--json").stdout)["settings"]
    assert cfg["RUN_COMMAND"]["value"] == "python train.py {config} --seed={seed} {overrides}"
    assert cfg["OPS_REMOTE_REPO"]["value"] == "." and cfg["RUN_COMMAND"]["source"].endswith("workflow.env:12")

    before = (root / "workflow.env").read_text()
    r = _opsrg(root, "init", "--script", "train.py")
    assert r.returncode == 2 and "exist" in r.stderr and "--force" in r.stderr
    assert (root / "workflow.env").read_text() == before  # nothing written

    assert _opsrg(root, "fsm-reset", "CHECKED_OUT").returncode == 0
    r = _opsrg(root, "sweep-start", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["runs"] == ["train-s1", "train-s2"]
    assert "python train.py config/small.py --seed=2" in plan["jobs"][1]["script"]


def test_init_without_a_config_file_runs_the_script_alone(tmp_path):
    (tmp_path / "sim.py").write_text("")
    assert _opsrg(tmp_path, "init", "--script", "sim.py").returncode == 0
    cfg = json.loads(_opsrg(tmp_path, "config-show", "--json").stdout)["settings"]
    assert cfg["RUN_COMMAND"]["value"] == "python sim.py --seed={seed} {overrides}"
    assert "sim-s1,sim.py,1" in (tmp_path / "sweeps" / "sweep.csv").read_text()
