import json
import os
import signal
import time

import pytest

from opsrg import doctor
from opsrg.context import Context

from support import inv


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
    # The supervisor and its guardian at once (their own process group), as a crash would: a supervisor
    # killed alone is settled by its guardian, leaving nothing for the doctor.
    os.killpg(os.getpgid(pid), signal.SIGKILL)
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


@pytest.mark.tmux
def test_doctor_reconciles_a_sweep_whose_driver_and_run_died(project):
    """Manifests that lag their (dead) tasks, and the FSM behind them, are found then advanced."""
    assert inv("fsm-reset", "CHECKED_OUT").returncode == 0
    csv = project / "s.csv"
    csv.write_text("run_id,config,seed,overrides,notes\n"
                   "slow,sweeps/configs/shell.toml,1,\"command='sleep 60'\",a long row\n")
    assert inv("sweep-start", "--csv", str(csv)).returncode == 0
    out = project / "outputs"
    t0 = time.monotonic()
    while not (out / "_tasks" / "slow" / "status.json").exists() or \
            not json.load(open(out / "_tasks" / "slow" / "status.json")).get("pid"):
        assert time.monotonic() - t0 < 30
        time.sleep(0.1)
    campaign = (out / "_manifests" / "LATEST").read_text().strip()
    driver = json.load(open(out / "_manifests" / f"sweep-{campaign}.json"))["driver_task"]
    for task_id in (driver, "slow"):  # as if the pod had crashed: supervisors and commands, driver first
        st = json.load(open(out / "_tasks" / task_id / "status.json"))
        os.killpg(st["pgid"], signal.SIGKILL)
        os.kill(st["pid"], signal.SIGKILL)
    time.sleep(0.3)
    r = inv("doctor", "--json")
    found = json.loads(r.stdout)
    assert r.returncode == 1
    kinds = {f["kind"] for f in found}
    assert "manifest" in kinds, found
    assert json.load(open(out / "slow" / "run_manifest.json"))["state"] not in ("failed", "completed")
    r = inv("doctor", "--fix")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.load(open(out / "slow" / "run_manifest.json"))["state"] == "failed"
    assert json.loads(inv("fsm-status", "--json").stdout)["state"] == "SWEEP_FAILED"
    assert inv("doctor").returncode == 0


def test_old_temp_files_of_writers_and_killed_rsync_passes(tmp_path):
    old = time.time() - 3600
    names = {".summary.json.k3j2.tmp": True,      # atomic write
             ".z_hist_RG3.npz.Ab12Cd": True,      # rsync temp of a killed pass
             ".fresh.npz.Zz99Yy": False,          # too young: maybe a pass running now
             "result.json": False, ".hidden": False, ".x.lock": False, "out.abcdef": False}
    for name, is_old in names.items():
        p = tmp_path / name
        p.write_text("x")
        if is_old or name != ".fresh.npz.Zz99Yy":
            os.utime(p, (old, old))
    found = sorted(os.path.basename(f.subject) for f in doctor.check_temp_files(tmp_path, fix=False))
    assert found == [".summary.json.k3j2.tmp", ".z_hist_RG3.npz.Ab12Cd"]
    assert all((tmp_path / n).exists() for n in names)  # looking changed nothing
    fixed = list(doctor.check_temp_files(tmp_path, fix=True))
    assert all(f.fixed for f in fixed) and len(fixed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, o in names.items() if not o)
