"""Shared fixtures: an isolated project (workflow.env, outputs) and a private tmux server.

In CI (CI=true) a test that needs tmux, sshd or Slurm must run: a skip of such a test is
turned into a failure, so a missing component can never pass silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from support import IN_CI, REPO, SERVICE_MARKS, WORKER, inv, require  # noqa: F401  (re-exported)

pytest_plugins = ["sshd", "slurm_cluster"]  # tests/sshd.py, tests/slurm_cluster.py: real-service fixtures


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if IN_CI and rep.skipped and any(item.get_closest_marker(m) for m in SERVICE_MARKS):
        rep.outcome = "failed"
        rep.longrepr = f"skipped in CI, which must run it: {rep.longrepr}"


def pytest_collection_modifyitems(config, items):
    """Under xdist, the grouped modules first (each runs on one worker, in order, and the TIMEOUT
    wait of tests/sweeps/slurm/test_sweep_slurm.py is a minute or more): the other tests then fill the other
    workers, and the run does not end waiting on a group that started late. A serial run keeps
    the usual order."""
    if WORKER:
        items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)  # stable


# Every tmux server of a test run lives in a folder of the run's own (TMUX_TMPDIR, set before any test
# and inherited by everything the tests start; the test sshd sets it for the pod's sessions too), and
# under pytest-xdist in a sub-folder per worker. A worker's end-of-session cleanup then sees its own
# servers only, never another worker's still running nor those of another test run on this machine.
RUN_DIR = "OPSRG_TEST_TMUX_RUN_DIR"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the xdist controller or a serial run: the workers inherit it
        base = Path(os.environ.get("TMUX_TMPDIR") or "/tmp")
        os.environ[RUN_DIR] = str(base / f"opsrg-tmux-{uuid.uuid4().hex[:8]}")
    d = Path(os.environ[RUN_DIR]) / WORKER if WORKER else Path(os.environ[RUN_DIR])
    d.mkdir(parents=True, exist_ok=True)
    os.environ["TMUX_TMPDIR"] = str(d)


def pytest_unconfigure(config):
    """The controller, or a serial run, at the very end: stop what is left in the run's tmux folder
    (a worker that crashed cleaned nothing up) and remove it."""
    if hasattr(config, "workerinput") or RUN_DIR not in os.environ:
        return
    d = Path(os.environ[RUN_DIR])
    for sock in d.glob("**/tmux-*/*"):
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def _tmux_dir() -> Path:
    return Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"


@pytest.fixture(scope="session", autouse=True)
def _no_tmux_server_left_behind():
    """Tests whose projects name their own opsrg-* socket (the Slurm modules) leave its server running:
    at the end of the session, stop every server on an opsrg-* socket that the session created."""
    def serving() -> set[str]:  # sockets with a live server (a killed server leaves its socket file)
        return {p.name for p in _tmux_dir().glob("opsrg-*")
                if subprocess.run(["tmux", "-L", p.name, "has-session"], capture_output=True).returncode == 0}

    before = serving()
    yield
    for name in serving() - before:
        subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True)
        (_tmux_dir() / name).unlink(missing_ok=True)


@pytest.fixture
def tmux_socket():
    require("tmux", "tracked tasks run in tmux")
    name = f"opsrg-test-{uuid.uuid4().hex[:10]}"
    yield name
    subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True)
    sock = _tmux_dir() / name
    sock.unlink(missing_ok=True)


@pytest.fixture
def project(tmp_path, monkeypatch, tmux_socket):
    """A throw-away project: its own workflow.env, outputs and tmux socket."""
    env = tmp_path / "workflow.env"
    env.write_text(
        "POD_PROVIDER=local\n"
        f"OPS_REMOTE_OUTPUTS_DIR={tmp_path}/outputs\n"
        f"OPS_TMUX_SOCKET={tmux_socket}\n"
        "WF_TMUX_SESSION=t\n"
        "TASK_KILL_GRACE_SECS=2\n"
    )
    monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
    for k in list(os.environ):
        if k.upper() in _known_keys():
            monkeypatch.delenv(k, raising=False)
    return tmp_path


def _known_keys() -> set[str]:
    from opsrg.core.settings import KNOWN_KEYS

    return KNOWN_KEYS
