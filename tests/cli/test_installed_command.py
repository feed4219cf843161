"""The installed `opsrg` command, run in a user's own project (a git repository of its own that
holds a workflow.env and no opsrg code), as the user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

BIN = Path(sys.executable).parent


def _run(exe: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "OPSRG_ENV_FILE"}
    return subprocess.run([str(BIN / exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})})


def _names(listing: str) -> list[str]:
    return sorted(re.findall(r"^  ([a-z][a-z0-9-]+)", listing, flags=re.M))


@pytest.fixture
def user_project(tmp_path, tmux_socket) -> Path:
    """A project as a user has it: a git repository with a script, a workflow.env, a sub-folder."""
    root = tmp_path / "my-project"
    (root / "src" / "deep").mkdir(parents=True)
    (root / "train.py").write_text("print('training')\n")
    (root / "workflow.env").write_text(
        "POD_PROVIDER=local\n"
        f"OPS_TMUX_SOCKET={tmux_socket}\n"
        "WF_TMUX_SESSION=t\n"
        "TASK_KILL_GRACE_SECS=2\n"
    )
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    return root


def test_opsrg_lists_every_task_that_inv_lists():
    mine = _run("opsrg", "--list", cwd=REPO)
    theirs = _run("inv", "--list", cwd=REPO)
    assert mine.returncode == theirs.returncode == 0, mine.stderr + theirs.stderr
    assert _names(mine.stdout) == _names(theirs.stdout) and "sweep-start" in _names(mine.stdout)
    version = _run("opsrg", "--version", cwd=REPO)
    assert version.returncode == 0 and version.stdout.split() == ["opsrg", "0.1.0"]


@pytest.mark.tmux
def test_opsrg_in_a_sub_folder_uses_the_projects_workflow_env(user_project):
    sub = user_project / "src" / "deep"
    r = _run("opsrg", "config-show", "--json", cwd=sub)
    assert r.returncode == 0, r.stderr
    assert Path(__import__("json").loads(r.stdout)["env_file"]) == (user_project / "workflow.env").resolve()
    r = _run("opsrg", "fsm-status", cwd=sub)
    assert r.returncode == 0 and r.stdout.startswith("state: INIT"), r.stdout + r.stderr
    # relative paths of the settings resolve against the project folder, not the working directory
    assert f"{user_project.resolve()}/.opsrg/pod/outputs/_control/workflow_state.json" in r.stdout
    assert not (sub / ".opsrg").exists()
    # the local pod, then a tracked task, started and waited on from the sub-folder
    r = _run("opsrg", "pod-up", cwd=sub)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run("opsrg", "task-run", "--id", "hello", "--cmd", "echo hello from the project", cwd=sub)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "opsrg task-wait --id hello" in r.stdout and "inv " not in r.stdout
    r = _run("opsrg", "task-wait", "--id", "hello", "--timeout-secs", "30", cwd=sub)
    assert r.returncode == 0, r.stdout + r.stderr
    log = user_project / ".opsrg" / "pod" / "outputs" / "_tasks" / "hello" / "stdout.log"
    assert "hello from the project" in log.read_text()


def test_opsrg_hints_name_opsrg_commands(user_project):
    r = _run("opsrg", "checkout", cwd=user_project)
    assert r.returncode != 0
    assert "not allowed in state INIT" in r.stderr and "opsrg bootstrap" in r.stderr and "inv " not in r.stderr
    r = _run("opsrg", "task-status", cwd=user_project)
    assert r.returncode == 2 and "see: opsrg task-status --help" in r.stderr


def test_opsrg_env_file_wins_over_the_folders_own(user_project, tmp_path):
    other = tmp_path / "elsewhere.env"
    other.write_text("POD_PROVIDER=local\nWF_TMUX_SESSION=other\n")
    r = _run("opsrg", "config-show", "--json", cwd=user_project, env={"OPSRG_ENV_FILE": str(other)})
    assert r.returncode == 0, r.stderr
    assert Path(__import__("json").loads(r.stdout)["env_file"]) == other.resolve()


def test_a_projects_own_tasks_py_is_one_import(user_project):
    """A user who wants `inv` in their project writes the two lines; `inv` then has every task."""
    (user_project / "tasks.py").write_text("from opsrg.cli.tasks import ns  # noqa: F401\n")
    mine = _run("inv", "--list", cwd=user_project)
    assert mine.returncode == 0, mine.stderr
    assert _names(mine.stdout) == _names(_run("opsrg", "--list", cwd=user_project).stdout)
    r = _run("inv", "fsm-status", cwd=user_project)
    assert r.returncode == 0 and r.stdout.startswith("state: INIT"), r.stdout + r.stderr


@pytest.mark.tmux
def test_task_run_runs_in_the_checkout_with_its_venv_first_on_path(user_project):
    """As sweep rows do: `python` is the project's, without activating anything."""
    import stat

    venv_bin = user_project / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(f'#!/bin/sh\necho "the project\'s python"\nexec {sys.executable} "$@"\n')
    (venv_bin / "python").chmod(stat.S_IRWXU)
    with (user_project / "workflow.env").open("a") as fh:
        fh.write(f"OPS_REMOTE_REPO={user_project}\n")
    assert _run("opsrg", "pod-up", cwd=user_project).returncode == 0
    code = "import os; print('cwd', os.getcwd()); print('venv', os.environ['VIRTUAL_ENV'])"
    r = _run("opsrg", "task-run", "--id", "py", "--cmd", f"python -c {code!r}", cwd=user_project / "src")
    assert r.returncode == 0, r.stderr
    r = _run("opsrg", "task-wait", "--id", "py", "--timeout-secs", "30", cwd=user_project)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (user_project / ".opsrg" / "pod" / "outputs" / "_tasks" / "py" / "stdout.log").read_text()
    assert "the project's python" in log and f"cwd {user_project}\n" in log and f"venv {user_project}/.venv" in log
