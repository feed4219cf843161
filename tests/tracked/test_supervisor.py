"""The supervisor's guardian (``supervise.py run``), run as a bare process: no tmux needed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from opsrg.tracked import supervisor as sv

from support import REPO, cgroup_or_skip, retry_until, sleeping


def _task_dir(tmp_path, command: str, **fields) -> str:
    d = tmp_path / "task"
    d.mkdir()
    (d / "command.sh").write_text(f"#!/usr/bin/env bash\n{command}\n")
    shutil.copy(REPO / "opsrg" / "tracked" / "supervisor.py", d / "supervise.py")
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


# ------------------------------------------------ claims, kill requests, containment, a full disk
def _prepared(tmp_path, k: int) -> str:
    d = tmp_path / "incoming" / f"p{k}"
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"id": "same", "state": "pending", "claimant": k}))
    (d / "command.sh").write_text(f"echo {k}\n")
    return str(d)


def _claimer(prep, target, keep, barrier, out) -> None:
    barrier.wait()
    out.put(sv.claim(prep, target, keep))


@pytest.mark.parametrize("replace", [False, True])
def test_of_twenty_concurrent_claims_exactly_one_wins_and_the_others_change_nothing(tmp_path, replace):
    import multiprocessing as mp

    target = str(tmp_path / "tasks" / "same")
    os.makedirs(os.path.dirname(target))
    if replace:  # an ended task holds the id: every claimant tries to move it aside
        os.makedirs(target)
        Path(target, "status.json").write_text(json.dumps({"id": "same", "state": "success"}))
    n = 20
    preps = [_prepared(tmp_path, k) for k in range(n)]
    barrier, out = mp.Barrier(n), mp.Queue()
    procs = [mp.Process(target=_claimer, args=(preps[k], target, str(tmp_path / "replaced" / f"k{k}") if replace
                                               else None, barrier, out)) for k in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(60)
    assert sum(r["claimed"] for r in results) == 1, results
    winner = json.loads(Path(target, "status.json").read_text())["claimant"]
    assert Path(target, "command.sh").read_text() == f"echo {winner}\n"
    assert sorted(os.listdir(tmp_path / "incoming")) == sorted(f"p{k}" for k in range(n) if k != winner)
    assert {r["why"] for r in results if not r["claimed"]} <= ({"live", "raced"} if replace else {"exists"})
    if replace:  # moved aside once, by the winner; nobody moved the winner's folder
        assert len(os.listdir(tmp_path / "replaced")) == 1


def test_a_kill_requested_before_the_start_means_the_command_never_runs(tmp_path):
    marker = tmp_path / "ran"
    d = _task_dir(tmp_path, f"touch {marker}", kill_requested_at=sv.now_iso())
    g = _run(d)
    assert g.wait(20) == 1
    st = _status(d)
    assert st["state"] == "failed" and st["reason"] == "killed by task-kill" and "never ran" in st["evidence"]
    assert st["exit_code"] is None and not marker.exists()


def test_request_kill_of_a_pending_task_that_nothing_will_start_decides_at_once(tmp_path):
    import socket

    launcher = subprocess.Popen(["true"])
    launcher.wait()
    d = _task_dir(tmp_path, f"touch {tmp_path}/ran", launcher_pid=launcher.pid, launcher_host=socket.gethostname(),
                  tmux={"socket": "opsrg-test-none", "session": "none", "window": "task"})
    t0 = time.monotonic()
    st = sv.request_kill(d, grace=1.0)
    assert time.monotonic() - t0 < 2.0
    assert st["state"] == "failed" and st["reason"] == "killed by task-kill" and "never ran" in st["evidence"]
    assert _run(d).wait(20) == 2  # a supervisor that comes late finds it ended, and starts nothing
    assert not (tmp_path / "ran").exists()


def test_request_kill_never_calls_a_command_that_had_ended_killed(tmp_path):
    """Running on record, supervisor and command gone (how the command ended is unknown): lost, not killed."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    d = _task_dir(tmp_path, "true", state="running", pid=ended.pid, child_pid=ended.pid, pgid=ended.pid)
    st = sv.request_kill(d, grace=0.5)
    assert st["state"] == "failed" and st["reason"] == "lost" and "already ended" in st["evidence"]


