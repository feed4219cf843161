"""Fault injection on RG runs: a run killed at any moment leaves no torn file and no DONE marker
without its histograms, and the same command resumes it to histograms equal, bit for bit, to an
uninterrupted run with the same seed.

Each test prints its figure (trials, faults, lost, corrupt); docs/reliability.md summarises them.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support import inv

RG = [sys.executable, "-m", "opsrg.rg"]
FP = ["fp", "--steps", "6", "--samples", "2e5", "--seed", "11", "--shards", "2", "--backend", "numpy"]
EXP = ["exp", "--shifts", "0.01", "--steps", "3", "--samples", "1e5", "--seed", "5", "--shards", "2",
       "--backend", "numpy"]


def _rg(args: list[str], out: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(RG + args + ["--out", str(out)], capture_output=True, text=True, timeout=timeout)


def _histograms(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every step histogram of a run (fp: sym and unsym; exp: unsym per shift), by relative path."""
    out = {}
    for p in sorted(root.rglob("*.npz")):
        if p.name.startswith(("sym_z_hist_RG", "z_hist_unsym_RG")):
            with np.load(p) as f:
                out[str(p.relative_to(root))] = {k: f[k].copy() for k in f.files}
    return out


def _equal(a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]]) -> bool:
    return a.keys() == b.keys() and all(
        a[p].keys() == b[p].keys() and all(np.array_equal(a[p][k], b[p][k]) for k in a[p]) for p in a)


