"""checkout of a user's own project (not opsrg) on the local pod: its repository cloned, its venv
built as its files say, its check run; then a command row runs in that checkout (real tmux)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tmux
BIN = Path(sys.executable).parent


def _project(root: Path, tmux_socket: str, check: str) -> dict[str, str]:
    root.mkdir(parents=True)
    (root / "run.py").write_text("import json, os, sys\n"
                                 "json.dump({'prefix': sys.prefix, 'cwd': os.getcwd()},"
                                 " open(os.environ['OPSRG_RUN_DIR'] + '/where.json', 'w'))\n")
    (root / "requirements.txt").write_text("# nothing to install\n")
    (root / "s.csv").write_text("run_id,config,seed,overrides,notes\nr1,run.py,1,,\n")
    (root / "workflow.env").write_text(
        f"POD_PROVIDER=local\nOPS_TMUX_SOCKET={tmux_socket}\nWF_TMUX_SESSION=t\nSWEEP_TMUX_SESSION=ts\n"
        f"REMOTE_PYTHON_BIN={sys.executable}\nSWEEP_CSV=s.csv\nRUN_COMMAND=python {{config}}\n"
        f"CHECKOUT_CHECK_CMD={check}\n")
    (root / ".gitignore").write_text(".opsrg/\n")
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "mine"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    return {k: v for k, v in os.environ.items() if k != "OPSRG_ENV_FILE"}


def _opsrg(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "opsrg"), *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _ready(root: Path, env: dict[str, str]) -> None:
    for step in ("pod-up", "bootstrap"):
        r = _opsrg(root, env, step)
        assert r.returncode == 0, f"{step}: {r.stdout}{r.stderr}"


def test_checkout_builds_the_projects_venv_and_rows_run_in_it(tmp_path, tmux_socket):
    root = tmp_path / "mine"
    env = _project(root, tmux_socket, "python -c 'import sys; assert sys.prefix.endswith(\".venv\")'")
    _ready(root, env)
    r = _opsrg(root, env, "checkout")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "installed requirements.txt" in r.stdout and "check passed" in r.stdout
    repo = root / ".opsrg" / "pod" / "repo"
    assert (repo / "run.py").is_file() and (repo / ".venv" / "bin" / "python").exists()
    cfg = (repo / ".venv" / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg
    assert _opsrg(root, env, "sweep-start").returncode == 0
    r = _opsrg(root, env, "sweep-monitor", "--wait", "--timeout-secs", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    where = json.loads((root / ".opsrg" / "pod" / "outputs" / "r1" / "where.json").read_text())
    assert where == {"prefix": str(repo / ".venv"), "cwd": str(repo)}


def test_a_failing_check_fails_checkout_and_the_state_stays(tmp_path, tmux_socket):
    root = tmp_path / "mine"
    env = _project(root, tmux_socket, "python -c 'import no_such_gpu_lib'")
    _ready(root, env)
    r = _opsrg(root, env, "checkout")
    assert r.returncode != 0 and "CHECKOUT_CHECK_CMD" in r.stdout + r.stderr
    st = json.loads(_opsrg(root, env, "fsm-status", "--json").stdout)["state"]
    assert st == "BOOTSTRAPPED"


@pytest.mark.ssh
def test_checkout_of_the_users_project_on_an_ssh_pod(tmp_path, tmux_socket, sshd_server):
    """Over the real sshd: the committed branch travels as a bundle, the project's venv is built on
    the pod and checked, and a tracked task runs in that checkout with that venv's python."""
    from sshd import write_ssh_env

    root = tmp_path / "mine"
    env = _project(root, tmux_socket, "python -c 'import sys; assert sys.prefix.endswith(\".venv\")'")
    check = (root / "workflow.env").read_text().splitlines()[-1]  # CHECKOUT_CHECK_CMD=...
    write_ssh_env(root, sshd_server, tmux_socket, CHECKOUT_BRANCH="main")
    with (root / "workflow.env").open("a") as fh:
        fh.write(check + "\n")
    for step in ("pod-up", "bootstrap", "checkout"):
        r = _opsrg(root, env, step)
        assert r.returncode == 0, f"{step}: {r.stdout}{r.stderr}"
    assert "bundle" in r.stdout and "installed requirements.txt" in r.stdout and "check passed" in r.stdout
    repo = root / "pod" / "repo"
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout == head
    r = _opsrg(root, env, "task-run", "--id", "where", "--cmd", "python -c 'import os, sys; print(sys.prefix, os.getcwd())'")
    assert r.returncode == 0, r.stderr
    assert _opsrg(root, env, "task-wait", "--id", "where", "--timeout-secs", "30").returncode == 0
    assert f"{repo}/.venv {repo}" in _opsrg(root, env, "task-logs", "--id", "where").stdout