@pytest.mark.parametrize("containment", ["cgroup", "subreaper"])
def test_an_env_cleared_setsid_daemon_ends_with_a_task_that_succeeded(tmp_path, containment):
    """No tmux: the guardian alone. The daemon has no tag and its own session; the task's end still ends it."""
    if containment == "cgroup":
        cgroup_or_skip()
    token = f"612.{uuid.uuid4().int % 10**9:09d}"  # a unique duration names the daemon
    d = _task_dir(tmp_path, f'( env -i sh -c "setsid sleep {token} &" ); sleep 0.5')
    g = subprocess.Popen([sys.executable, os.path.join(d, "supervise.py"), "run", d], stdin=subprocess.DEVNULL,
                         env={**os.environ, sv.CONTAINMENT_ENV: containment})
    daemon = retry_until(lambda: sleeping(token), what="the daemon to start")[0]
    assert b"OPSRG_TASK_TAG" not in Path(f"/proc/{daemon}/environ").read_bytes() and os.getsid(daemon) == daemon
    assert g.wait(20) == 0
    st = _status(d)
    assert st["state"] == "success" and st["containment"] == containment
    assert sv.proc_state(daemon) in (None, "Z")  # gone before the record said success
    assert any(x.startswith(f"{daemon} ") for x in st["killed_at_end"]), st
    if containment == "cgroup":
        assert not os.path.exists(st["cgroup"])


def test_containment_can_be_capped_to_the_tag(tmp_path):
    d = _task_dir(tmp_path, "true")
    g = subprocess.Popen([sys.executable, os.path.join(d, "supervise.py"), "run", d], stdin=subprocess.DEVNULL,
                         env={**os.environ, sv.CONTAINMENT_ENV: "tag"})
    assert g.wait(20) == 0
    st = _status(d)
    assert st["state"] == "success" and st["containment"] == "tag" and "cgroup" not in st


def test_a_record_write_is_retried_while_the_disk_is_full(monkeypatch, tmp_path):
    import errno

    monkeypatch.setattr(sv, "WRITE_RETRY_DELAYS", (0.01, 0.01, 0.01))
    calls = []

    def full_twice():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return "written"

    hb = tmp_path / "heartbeat"
    hb.write_text("")
    os.utime(hb, (0, 0))
    assert sv._retrying(full_twice, str(hb)) == "written" and len(calls) == 3
    assert hb.stat().st_mtime > 0  # heartbeats while it waits: observers see a live supervisor
    calls.clear()

    def always_full():
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        sv._retrying(always_full)
    assert len(calls) == 4

    def denied():
        calls.append(1)
        raise PermissionError(errno.EACCES, "Permission denied")

    calls.clear()
    with pytest.raises(PermissionError):
        sv._retrying(denied)
    assert len(calls) == 1  # not a full disk: not retried


def test_a_command_that_cannot_join_its_cgroup_runs_once_under_the_subreaper(tmp_path):
    """The move into the cgroup fails in the child, before exec: nothing ran, and it starts again without it."""
    fake = tmp_path / "fake-cgroup"
    (fake / "cgroup.procs").mkdir(parents=True)  # a folder: opening it for writing fails
    ran = tmp_path / "ran"
    d = _task_dir(tmp_path, f"echo x >> {ran}")
    code = (f"import sys; sys.path.insert(0, {d!r}); import supervise; "
            f"supervise.cgroup_create = lambda *a: {str(fake)!r}; sys.exit(supervise.main(['run', {d!r}]))")
    assert subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, timeout=30).returncode == 0
    st = _status(d)
    assert st["state"] == "success" and st["containment"] == "subreaper" and "cgroup" not in st
    assert ran.read_text() == "x\n"


def test_a_task_started_again_carries_its_earlier_logs_numbered(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "stdout.1.log").write_text("first\n")
    (old / "stdout.log").write_text("second\n")
    (new / "stdout.log").write_text("")
    sv.carry_logs(str(old), str(new))
    assert sorted(p.name for p in new.iterdir()) == ["stdout.1.log", "stdout.2.log", "stdout.log"]
    assert (new / "stdout.1.log").read_text() == "first\n" and (new / "stdout.2.log").read_text() == "second\n"
    assert (new / "stdout.log").read_text() == ""  # the new attempt's own log is untouched
    assert sv.earlier_logs(str(new)) == [(1, "stdout.1.log"), (2, "stdout.2.log")]
    kept = sv.keep_logs(str(new), str(tmp_path / "run" / "logs"))
    assert kept == ["stdout.1.log", "stdout.2.log", "stdout.log"]
    assert sorted(p.name for p in (tmp_path / "run" / "logs").iterdir()) == kept  # no temp file left
