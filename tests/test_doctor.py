import json
import os
import signal
import time

import pytest

from support import inv
from opsrg import doctor
from opsrg.context import Context


@pytest.mark.tmux
def test_doctor_finds_and_fixes(project):
    ctx = Context.load()
    out = ctx.outputs_dir
    # a dead task
    ctx.tasks.run("dead", "sleep 60")
    t0 = time.monotonic()
    while not (pid := json.load(open(ctx.tasks.paths("dead").status)).get("pid")):
        assert time.monotonic() - t0 < 10
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    # a temp file left by a killed writer, a DONE marker without its histograms, a READY without its part
    run = os.path.join(out, "fp1")
    os.makedirs(f"{run}/shards/RG1")
    open(f"{run}/DONE_RG1.json", "w").write(json.dumps({"mode": "fp", "step": 1}))
    open(f"{run}/shards/RG1/part_00000.READY", "w").write("")
    tmp = f"{run}/.summary.json.abc.tmp"
    open(tmp, "w").write("{")
    old = time.time() - 3600
    os.utime(tmp, (old, old))

    r = inv("doctor", "--json")
    assert r.returncode == 1
    kinds = sorted(f["kind"] for f in json.loads(r.stdout))
    assert kinds == ["marker", "marker", "task", "temp"]
    assert json.load(open(ctx.tasks.paths("dead").status))["state"] == "running"  # looking changed nothing
    assert os.path.exists(tmp)

    r = inv("doctor", "--fix")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 fixed" in r.stdout
    st = json.load(open(ctx.tasks.paths("dead").status))
    assert st["state"] == "failed" and st["reason"] == "lost"
    assert not os.path.exists(tmp) and not os.path.exists(f"{run}/DONE_RG1.json")
    assert inv("doctor").returncode == 0


def test_held_lock_is_reported_not_broken(tmp_path):
    from opsrg.atomic import locked

    with locked(tmp_path / "state.json"):
        found = list(doctor.check_locks(tmp_path, fix=True))
    assert len(found) == 1 and "held by a live process" in found[0].evidence
    assert list(doctor.check_locks(tmp_path, fix=False)) == []
