"""Fault injection on tracked tasks: whatever is killed, no task is left running and no file is torn.

Each test prints its figure (trials, faults, lost, corrupt); docs/reliability.md summarises them.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsrg.context import Context
from opsrg.tracked import supervisor as sv
from opsrg.tracked.records import TaskState

from support import REPO, inv, retry_until, unavailable

pytestmark = pytest.mark.tmux


def _all_json_valid(root: str) -> tuple[int, int]:
    files = corrupt = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".json"):
                files += 1
                try:
                    json.load(open(os.path.join(dirpath, n)))
                except ValueError:
                    corrupt += 1
    return files, corrupt


def _status_on_disk(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except ValueError:
        pytest.fail("torn status.json observed by a reader")


def test_kill9_supervisor_at_random_moments(project, tmp_path):
    """Each task leaves a grandchild behind its bash; the supervisor is killed at a random moment.

    With no observer running, every record must become terminal within seconds (the guardian
    settles a killed supervisor's task) and no grandchild may survive, whatever the outcome.
    """
    tasks = Context.load().tasks
    rng = random.Random(1234)
    trials, killed, kill_at = 16, 0, {}
    for i in range(trials):
        tasks.run(f"k{i}", f"sleep 30 & echo $! > {tmp_path}/k{i}.pid; sleep 0.4; echo done")
        time.sleep(rng.uniform(0.0, 0.6))
        pid = _status_on_disk(tasks.paths(f"k{i}").status).get("pid")
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
                kill_at[i] = time.monotonic()
            except ProcessLookupError:
                pass
    # No observer: read the files and /proc only.
    settle = []
    deadline = time.monotonic() + 15
    for i in range(trials):
        path = tasks.paths(f"k{i}").status
        while (st := _status_on_disk(path))["state"] not in sv.TERMINAL:
            assert time.monotonic() < deadline, f"k{i} still {st['state']} with no observer: {st}"
            time.sleep(0.02)
        if i in kill_at and st.get("reason") == "lost":
            settle.append(sv.parse_iso(st["ended_at"]) - (time.time() - (time.monotonic() - kill_at[i])))
    survivors = []
    for i in range(trials):
        marker = tmp_path / f"k{i}.pid"
        if marker.exists() and marker.read_text().strip():
            gc = int(marker.read_text())
            try:
                retry_until(lambda gc=gc: sv.proc_state(gc) in (None, "Z"), timeout=3, what=f"k{i} grandchild gone")
            except TimeoutError:
                survivors.append(gc)
    states = {}
    for i in range(trials):
        rec, waited_out = tasks.wait(f"k{i}", timeout=30)
        assert not waited_out
        states[rec.state] = states.get(rec.state, 0) + 1
        if rec.state == TaskState.FAILED:
            assert rec.reason == "lost" and "its guardian pid" in rec.evidence, rec.evidence
    files, corrupt = _all_json_valid(tasks.root)
    running = sum(1 for r in tasks.list() if not r.state.is_terminal)
    worst = f"{max(settle):.2f}s" if settle else "-"
    print(f"\nFIGURE kill-9 supervisor: trials={trials} faults={killed} left_running={running} "
          f"corrupt_json={corrupt}/{files} outcomes={ {k.value: v for k, v in states.items()} } "
          f"surviving_grandchildren={len(survivors)} kill_to_lost_max={worst} (no observer)")
    assert running == 0 and corrupt == 0 and not survivors


def test_tmux_server_killed_with_tasks_in_flight(project):
    tasks = Context.load().tasks
    n = 6
    for i in range(n):
        tasks.run(f"s{i}", f"sleep {20 + i}")
    for i in range(n):
        t0 = time.monotonic()
        while tasks.read(f"s{i}").state != TaskState.RUNNING:
            assert time.monotonic() - t0 < 10
            time.sleep(0.05)
    sock = tasks.runner.socket
    subprocess.run(["tmux", "-L", sock, "kill-server"], check=True)
    recs = [tasks.wait(f"s{i}", timeout=40)[0] for i in range(n)]
    files, corrupt = _all_json_valid(tasks.root)
    left = sum(not r.state.is_terminal for r in recs)
    print(f"\nFIGURE tmux server killed: tasks={n} left_running={left} corrupt_json={corrupt}/{files} "
          f"reasons={sorted({r.reason for r in recs})}")
    assert left == 0 and corrupt == 0
    assert all(r.state == TaskState.FAILED for r in recs)


def _racer(task_dir: str, k: int, barrier) -> None:
    barrier.wait()
    for j in range(20):
        state = "running" if j < 10 else ("success" if k % 2 else "failed")
        sv.update_status(task_dir, state=state, **{f"w{k}": j})


def test_twenty_writers_on_one_task_record(tmp_path):
    d = tmp_path / "rec"
    d.mkdir()
    (d / "status.json").write_text(json.dumps({"id": "rec", "state": "pending"}))
    barrier = mp.Barrier(20)
    procs = [mp.Process(target=_racer, args=(str(d), k, barrier)) for k in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    rec = json.loads((d / "status.json").read_text())
    leftovers = [x for x in os.listdir(d) if x.endswith(".tmp")]
    print(f"\nFIGURE 20 writers on one status.json: final={rec['state']} torn=0 tmp_left={len(leftovers)}")
    assert rec["state"] in ("success", "failed") and not leftovers
    # Every writer's 'running' updates landed before the record went terminal; none after it.
    final = rec["state"]
    for k in range(20):
        if (k % 2 and final == "success") or (not k % 2 and final == "failed"):
            continue
        assert rec.get(f"w{k}", 9) <= 9, "an update landed after the terminal state"


# ------------------------------------------------ claims, kills right after a start, a full disk
def _inv_popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "inv"), *args], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _all(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        so, se = p.communicate(timeout=180)
        out.append((p.returncode, so, se))
    return out


def test_concurrent_task_runs_of_one_id_start_it_exactly_once(project, tmp_path):
    """20 `inv task-run --id same` at once, then 10 `--replace` at once: one starts each time, the rest fail
    clearly (exit 1), and nothing of the winner's is touched (its command runs exactly once)."""
    assert inv("pod-up").returncode == 0
    tasks = Context.load().tasks
    ran = tmp_path / "ran"
    results = _all([_inv_popen("task-run", "--id", "same", "--cmd", f"echo {k} >> {ran}") for k in range(20)])
    won = [k for k, (rc, _, _) in enumerate(results) if rc == 0]
    assert len(won) == 1, [r[0] for r in results]
    assert "started task same" in results[won[0]][1]
    for rc, _, err in (r for k, r in enumerate(results) if k != won[0]):
        assert rc == 1 and err.startswith("error: task 'same' already exists (") and "Traceback" not in err, err
    rec, _ = tasks.wait("same", timeout=30)
    assert rec.state == TaskState.SUCCESS
    assert ran.read_text().split() == [str(won[0])]  # ran once, and it was the winner's command
    assert Path(tasks.paths("same").command).read_text().endswith(f"echo {won[0]} >> {ran}\n")
    assert Path(tasks.paths("same").log).read_text().startswith("\n[opsrg] task same success")  # not truncated
    # Replacing an ended task, ten at once: one moves it aside and starts; the others find it live or moved.
    results2 = _all([_inv_popen("task-run", "--id", "same", "--replace", "--cmd", f"echo r{k} >> {ran}; sleep 30")
                     for k in range(10)])
    won2 = [k for k, (rc, _, _) in enumerate(results2) if rc == 0]
    assert len(won2) == 1, [(r[0], r[2]) for r in results2]
    for rc, _, err in (r for k, r in enumerate(results2) if k != won2[0]):
        assert rc == 1 and "Traceback" not in err and (
            "stop it first" in err or "was replaced by another task-run" in err), err
    retry_until(lambda: f"r{won2[0]}" in ran.read_text(), what="the replacement to run")
    time.sleep(0.5)
    assert ran.read_text().split() == [str(won[0]), f"r{won2[0]}"]
    assert len(os.listdir(f"{tasks.root}/.replaced")) == 1
    assert os.listdir(f"{tasks.root}/.incoming") == []  # every loser removed its own prepared folder
    assert tasks.kill("same").reason == "killed by task-kill"
    reasons: dict[str, int] = {}
    for k, (_, _, err) in enumerate(results2):
        if k != won2[0]:
            why = "found it live" if "stop it first" in err else "lost the race to move it"
            reasons[why] = reasons.get(why, 0) + 1
    print(f"\nFIGURE concurrent task-run of one id: 20 at once -> started=1 refused=19 command_runs=1; "
          f"10 --replace at once -> started=1 refused=9 ({reasons}) moved_aside=1")


def test_task_kill_right_after_task_run_records_what_the_command_did(project, tmp_path):
    """40 trials of task-run followed by task-kill at once, or up to 0.45 s later (as `inv task-kill` would
    come). Each command ends by touching a file with TERM ignored (so a kill that lands there cannot stop it):
    the record must say killed iff the file is absent. Kills land before the start, in the sleep, and after."""
    tasks = Context.load().tasks
    trials, recs = 40, {}
    for i in range(trials):
        pause, delay = (i % 4) * 0.15, (i // 4 % 5) * 0.1
        tasks.run(f"kr{i}", f"sleep {delay:.2f}; trap '' TERM; touch {tmp_path}/done{i}; exit 0")
        time.sleep(pause)
        recs[i] = tasks.kill(f"kr{i}")
    time.sleep(1.0)  # a command recorded killed that lived on would have touched its file by now
    outcomes: dict[str, int] = {}
    for i, rec in recs.items():
        done = (tmp_path / f"done{i}").exists()
        on_disk = _status_on_disk(tasks.paths(f"kr{i}").status)
        assert on_disk["state"] == rec.state.value and on_disk.get("reason", "") == rec.reason  # nothing later
        if rec.state == TaskState.SUCCESS:
            assert done and rec.exit_code == 0, (i, rec)
            kind = "success"
        else:
            assert rec.state == TaskState.FAILED and rec.reason == "killed by task-kill", (i, rec)
            assert not done, f"kr{i}: recorded killed, but its command ran to the end: {rec}"
            kind = "killed before start" if "never ran" in rec.evidence else "killed running"
        outcomes[kind] = outcomes.get(kind, 0) + 1
    print(f"\nFIGURE task-kill right after task-run: trials={trials} outcomes={outcomes} disagreements=0")


def _fill(path: Path) -> int:
    """Fill the filesystem of ``path`` (a file made there) until it is full; returns the bytes written."""
    n, chunk = 0, b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                n += os.write(fd, chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
        while True:  # the last pages
            try:
                n += os.write(fd, b"\0" * 512)
            except OSError:
                break
    finally:
        os.close(fd)
    return n


def test_a_full_disk_keeps_the_last_good_record_and_the_exit_code_survives(project, tmp_path, tmux_socket):
    """The outputs on a 1 MiB tmpfs, filled while two tasks run: one command then exits 3, the other task's
    supervisor is killed; a third task died with its guardian before. Commands that must write say `disk full
    at PATH` (exit 2, one line); task-list lists on; the records stay the last good ones; once space is freed
    the supervisor's and the guardian's retried writes land, and an observer records the dead task."""
    if os.geteuid() != 0:
        unavailable("mounting a small tmpfs needs root")
    outputs = project / "outputs"
    outputs.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(outputs)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        assert inv("pod-up").returncode == 0
        tasks = Context.load().tasks
        go = tmp_path / "go"  # outside the full filesystem
        tasks.run("df-exit", f"while [ ! -e {go} ]; do sleep 0.05; done; exit 3")
        tasks.run("df-lost", "sleep 60")
        tasks.run("df-dead", "sleep 60")
        sts = {t: retry_until(lambda t=t: (s := _status_on_disk(tasks.paths(t).status))["state"] == "running" and s,
                              what=f"{t} running") for t in ("df-exit", "df-lost", "df-dead")}
        os.killpg(os.getpgid(sts["df-dead"]["pid"]), signal.SIGKILL)  # supervisor and guardian: left to observers
        retry_until(lambda: sv.proc_state(sts["df-dead"]["guardian_pid"]) in (None, "Z"), what="df-dead's guardian gone")
        filled = _fill(outputs / "filler")
        full = {
            "task-run": inv("task-run", "--id", "more", "--cmd", "true"),
            "fsm-reset": inv("fsm-reset", "CHECKED_OUT"),
            "task-status": inv("task-status", "--id", "df-dead"),  # would record it lost: cannot
        }
        reads = {"task-status": inv("task-status", "--id", "df-exit"), "task-list": inv("task-list")}
        go.touch()  # df-exit's command exits 3; its supervisor's final write fails, and is retried
        os.kill(sts["df-lost"]["pid"], signal.SIGKILL)  # df-lost's guardian must record it lost: retried too
        time.sleep(2.0)
        during = {t: _status_on_disk(tasks.paths(t).status) for t in ("df-exit", "df-lost", "df-dead")}
        (outputs / "filler").unlink()
        t0 = time.monotonic()
        final = {}
        for t in ("df-exit", "df-lost"):
            final[t] = retry_until(lambda t=t: (s := _status_on_disk(tasks.paths(t).status))["state"] in sv.TERMINAL
                                   and s, timeout=40, what=f"{t} recorded")
        landed = time.monotonic() - t0
        for name, res in full.items():
            assert res.returncode == 2, (name, res.returncode, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: disk full at ") and str(outputs) in lines[0], (
                name, res.stderr)
        for name, res in reads.items():
            assert res.returncode == 0 and "Traceback" not in res.stderr, (name, res.stderr)
        assert "df-exit" in reads["task-list"].stdout and "df-dead" in reads["task-list"].stdout
        assert "warning: task df-dead: could not record what its probe found" in reads["task-list"].stderr
        assert all(s["state"] == "running" for s in during.values()), during  # the last good records, kept
        dead = inv("task-status", "--id", "df-dead")  # space again: the observer's verdict lands
        assert dead.returncode == 0 and "failed" in dead.stdout and "lost" in dead.stdout, dead.stdout
        assert final["df-exit"]["state"] == "failed" and final["df-exit"]["exit_code"] == 3, final["df-exit"]
        assert final["df-exit"]["reason"] == "exit code 3"
        assert final["df-lost"]["reason"] == "lost" and "killed by SIGKILL" in final["df-lost"]["evidence"]
        assert not (outputs / "_tasks" / "more").exists() and os.listdir(outputs / "_tasks" / ".incoming") == []
        leftovers = [n for _, _, names in os.walk(outputs) for n in names if n.endswith(".tmp")]
        assert leftovers == []
        print(f"\nFIGURE full disk: filled={filled} B; task-run, fsm-reset and task-status of a dead task exit 2 "
              f"'disk full at PATH' (1 line); task-status/task-list of live tasks exit 0; 3/3 records kept as last "
              f"written while full; after freeing, exit code 3 and lost recorded {landed:.1f}s later by the "
              f"retrying supervisor and guardian; temp files left={len(leftovers)}")
        for name, res in full.items():
            print(f"  {name}: {res.stderr.strip()}")
    finally:
        subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], capture_output=True)
        for _ in range(50):
            if subprocess.run(["umount", str(outputs)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(outputs)], capture_output=True)
