"""Tracked tasks on a real tmux server (private socket per test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsrg.context import Context
from opsrg.core.errors import InputError, TaskError
from opsrg.tracked.records import TaskState, validate_id
from opsrg.tracked.supervisor import proc_state

from support import cgroup_or_skip, retry_until, sleeping

pytestmark = pytest.mark.tmux


@pytest.fixture
def tasks(project):
    return Context.load().tasks


def test_success_writes_all_files(tasks):
    rec = tasks.run("ok", "echo out; echo err >&2")
    assert rec.state in (TaskState.PENDING, TaskState.RUNNING, TaskState.SUCCESS)
    rec, waited_out = tasks.wait("ok", timeout=20)
    assert not waited_out and rec.state == TaskState.SUCCESS and rec.exit_code == 0
    p = tasks.paths("ok")
    log = open(p.log).read()
    assert "out" in log and "err" in log
    assert open(p.command).read().endswith("echo out; echo err >&2\n")
    st = json.load(open(p.status))
    assert st["started_at"] and st["ended_at"] and st["pid"] and st["host"]
    assert st["tmux"]["session"] == "t"


def test_nonzero_exit_is_failed_with_code(tasks):
    tasks.run("bad", "exit 7")
    rec, _ = tasks.wait("bad", timeout=20)
    assert rec.state == TaskState.FAILED and rec.exit_code == 7 and "exit code 7" in rec.reason


def test_timeout_kills_group_and_records_timed_out(tasks, tmp_path):
    marker = tmp_path / "child.pid"
    tasks.run("slow", f"sleep 60 & echo $! > {marker}; wait", timeout_secs=1)
    rec, _ = tasks.wait("slow", timeout=20)
    assert rec.state == TaskState.TIMED_OUT and "timeout" in rec.reason
    child = int(marker.read_text())
    retry_until(lambda: proc_state(child) in (None, "Z"), what="background child killed")


def test_wait_returns_soon_after_the_end(tasks):
    tasks.run("quick", "sleep 0.5")
    rec, _ = tasks.wait("quick", timeout=20)
    from opsrg.tracked.supervisor import parse_iso

    assert time.time() - parse_iso(rec.raw["ended_at"]) < 0.5


def _status(tasks, task_id: str) -> dict:
    """status.json as it is on disk: no observer (no probe, no check) runs."""
    return json.loads(Path(tasks.paths(task_id).status).read_text())


def _gone(pid: int) -> bool:
    return proc_state(pid) in (None, "Z")


def _deep_tree_command(marker) -> str:
    """A command whose processes outlive a killed ``bash``: a background sleep, a nested bash with its
    own background sleep, a python grandchild, and a python grandchild that leaves the process group."""
    py = sys.executable
    note = f"open({str(marker)!r}, 'a').write(str(os.getpid()) + chr(10))"
    return (f"sleep 1000 & echo $! >> {marker}; "
            f"bash -c 'sleep 1000 & echo $! >> {marker}; wait' & "
            f"{py} -c \"import os, time; {note}; time.sleep(1000)\" & "
            f"{py} -c \"import os, time; os.setsid(); {note}; time.sleep(1000)\" & "
            "wait")


def test_kill9_of_supervisor_kills_the_tree_and_records_lost_at_once(tasks, tmp_path):
    """No observer runs: the supervisor's guardian settles the task the moment it dies."""
    marker = tmp_path / "pids"
    tasks.run("victim", _deep_tree_command(marker))
    st = retry_until(lambda: (s := _status(tasks, "victim"))["state"] == "running" and s, what="running")
    retry_until(lambda: marker.exists() and len(marker.read_text().split()) == 4, what="all grandchildren started")
    grandchildren = [int(x) for x in marker.read_text().split()]
    pids = [st["child_pid"], *grandchildren]
    assert not any(_gone(p) for p in pids)
    t0 = time.monotonic()
    os.kill(st["pid"], signal.SIGKILL)
    st = retry_until(lambda: (s := _status(tasks, "victim"))["state"] != "running" and s, timeout=5,
                     interval=0.02, what="status.json to leave running")
    settled = time.monotonic() - t0
    assert st["state"] == "failed" and st["reason"] == "lost" and st["exit_code"] is None
    assert f"supervisor pid {st['pid']} was killed by SIGKILL" in st["evidence"]
    assert f"guardian pid {st['guardian_pid']} killed the orphaned process tree" in st["evidence"]
    # Every process was killed before the record said lost.
    assert [p for p in pids if not _gone(p)] == []
    retry_until(lambda: _gone(st["guardian_pid"]), timeout=5, what="the guardian to exit")
    sock = st["tmux"]["socket"]
    retry_until(lambda: "victim" not in subprocess.run(
        ["tmux", "-L", sock, "list-windows", "-a", "-F", "#{window_name}"], capture_output=True, text=True,
        check=False).stdout, timeout=5, what="the task's tmux window to close")
    assert "lost: supervisor pid" in Path(tasks.paths("victim").log).read_text()
    assert settled < 3.0, f"took {settled:.2f}s"
    # An observer now agrees and changes nothing.
    before = Path(tasks.paths("victim").status).read_text()
    assert tasks.status("victim").reason == "lost"
    assert Path(tasks.paths("victim").status).read_text() == before