def audit(root: Path) -> dict[str, int]:
    """Files of a run folder: torn JSON/NPZ, DONE markers without their histograms, temp files left."""
    files = torn = orphan_done = tmp = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if n.endswith(".tmp"):
                tmp += 1  # an interrupted atomic write: never read, swept by `inv doctor --fix`
                continue
            if n.endswith(".json"):
                files += 1
                try:
                    json.loads(p.read_text())
                except ValueError:
                    torn += 1
            elif n.endswith(".npz"):
                files += 1
                try:
                    with np.load(p) as f:
                        for k in f.files:
                            f[k]
                except Exception:  # noqa: BLE001 - any failure to load is a torn file
                    torn += 1
    try:
        cfg = json.loads((root / "run.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        cfg = None
    for p in root.glob("DONE_RG*.json"):
        k = int(p.stem[len("DONE_RG"):])
        if cfg is None:
            orphan_done += 1
            continue
        if cfg["mode"] == "fp":
            need = [root / f"sym_z_hist_RG{k}.npz", root / f"z_hist_unsym_RG{k}.npz"]
        else:
            need = [root / f"shift_{s:+.6f}" / f"z_hist_unsym_RG{k}.npz" for s in cfg["shifts"]]
        orphan_done += not all(x.exists() for x in need)
    return {"files": files, "torn": torn, "orphan_done": orphan_done, "tmp": tmp}


def _kill_and_resume(args: list[str], tmp: Path, trials: int, seed: int) -> dict[str, int]:
    ref_dir = tmp / "ref"
    t0 = time.monotonic()
    r = _rg(args, ref_dir)
    assert r.returncode == 0, r.stderr
    span = time.monotonic() - t0
    want = _histograms(ref_dir)
    assert want
    rng = random.Random(seed)
    fig = {"trials": trials, "faults": 0, "lost": 0, "torn": 0, "orphan_done": 0, "tmp_left": 0, "files": 0,
           "steps_at_kill": []}
    for t in range(trials):
        out = tmp / f"t{t}"
        proc = subprocess.Popen(RG + args + ["--out", str(out)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05 * span, 1.05 * span))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            fig["faults"] += 1
        proc.wait()
        fig["steps_at_kill"].append(len(list(out.glob("DONE_RG*.json"))))
        a = audit(out) if out.exists() else {"files": 0, "torn": 0, "orphan_done": 0, "tmp": 0}
        fig["files"] += a["files"]
        fig["torn"] += a["torn"]
        fig["orphan_done"] += a["orphan_done"]
        fig["tmp_left"] += a["tmp"]
        r = _rg(args, out)
        assert r.returncode == 0, f"trial {t}: resume failed: {r.stderr}"
        after = audit(out)
        fig["torn"] += after["torn"]
        fig["orphan_done"] += after["orphan_done"]
        fig["lost"] += not _equal(_histograms(out), want)
    return fig


def _line(name: str, fig: dict) -> str:
    return (f"\nFIGURE {name}: trials={fig['trials']} faults={fig['faults']} lost={fig['lost']} "
            f"corrupt={fig['torn']}/{fig['files']} orphan_done={fig['orphan_done']} tmp_left={fig['tmp_left']} "
            f"steps_done_at_kill={fig['steps_at_kill']}")


def test_fp_killed_at_random_moments_resumes_to_equal_histograms(tmp_path):
    fig = _kill_and_resume(FP, tmp_path, trials=8, seed=2024)
    print(_line("rg fp kill -9 then rerun", fig))
    assert fig["lost"] == 0 and fig["torn"] == 0 and fig["orphan_done"] == 0
    assert fig["faults"] >= 4  # most kills land while the run is alive


def test_exp_killed_at_random_moments_resumes_to_equal_histograms(tmp_path):
    fp = tmp_path / "fp"
    r = _rg(["fp", "--steps", "3", "--samples", "1e5", "--seed", "3", "--shards", "2", "--backend", "numpy"], fp)
    assert r.returncode == 0, r.stderr
    args = EXP + ["--fp", str(fp / "sym_z_hist_RG3.npz")]
    fig = _kill_and_resume(args, tmp_path / "exp", trials=3, seed=7)
    nu = [json.loads((tmp_path / "exp" / f"t{t}" / "nu.json").read_text()) for t in range(3)]
    ref_nu = json.loads((tmp_path / "exp" / "ref" / "nu.json").read_text())
    same_nu = sum(n == ref_nu for n in nu)
    print(_line("rg exp kill -9 then rerun", fig) + f" nu_json_equal={same_nu}/3")
    assert fig["lost"] == 0 and fig["torn"] == 0 and fig["orphan_done"] == 0 and same_nu == 3


# Runs the RG command line with os.replace wrapped: the process SIGKILLs itself just before the
# rename of its N-th atomic write (the temp file is complete, the target not yet replaced), i.e.
# it dies in the middle of a write, at a chosen point. N=0 counts the writes and runs to the end.
KILL_AT_WRITE = """
import os, signal, sys
n, seen, real = int(sys.argv[1]), [0], os.replace
def replace(a, b):
    seen[0] += 1
    if seen[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(a, b)
os.replace = replace
from opsrg.rg.cli import main
rc = main(sys.argv[2:])
print(seen[0])
sys.exit(rc)
"""


def test_fp_killed_inside_each_kind_of_write(tmp_path):
    """Kill points spread over every write of a run: part, READY, histograms, DONE, run.json, summary."""
    args = ["fp", "--steps", "3", "--samples", "2e4", "--seed", "4", "--shards", "2", "--backend", "numpy"]

    def run(n: int, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", KILL_AT_WRITE, str(n), *args, "--out", str(out)],
                              capture_output=True, text=True, timeout=60)

    r = run(0, tmp_path / "ref")
    assert r.returncode == 0, r.stderr
    writes = int(r.stdout.split()[-1])
    want = _histograms(tmp_path / "ref")
    points = sorted({1, writes, *range(2, writes, 2)})
    fig = {"trials": len(points), "faults": 0, "lost": 0, "torn": 0, "orphan_done": 0, "tmp_left": 0, "files": 0}
    for n in points:
        out = tmp_path / f"w{n}"
        r = run(n, out)
        fig["faults"] += r.returncode == -signal.SIGKILL
        a = audit(out)
        for k in ("torn", "orphan_done", "files"):
            fig[k] += a[k]
        fig["tmp_left"] += a["tmp"]
        r = _rg(args, out)
        assert r.returncode == 0, f"kill at write {n}: resume failed: {r.stderr}"
        fig["lost"] += not _equal(_histograms(out), want)
    print(f"\nFIGURE rg fp killed inside its n-th atomic write: writes_per_run={writes} trials={fig['trials']} "
          f"faults={fig['faults']} lost={fig['lost']} corrupt={fig['torn']}/{fig['files']} "
          f"orphan_done={fig['orphan_done']} tmp_left={fig['tmp_left']}")
    assert fig["faults"] == fig["trials"] and fig["lost"] == 0 and fig["torn"] == 0 and fig["orphan_done"] == 0


@pytest.mark.tmux
def test_tracked_rg_task_killed_then_rerun(project, tmp_path):
    """An RG fp run as a tracked task: stopped by task-kill, or its supervisor killed with -9;
    the same task-run command (with --replace) resumes it to the uninterrupted histograms."""
    assert inv("fsm-reset", "CHECKED_OUT").returncode == 0
    args = ["fp", "--steps", "6", "--samples", "3e5", "--seed", "23", "--shards", "2", "--backend", "numpy"]
    ref = tmp_path / "ref"
    assert _rg(args, ref).returncode == 0
    want = _histograms(ref)
    from opsrg.context import Context

    tasks = Context.load().tasks
    rng = random.Random(99)
    fig = {"trials": 0, "faults": 0, "lost": 0, "torn": 0, "files": 0, "left_running": 0, "wrote_after": 0}
    reasons = []
    for how in ("task-kill", "kill -9 supervisor"):
        fig["trials"] += 1
        tid = "rg-" + how.split()[0].replace("-", "")
        out = tmp_path / tid
        cmd = shlex.join(RG + args + ["--out", str(out)])
        r = inv("task-run", "--id", tid, "--cmd", cmd)
        assert r.returncode == 0, r.stderr
        t0 = time.monotonic()
        while not (out / "DONE_RG1.json").exists():
            assert time.monotonic() - t0 < 60, "the run never finished step 1"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if how == "task-kill":
            r = inv("task-kill", "--id", tid)
            assert r.returncode == 0, r.stderr
        else:
            pid = json.loads(Path(tasks.paths(tid).status).read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
        fig["faults"] += 1
        rec, waited_out = tasks.wait(tid, timeout=30)
        assert not waited_out
        fig["left_running"] += not rec.state.is_terminal
        reasons.append(f"{rec.state.value}:{rec.reason}")
        snap = sorted(p.name for p in out.iterdir())
        time.sleep(1.0)  # nothing may keep writing once the task is recorded as ended
        fig["wrote_after"] += sorted(p.name for p in out.iterdir()) != snap
        a = audit(out)
        fig["torn"] += a["torn"] + a["orphan_done"]
        fig["files"] += a["files"]
        done_at_kill = len(list(out.glob("DONE_RG*.json")))
        r = inv("task-run", "--id", tid, "--cmd", cmd, "--replace")
        assert r.returncode == 0, r.stderr
        r = inv("task-wait", "--id", tid, "--timeout-secs", "60", "--quiet", timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr
        fig["lost"] += not _equal(_histograms(out), want)
        reasons[-1] += f" (steps done at kill: {done_at_kill}/6)"
    print(f"\nFIGURE tracked rg task killed then rerun: trials={fig['trials']} faults={fig['faults']} "
          f"lost={fig['lost']} corrupt={fig['torn']}/{fig['files']} left_running={fig['left_running']} "
          f"wrote_after_end={fig['wrote_after']} outcomes={reasons}")
    assert fig["lost"] == 0 and fig["torn"] == 0 and fig["left_running"] == 0 and fig["wrote_after"] == 0
