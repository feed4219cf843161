"""The supervisor's guardian (``supervise.py run``), run as a bare process: no tmux needed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsrg import supervisor as sv

from support import REPO, retry_until


def _task_dir(tmp_path, command: str, **fields) -> str:
    d = tmp_path / "task"
    d.mkdir()
    (d / "command.sh").write_text(f"#!/usr/bin/env bash\n{command}\n")
    shutil.copy(REPO / "opsrg" / "supervisor.py", d / "supervise.py")
    rec = {"id": "task", "state": "pending", "runner": "tmux", "created_at": sv.now_iso(), "kill_grace_secs": 2.0,
           **fields}
    (d / "status.json").write_text(json.dumps(rec))
    (d / "stdout.log").write_text("")
    return str(d)


def _run(d: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(d, "supervise.py"), "run", d],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _status(d: str) -> dict:
    return json.loads(Path(d, "status.json").read_text())


def test_success_is_left_as_the_supervisor_wrote_it(tmp_path):
    d = _task_dir(tmp_path, "echo hi")
    g = _run(d)
    assert g.wait(20) == 0
    st = _status(d)
    assert st["state"] == "success" and st["exit_code"] == 0 and "evidence" not in st
    assert st["guardian_pid"] == g.pid and st["pid"] != g.pid


def test_a_crashed_supervisor_is_recorded_lost_with_its_traceback(tmp_path):
    d = _task_dir(tmp_path, "echo never", timeout_secs="not a number")
    g = _run(d)
    assert g.wait(20) == 1
    st = _status(d)
    assert st["state"] == "failed" and st["reason"] == "lost"
    assert "exited with code 1 before recording an end" in st["evidence"]
    log = Path(d, "stdout.log").read_text()
    assert "supervisor crashed" in log and "ValueError" in log and "never" not in log


def test_another_supervisors_record_is_not_touched(tmp_path):
    d = _task_dir(tmp_path, "echo never", state="running", pid=os.getpid())
    before = Path(d, "status.json").read_text()
    g = _run(d)
    assert g.wait(20) == 2
    assert Path(d, "status.json").read_text() == before


def test_term_to_the_guardian_reaches_the_supervisor(tmp_path):
    marker = tmp_path / "pid"
    d = _task_dir(tmp_path, f"sleep 60 & echo $! > {marker}; wait")
    g = _run(d)
    retry_until(lambda: _status(d)["state"] == "running" and marker.exists(), what="running")
    os.kill(g.pid, signal.SIGTERM)
    assert g.wait(20) == 1
    st = _status(d)
    assert st["state"] == "failed" and st["reason"] == "supervisor received SIGTERM"
    assert sv.proc_state(int(marker.read_text())) in (None, "Z")


def test_kill9_of_the_supervisor_outside_tmux(tmp_path):
    marker = tmp_path / "pid"
    d = _task_dir(tmp_path, f"{sys.executable} -c 'import os, time; os.setsid(); "
                            f"open(\"{marker}\", \"w\").write(str(os.getpid())); time.sleep(60)' & wait")
    g = _run(d)
    retry_until(lambda: _status(d)["state"] == "running" and marker.exists() and marker.read_text(), what="running")
    os.kill(_status(d)["pid"], signal.SIGKILL)
    assert g.wait(20) == 1
    st = _status(d)
    assert st["state"] == "failed" and st["reason"] == "lost" and "killed by SIGKILL" in st["evidence"]
    assert sv.proc_state(int(marker.read_text())) in (None, "Z")  # it had left the process group


def test_settle_never_rewrites_a_terminal_record(tmp_path):
    """A supervisor killed just after recording its end: the guardian changes nothing."""
    d = _task_dir(tmp_path, "true", state="success", pid=12345, exit_code=0)
    before = Path(d, "status.json").read_text()
    assert sv.settle_orphaned(d, 12345, signal.SIGKILL, subreaper=False) == 1
    assert Path(d, "status.json").read_text() == before


def test_settle_kills_the_process_group_then_records_lost(tmp_path):
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        retry_until(lambda: sv.proc_cmdline(orphan.pid).startswith("sleep"), what="sleep exec'd")
        d = _task_dir(tmp_path, "true", state="running", pid=12345, pgid=orphan.pid, child_pid=orphan.pid - 1)
        t0 = time.monotonic()
        sv.settle_orphaned(d, 12345, signal.SIGKILL, subreaper=False)
        assert time.monotonic() - t0 < sv.ORPHAN_KILL_GRACE
        assert orphan.wait(5) == -signal.SIGTERM
        st = _status(d)
        assert st["state"] == "failed" and st["reason"] == "lost"
        assert f"killed the orphaned process tree (1: {orphan.pid} sleep)" in st["evidence"]
    finally:
        orphan.kill()


@pytest.mark.parametrize("status, how", [(signal.SIGKILL, "was killed by SIGKILL"), (3 << 8, "exited with code 3")])
def test_settle_says_how_the_supervisor_ended(tmp_path, status, how):
    d = _task_dir(tmp_path, "true", state="running", pid=12345)
    sv.settle_orphaned(d, 12345, status, subreaper=False)
    assert _status(d)["evidence"].startswith(f"supervisor pid 12345 {how} before recording an end; its guardian")