def test_supervisor_and_guardian_killed_together_is_left_to_observers(tasks, tmp_path):
    """Both killed at once (as a crash of the host's process tree would): an observer records it lost."""
    marker = tmp_path / "grandchild.pid"
    tasks.run("victim2", f"sleep 60 & echo $! > {marker}; wait")
    rec = retry_until(lambda: (r := tasks.read("victim2")).state == TaskState.RUNNING and r, what="running")
    retry_until(marker.exists, what="grandchild started")
    guardian = rec.raw["guardian_pid"]
    assert os.getpgid(guardian) == os.getpgid(rec.pid)  # the group holds exactly these two
    os.killpg(os.getpgid(rec.pid), signal.SIGKILL)
    rec, _ = tasks.wait("victim2", timeout=20)
    assert rec.state == TaskState.FAILED and rec.reason == "lost"
    assert f"supervisor pid {rec.pid}" in rec.evidence and "guardian" not in rec.evidence
    grandchild = int(marker.read_text())
    retry_until(lambda: _gone(grandchild), what="orphan killed")


def test_killing_tmux_server_never_leaves_running(tasks, project):
    tasks.run("srv", "sleep 60")
    retry_until(lambda: tasks.read("srv").state == TaskState.RUNNING, what="running")
    sock = json.load(open(tasks.paths("srv").status))["tmux"]["socket"]
    subprocess.run(["tmux", "-L", sock, "kill-server"], check=True)
    rec, _ = tasks.wait("srv", timeout=40)
    assert rec.state == TaskState.FAILED
    assert rec.reason in ("lost",) or "SIGHUP" in rec.reason


def test_task_kill_stops_whole_tree(tasks, tmp_path):
    marker = tmp_path / "pids"
    tasks.run("tree", f"(sleep 60 & echo $! >> {marker}; wait) & sleep 60 & echo $! >> {marker}; wait")
    retry_until(lambda: marker.exists() and len(marker.read_text().split()) == 2, what="tree started")
    rec = tasks.kill("tree")
    assert rec.state == TaskState.FAILED and rec.reason == "killed by task-kill"
    for pid in map(int, marker.read_text().split()):
        retry_until(lambda pid=pid: proc_state(pid) in (None, "Z"), what=f"pid {pid} killed")


def test_observers_do_not_change_a_live_record(tasks):
    tasks.run("live", "echo started; sleep 3")
    retry_until(lambda: "started" in Path(tasks.paths("live").log).read_text()
                and tasks.read("live").state == TaskState.RUNNING, what="running and logging")
    before = open(tasks.paths("live").status).read()
    tasks.status("live")
    tasks.list()
    chunks = tasks.logs("live", follow=True)
    next(chunks, None)
    chunks.close()  # like Ctrl-C on --follow
    assert open(tasks.paths("live").status).read() == before
    rec, _ = tasks.wait("live", timeout=20)
    assert rec.state == TaskState.SUCCESS


def test_existing_id_refused_then_replaced(tasks):
    tasks.run("dup", "true")
    tasks.wait("dup", timeout=20)
    with pytest.raises(TaskError, match="already exists"):
        tasks.run("dup", "true")
    tasks.run("dup", "echo second", replace=True)
    rec, _ = tasks.wait("dup", timeout=20)
    assert rec.state == TaskState.SUCCESS and "second" in open(tasks.paths("dup").log).read()
    assert os.listdir(f"{tasks.root}/.replaced")


