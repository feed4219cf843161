"""sweep-attach: the live view of a sweep, a tmuxp workspace loaded by tmuxp's own loader on
opsrg's tmux socket (real tmux), with a status window and one pane per running run; the user's
default tmux server is never touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsrg.ops.dashboard import MAX_PANES, workspace

from support import retry_until

pytestmark = pytest.mark.tmux
BIN = Path(sys.executable).parent


def test_the_workspace_has_a_status_window_and_a_pane_per_log():
    ws = workspace("s", "/p", "opsrg sweep-status --watch", {f"r{i}": f"/o/_tasks/r{i}/stdout.log" for i in range(14)})
    status, runs = ws["windows"]
    # each pane runs its command as its own process (never typed into an interactive shell)
    assert status["panes"][0]["shell"] == "sh -c 'opsrg sweep-status --watch; exec sh'" and ws["start_directory"] == "/p"
    assert len(runs["panes"]) == MAX_PANES + 1 and runs["layout"] == "tiled"
    assert "tail -n 40 -F /o/_tasks/r0/stdout.log" in runs["panes"][0]["shell"]
    assert "2 more running" in runs["panes"][-1]["shell"]


def _tmux(sock: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True).stdout


def test_sweep_attach_builds_the_view_on_opsrgs_socket_only(tmp_path, tmux_socket):
    root = tmp_path / "p"
    root.mkdir()
    (root / "cfg.txt").write_text("")
    (root / "workflow.env").write_text(
        f"POD_PROVIDER=local\nOPS_TMUX_SOCKET={tmux_socket}\nWF_TMUX_SESSION=t\nSWEEP_TMUX_SESSION=ts\n"
        f"OPS_REMOTE_REPO={root}\nWF_FSM_ENFORCE=0\nSWEEP_CSV=s.csv\nSWEEP_MAX_PARALLEL=2\n"
        "RUN_COMMAND=bash -c 'echo working on {run_id}; sleep 30'\nTASK_KILL_GRACE_SECS=1\n")
    (root / "s.csv").write_text("run_id,config,seed,overrides,notes\nr1,cfg.txt,1,,\nr2,cfg.txt,2,,\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPSRG_ENV_FILE", "TMUX")}
    default = Path(env.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / "default"
    had_default = default.exists()

    def opsrg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "opsrg"), *args], cwd=root, capture_output=True, text=True, timeout=60,
                              env=env)

    assert opsrg("sweep-start").returncode == 0
    out = root / ".opsrg" / "pod" / "outputs"
    retry_until(lambda: all("working on" in ((out / "_tasks" / r / "stdout.log").read_text()
                                             if (out / "_tasks" / r / "stdout.log").exists() else "")
                            for r in ("r1", "r2")), 20, what="both rows running")
    r = opsrg("sweep-attach", "--detached", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    built = json.loads(r.stdout)
    session = built["session"]
    assert sorted(built["runs"]) == ["r1", "r2"] and built["attach"][:3] == ["tmux", "-L", tmux_socket]
    ws = json.loads(Path(built["workspace"]).read_text())
    assert Path(built["workspace"]).parent == out / "_control" and ws["session_name"] == session
    assert _tmux(tmux_socket, "list-windows", "-t", session, "-F", "#{window_name}").split() == ["status", "runs"]
    assert len(_tmux(tmux_socket, "list-panes", "-t", f"{session}:runs").splitlines()) == 2
    retry_until(lambda: "working on r1" in _tmux(tmux_socket, "capture-pane", "-p", "-t", f"{session}:runs.0")
                or "working on r2" in _tmux(tmux_socket, "capture-pane", "-p", "-t", f"{session}:runs.0"),
                20, what="a run's log in its pane")
    retry_until(lambda: "campaign" in _tmux(tmux_socket, "capture-pane", "-p", "-t", f"{session}:status"), 30,
                what="sweep-status --watch in the status window")
    r = opsrg("sweep-attach", "--detached")  # again: the view is rebuilt, not doubled
    assert r.returncode == 0 and "attach with" in r.stdout, r.stderr
    assert _tmux(tmux_socket, "list-sessions", "-F", "#{session_name}").split().count(session) == 1
    assert default.exists() == had_default  # the user's default tmux server was never started
    assert opsrg("sweep-cancel").returncode == 0
