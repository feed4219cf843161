"""Fault injection on tracked tasks: whatever is killed, no task is left running and no file is torn.

Each test prints its figure (trials, faults, lost, corrupt); docs/reliability.md summarises them.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from opsrg import supervisor as sv
from opsrg.context import Context
from opsrg.tracked import TaskState

from support import retry_until

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