def test_replace_refuses_a_running_task(tasks):
    tasks.run("busy", "sleep 30")
    with pytest.raises(TaskError, match="stop it first"):
        tasks.run("busy", "true", replace=True)
    tasks.kill("busy")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "a..b", ".hidden", "x y", "x;rm", "é"])
def test_bad_ids_are_refused(bad):
    with pytest.raises(InputError):
        validate_id(bad)


def test_command_is_not_interpolated(tasks, tmp_path):
    cmd = "printf '%s\\n' \"$(echo 'quoted $HOME; `x`')\""
    tasks.run("quote", cmd)
    rec, _ = tasks.wait("quote", timeout=20)
    assert rec.state == TaskState.SUCCESS
    assert open(tasks.paths("quote").command).read().splitlines()[1] == cmd


def test_lost_pending_task_whose_window_never_came(tasks, monkeypatch):
    tasks.run("never", "true")
    tasks.wait("never", timeout=20)
    # Forge a pending record whose supervisor never started, created long ago: once the guardian of the
    # real run has exited (it would take a pending record without a pid for the one it guards).
    p = tasks.paths("never")
    st = json.load(open(p.status))
    retry_until(lambda: _gone(st.get("guardian_pid") or 0), timeout=10, what="the guardian to exit")
    st.update(state="pending", pid=None, created_at="2020-01-01T00:00:00+00:00", tmux={
        "socket": "opsrg-none", "session": "none", "window": "never"})
    open(p.status, "w").write(json.dumps(st))
    rec = tasks.status("never")
    assert rec.state == TaskState.FAILED and rec.reason == "lost" and "never started" in rec.evidence


def test_garbage_status_is_a_clear_error_and_can_be_replaced(tasks):
    tasks.run("torn", "true")
    tasks.wait("torn", timeout=20)
    open(tasks.paths("torn").status, "w").write('{"id": "torn", "sta')
    with pytest.raises(TaskError, match=r"status.json: unreadable task status"):
        tasks.status("torn")
    assert "torn" not in [r.id for r in tasks.list()]
    with pytest.raises(TaskError, match="already exists"):
        tasks.run("torn", "true")
    tasks.run("torn", "true", replace=True)
    assert tasks.wait("torn", timeout=20)[0].state == TaskState.SUCCESS


def test_stale_heartbeat_is_evidence_of_loss(tmp_path):
    """A live supervisor that stopped heartbeating (hung, or frozen host) is recorded as lost.

    (tmux sends SIGCONT to stopped pane processes, so the hang is staged outside tmux.)
    """
    from opsrg.tracked import supervisor as sv

    d = tmp_path / "hung"
    d.mkdir()
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "supervise.py", "run", str(d)])
    try:
        retry_until(lambda: "supervise.py" in sv.proc_cmdline(fake.pid), what="fake supervisor exec'd")
        (d / "status.json").write_text(json.dumps({"id": "hung", "state": "running", "pid": fake.pid,
                                                  "runner": "tmux", "created_at": sv.now_iso()}))
        (d / "heartbeat").write_text("")
        old = time.time() - 100
        os.utime(d / "heartbeat", (old, old))
        out = sv.check(str(d), stale_secs=30)
        assert out["record"]["state"] == "failed" and out["record"]["reason"] == "lost"
        assert "heartbeat is 100s old" in out["record"]["evidence"]
        os.utime(d / "heartbeat")
        assert sv.check(str(d), stale_secs=30)["record"]["state"] == "failed"  # terminal stays final
    finally:
        fake.kill()


# ------------------------------------------------------- processes that left the group and the tree
DAEMON_PY = """import os, sys, time
if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    sys.exit(0)
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(1000)
"""


def _daemonizing_task(tasks, tmp_path, task_id: str, **kw) -> int:
    """Start a task that double-forks a daemon (its own session, parent gone) and sleeps; the daemon's pid."""
    script, marker = tmp_path / "daemon.py", tmp_path / f"{task_id}.pid"
    script.write_text(DAEMON_PY)
    tasks.run(task_id, f"{sys.executable} {script} {marker}; sleep 60", **kw)
    retry_until(lambda: marker.exists() and marker.read_text().strip(), what="the daemon to start")
    pid = int(marker.read_text())
    assert os.getpgid(pid) != _status(tasks, task_id)["pgid"]  # it left the task's group (and tree)
    return pid


