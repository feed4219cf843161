import json
import os
import signal
import time

import pytest

from opsrg.context import Context
from opsrg.ops import doctor

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
    tmp = f"{run}/.summary.json.opsrg-abc12345.tmp"  # named as opsrg.atomic names its temp files
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
    from opsrg.core.atomic import locked

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
    """Only opsrg's own leftovers are deleted: marked temp files and what rsync left in .rsync-partial."""
    old = time.time() - 3600
    names = {".summary.json.opsrg-k3j2ab_9.tmp": True,              # atomic write (opsrg's marker)
             ".rsync-partial/.opsrg-tmp/z_hist_RG3.npz.Ab12Cd": True,  # temp file of a SIGKILLed pass
             "sub/.rsync-partial/mid.npz": True,                    # partial copy of a cut pass
             ".fresh.json.opsrg-zz99yy00.tmp": False,               # too young: maybe being written now
             "result.json": False, ".hidden": False, ".x.lock": False, "out.abcdef": False}
    for name, is_old in names.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
        if is_old or name != ".fresh.json.opsrg-zz99yy00.tmp":
            os.utime(p, (old, old))
    found = sorted(os.path.relpath(f.subject, tmp_path) for f in doctor.check_temp_files(tmp_path, fix=False))
    assert found == sorted(n for n, o in names.items() if o)
    assert all((tmp_path / n).exists() for n in names)  # looking changed nothing
    fixed = list(doctor.check_temp_files(tmp_path, fix=True))
    assert all(f.fixed for f in fixed) and len(fixed) == 3
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(n for n, o in names.items() if not o)


# What doctor --fix once deleted as "leftovers": user files that merely look like temp files.
USER_DOTFILES = (".model.pickle", ".env.backup", ".results.sqlite", ".x.json.abc.tmp", ".notes.tmp",
                 ".z_hist_RG3.npz.Ab12Cd", ".summary.json.opsrg-short.tmp")


def test_user_dotfiles_are_reported_never_deleted(tmp_path):
    old = time.time() - 3600
    for n in USER_DOTFILES:
        (tmp_path / "run" / n).parent.mkdir(exist_ok=True)
        (tmp_path / "run" / n).write_text("mine")
        os.utime(tmp_path / "run" / n, (old, old))
    # a link named like opsrg's temp file, to a file outside: neither it nor its target is touched
    (tmp_path / "precious").write_text("keep")
    os.symlink(tmp_path / "precious", tmp_path / "run" / ".a.json.opsrg-abcdefgh.tmp")
    os.utime(tmp_path / "run" / ".a.json.opsrg-abcdefgh.tmp", (old, old), follow_symlinks=False)
    found = list(doctor.check_temp_files(tmp_path, fix=True))
    assert sorted(os.path.basename(f.subject) for f in found) == sorted(USER_DOTFILES)
    assert all(f.kind == "lookalike" and f.repair == "" and not f.fixed for f in found)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        [*USER_DOTFILES, ".a.json.opsrg-abcdefgh.tmp"])
    assert (tmp_path / "precious").read_text() == "keep"


def test_doctor_fix_keeps_user_dotfiles_through_the_command_line(project):
    run = project / "outputs" / "r1"
    run.mkdir(parents=True)
    old = time.time() - 3600
    for n in USER_DOTFILES:
        (run / n).write_text("mine")
        os.utime(run / n, (old, old))
    ours = run / ".summary.json.opsrg-0a1b2c3d.tmp"
    ours.write_text("{")
    os.utime(ours, (old, old))
    r = inv("doctor", "--fix")
    assert r.returncode == 0, r.stdout + r.stderr  # a finding with no repair leaves nothing to do
    assert "[found] lookalike" in r.stdout and "[fixed] temp" in r.stdout
    assert sorted(p.name for p in run.iterdir()) == sorted(USER_DOTFILES)
    assert all((run / n).read_text() == "mine" for n in USER_DOTFILES)


def test_every_writer_names_its_temp_files_with_the_marker(tmp_path, monkeypatch):
    """atomic.py, the pod's supervisor, the pod-side manifest writer of fetch-run and the SSH host all
    name their temp files so that doctor recognises them (and nothing else)."""
    import inspect
    import sys

    from opsrg.core import atomic
    from opsrg.hosts import ssh
    from opsrg.pods import transfer
    from opsrg.tracked import supervisor

    assert supervisor.TMP_MARK == atomic.TMP_MARK
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic.atomic_write_json(tmp_path / "a.json", {"x": 1})
    supervisor.write_json_atomic(str(tmp_path / "status.json"), {"x": 1})
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(sys, "argv", ["-c", str(tmp_path / "run"), str(tmp_path / "m" / "run.json"), "[]",
                                      atomic.TMP_MARK, atomic.TMP_SUFFIX])
    with open(os.devnull, "w") as null:
        monkeypatch.setattr(sys, "stdout", null)
        exec(compile(transfer.MANIFEST_PY, "manifest", "exec"), {"__name__": "__main__"})
    assert len(seen) == 3 and all(atomic.TMP_RE.match(n) for n in seen), seen
    assert [n.split(".opsrg-")[0] for n in seen] == [".a.json", ".status.json", ".run.json"]
    src = inspect.getsource(ssh.SSHHost._write_bytes)
    assert "tmp_prefix(name)" in src and "TMP_SUFFIX" in src
    assert atomic.TMP_RE.match(atomic.tmp_prefix("x.json") + "0123abcd" + atomic.TMP_SUFFIX)