@pytest.mark.parametrize("how", ["task-kill", "timeout", "lost"])
def test_a_daemon_that_left_the_group_dies_with_its_task(tasks, tmp_path, how):
    """Found by the task's tag in its environment: task-kill, a timeout and a lost task all kill it."""
    tid = f"daemon-{how}"
    daemon = _daemonizing_task(tasks, tmp_path, tid, **({"timeout_secs": 3} if how == "timeout" else {}))
    if how == "task-kill":
        rec = tasks.kill(tid)
        assert rec.reason == "killed by task-kill"
    elif how == "timeout":
        rec, _ = tasks.wait(tid, timeout=20)
        assert rec.state == TaskState.TIMED_OUT
    else:  # supervisor and guardian die together: the daemon is init's now, only the tag finds it
        st = _status(tasks, tid)
        os.killpg(os.getpgid(st["pid"]), signal.SIGKILL)
        rec, _ = tasks.wait(tid, timeout=20)
        assert rec.reason == "lost" and "tag included" in rec.evidence, rec.evidence
    retry_until(lambda: _gone(daemon), timeout=5, what="the daemon killed")


def test_opsrg_does_not_pass_a_task_tag_to_what_it_starts(monkeypatch):
    from opsrg.hosts.local import LocalHost
    from opsrg.tracked.supervisor import TAG

    monkeypatch.setenv(TAG, "/some/task")
    assert LocalHost().run(f"echo ${{{TAG}-unset}}").stdout.strip() == "unset"


# ------------------------------------------------------------------ task-logs streams
def test_logs_come_in_bounded_pieces_and_split_characters_survive(tasks):
    tasks.run("multi", "printf 'h\\303\\251llo w\\303\\266rld \\342\\202\\254%.0s' $(seq 40)")
    rec, _ = tasks.wait("multi", timeout=20)
    assert rec.state == TaskState.SUCCESS
    raw = Path(tasks.paths("multi").log).read_bytes()
    pieces = list(tasks.logs("multi", chunk=7))
    assert len(pieces) > 20 and all(len(p.encode()) <= 7 + 3 for p in pieces)
    assert "".join(pieces) == raw.decode("utf-8") and "\ufffd" not in "".join(pieces)


def test_logs_follow_streams_until_the_task_ends(tasks):
    tasks.run("slow", "for i in 1 2 3; do echo line $i; sleep 0.3; done")
    text = "".join(tasks.logs("slow", follow=True, poll=0.05, chunk=4))
    assert "line 1\nline 2\nline 3\n" in text and tasks.read("slow").state == TaskState.SUCCESS


def test_task_logs_of_a_huge_log_runs_in_bounded_memory(tasks):
    """`inv task-logs` on a 200 MB log took 631 MB: it read and decoded the whole file at once."""
    tasks.run("huge", "true")
    assert tasks.wait("huge", timeout=20)[0].state == TaskState.SUCCESS
    log = Path(tasks.paths("huge").log)
    line = ("é" * 20 + "x" * 59 + "\n").encode()
    with open(log, "ab") as fh:
        fh.write(line * (100 * 2**20 // len(line)))
    size = log.stat().st_size
    probe = ("import resource, subprocess, sys\n"
             "p = subprocess.run([sys.argv[1], 'task-logs', '--id', 'huge'], stdout=subprocess.PIPE)\n"
             "print(p.returncode, len(p.stdout), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, str(Path(sys.executable).parent / "inv")],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    rc, nbytes, maxrss_kib = (int(x) for x in out.stdout.split())
    assert rc == 0 and nbytes == size, out.stderr
    assert maxrss_kib < 100 * 1024, f"task-logs peaked at {maxrss_kib // 1024} MiB for a {size >> 20} MiB log"


# ------------------------------------------------ containment beyond the tag, a launcher that died
def _escaping_task(tasks, tid: str, containment: str, tail: str, **kw) -> int:
    """A task whose command leaves ``( env -i sh -c "setsid sleep N &" )`` behind: no tag, its own session, and
    (its parent gone) re-parented out of the command's tree. Returns the daemon's pid."""
    import uuid

    from opsrg.tracked.supervisor import CONTAINMENT_ENV, TAG

    token = f"612.{uuid.uuid4().int % 10**9:09d}"
    tasks.run(tid, f'( env -i sh -c "setsid sleep {token} &" ); {tail}', env={CONTAINMENT_ENV: containment}, **kw)
    daemon = retry_until(lambda: sleeping(token), what="the daemon to start")[0]
    assert TAG.encode() not in Path(f"/proc/{daemon}/environ").read_bytes()  # the tag cannot find it
    assert os.getsid(daemon) == daemon and os.getpgid(daemon) != _status(tasks, tid).get("pgid", -1)
    return daemon


@pytest.mark.parametrize("how", ["task-kill", "timeout", "success"])
@pytest.mark.parametrize("containment", ["cgroup", "subreaper"])
def test_an_env_cleared_setsid_daemon_ends_with_its_task(tasks, containment, how):
    """Every ending, success included, ends every process of the task (a cgroup, or the guardian's orphans)."""
    if containment == "cgroup":
        cgroup_or_skip()
    tid = f"esc-{containment}-{how}"
    daemon = _escaping_task(tasks, tid, containment, "sleep 0.3" if how == "success" else "sleep 60",
                            **({"timeout_secs": 2} if how == "timeout" else {}))
    if how == "task-kill":
        rec = tasks.kill(tid)
        assert rec.state == TaskState.FAILED and rec.reason == "killed by task-kill"
    else:
        rec, _ = tasks.wait(tid, timeout=20)
        assert rec.state == (TaskState.TIMED_OUT if how == "timeout" else TaskState.SUCCESS), rec
    assert rec.raw["containment"] == containment
    assert _gone(daemon), f"{how}: the daemon outlived its task"  # gone before the record said the task ended
    if how == "success":
        assert any(x.startswith(f"{daemon} ") for x in rec.raw["killed_at_end"]), rec.raw
    if containment == "cgroup":
        assert not os.path.exists(rec.raw["cgroup"])


def test_the_cgroup_holds_an_env_cleared_daemon_when_supervisor_and_guardian_die_together(tasks):
    """Neither tag nor guardian is left: only the cgroup finds the daemon, and an observer kills it."""
    cgroup_or_skip()
    daemon = _escaping_task(tasks, "esc-lost", "cgroup", "sleep 60")
    st = retry_until(lambda: (s := _status(tasks, "esc-lost"))["state"] == "running" and s, what="running")
    os.killpg(os.getpgid(st["pid"]), signal.SIGKILL)
    rec, _ = tasks.wait("esc-lost", timeout=20)
    assert rec.reason == "lost" and "in its cgroup" in rec.evidence, rec.evidence
    retry_until(lambda: _gone(daemon), timeout=5, what="the daemon killed")
    assert not os.path.exists(rec.raw["cgroup"])


LAUNCHER_PY = """import os, sys
from opsrg.context import Context
tasks = Context.load().tasks
tasks.runner.start = lambda *a, **k: os._exit(9)  # the launcher dies after the claim, before the window
tasks.run(sys.argv[1], "true")
"""


def test_a_pending_task_whose_launcher_died_before_its_window_is_lost_at_once(tasks, tmp_path):
    """No 30 s grace when the evidence is there: same host, launcher pid gone, no tmux window."""
    from opsrg.tracked.supervisor import now_iso, parse_iso

    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER_PY)
    launcher = subprocess.Popen([sys.executable, str(script), "orphan"])
    assert launcher.wait(30) == 9
    st = _status(tasks, "orphan")
    assert st["state"] == "pending" and st["launcher_pid"] == launcher.pid and st["launcher_host"]
    rec = tasks.status("orphan")  # well within the 30 s grace
    assert rec.state == TaskState.FAILED and rec.reason == "lost", rec
    assert f"pid {launcher.pid}" in rec.evidence and "never came" in rec.evidence
    assert time.time() - parse_iso(rec.created_at) < 10
    # While its launcher lives, a pending task without a window keeps its grace.
    p = tasks.paths("orphan")
    st.update(state="pending", launcher_pid=os.getpid(), created_at=now_iso())
    Path(p.status).write_text(json.dumps(st))
    assert tasks.probe("orphan")["alive"] is True
