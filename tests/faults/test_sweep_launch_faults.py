"""Faults in the launch of a sweep (tmux backend, real tmux): kill -9 of ``sweep-start`` at every
write and at random moments, concurrent starts, ``fsm-reset`` during a launch, the tmux server
killed mid-sweep, a killed driver followed by ``sweep-cancel``.

Every trial must end with each row run exactly once (or, where the fault killed a row itself,
every row completed after ``doctor --fix`` and a resume), and the monitor must return.
Each test prints a ``FIGURE`` line; docs/reliability.md records them. Trials are independent
(own outputs, sessions, state), so the kill trials run a few at a time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import REPO, inv, retry_until

pytestmark = pytest.mark.tmux
HEAD = "run_id,config,seed,overrides,notes\n"
SH = "sweeps/configs/shell.toml"

# Runs sweep-start in-process with os.replace wrapped: the process SIGKILLs itself just before the
# rename of its N-th atomic write (N=0: count the writes and run to the end), or waits to be killed
# at a random moment after it prints "ready".
KILL_LAUNCH = r"""
import os, signal, sys
n, csv = int(sys.argv[1]), sys.argv[2]
seen, real = [0], os.replace
def replace(a, b):
    seen[0] += 1
    if seen[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(a, b)
from opsrg.context import Context
from opsrg.sweeps import commands
ctx = Context.load()
os.replace = replace
print("ready", flush=True)
commands.start(ctx, csv)
print("writes", seen[0], flush=True)
"""


# What a user does after a crash, in a process of its own (so trials can run side by side): check
# that no record is torn, `doctor --fix`, monitor passes until every run is final (the monitor must
# get there), then `--resume` or a fresh `sweep-start`, whichever the monitor names; wait again.
RECOVER = r"""
import json, pathlib, sys, time
from opsrg.ops import doctor
from opsrg.sweeps import commands
from opsrg.context import Context
from opsrg.core.errors import InputError
csv = sys.argv[1]
ctx = Context.load()
torn = []
for f in pathlib.Path(ctx.outputs_dir).rglob("*.json"):
    try:
        json.loads(f.read_text())
    except ValueError:
        torn.append(str(f))
def wait():
    t0 = time.monotonic()
    while True:
        _, rows, v = commands.monitor(ctx)
        if v["done"]:
            return rows, v
        if time.monotonic() - t0 > 90:
            sys.exit(f"monitor did not return: {v}")
        time.sleep(0.1)
doctor.run(ctx, fix=True)
try:
    rows, v = wait()
    if not v["failed"]:
        path = "nothing to do"
    elif v["next"].endswith("--resume"):
        commands.start(ctx, resume=True)
        path = "resumed"
    else:
        commands.start(ctx, csv)
        path = "started again"
except InputError:  # killed before the campaign was published: nothing of it exists
    commands.start(ctx, csv)
    path = "started again"
rows, v = wait()
print(json.dumps({"path": path, "states": {r["run_id"]: r["state"] for r in rows}, "failed": v["failed"],
                  "fsm": ctx.store.read().state.value, "torn": torn}))
"""


class Trial:
    """One fresh outputs folder, tmux sessions and workflow state inside the test's project."""

    def __init__(self, project: Path, name: str, rows: int = 2, command: str = "",
                 env: dict[str, str] | None = None) -> None:
        from opsrg.core.fsm import State
        from opsrg.core.workflow_state import StateStore

        self.root = project / name
        self.count = self.root / "count"
        self.count.mkdir(parents=True)
        out = self.root / "outputs"
        self.env = {"OPS_REMOTE_OUTPUTS_DIR": str(out), "WF_TMUX_SESSION": f"w{name}",
                    "SWEEP_TMUX_SESSION": f"s{name}", **(env or {})}
        cmd = command or f"echo x >> {self.count}/$OPSRG_RUN_ID"
        self.shell_ids = [f"r{i}" for i in range(rows)]
        self.ids = list(self.shell_ids)
        self.csv = self.root / "s.csv"
        self.csv.write_text(HEAD + "".join(f'{r},{SH},1,"command=\'{cmd}\'",\n' for r in self.shell_ids))
        StateStore(out / "_control" / "workflow_state.json").set(State.CHECKED_OUT, "fsm-reset")

    def use(self, monkeypatch) -> Trial:
        """Point this process's settings at the trial (for the tests that drive it in-process)."""
        for k, v in self.env.items():
            monkeypatch.setenv(k, v)
        return self

    def ctx(self):
        from opsrg.context import Context

        return Context.load()

    def runs_of(self) -> Counter:
        return Counter({p.name: len(p.read_text().splitlines()) for p in self.count.iterdir()})

    def once(self) -> bool:
        """Every shell row ran exactly once."""
        return self.runs_of() == Counter(dict.fromkeys(self.shell_ids, 1))

    def wait(self, timeout: float = 90.0) -> dict:
        """In-process monitor passes until every run is final; the monitor must get there."""
        from opsrg.sweeps import commands

        ctx, t0 = self.ctx(), time.monotonic()
        while True:
            _, _, v = commands.monitor(ctx)
            if v["done"]:
                return v
            assert time.monotonic() - t0 < timeout, f"monitor did not return: {v}"
            time.sleep(0.1)

    def recover(self) -> str:
        """RECOVER, then: nothing torn, every run completed, the workflow completed. Returns the path taken."""
        r = subprocess.run([sys.executable, "-c", RECOVER, str(self.csv)], capture_output=True, text=True,
                           timeout=300, env={**os.environ, **self.env})
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout.splitlines()[-1])
        assert got["torn"] == [], got
        assert got["states"] == dict.fromkeys(self.ids, "completed") and got["fsm"] == "SWEEP_COMPLETED", got
        return got["path"]


def _kill_launch(trial: Trial, n: int, delay: float | None = None) -> subprocess.CompletedProcess:
    p = subprocess.Popen([sys.executable, "-c", KILL_LAUNCH, str(n), str(trial.csv)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, **trial.env})
    if delay is not None:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _kill_trials(make, kills: list[tuple[int, float | None]], what: str, parallel: int = 3) -> Counter:
    """Kill a launch as told for each trial (``make(i)`` builds it), recover, count; asserts every row ran once."""

    def one(i: int) -> tuple[bool, str]:
        t = make(i)
        n, delay = kills[i]
        r = _kill_launch(t, n, delay)
        path = t.recover()
        assert t.once(), f"{what} trial {i} (kill at {n}, {delay}): {t.runs_of()}"
        return r.returncode == -signal.SIGKILL, path

    fig = Counter()
    with ThreadPoolExecutor(max_workers=parallel) as ex:
        for killed, path in ex.map(one, range(len(kills))):
            fig["killed"] += killed
            fig[path] += 1
            fig["exactly_once"] += 1
    print(f"\nFIGURE {what}: trials={len(kills)} killed={fig['killed']} exactly_once={fig['exactly_once']} "
          f"nothing_to_do={fig['nothing to do']} resumed={fig['resumed']} started_again={fig['started again']}")
    return fig


def _writes(t: Trial) -> int:
    """How many atomic writes an uninterrupted launch makes (and that it then completes)."""
    r = _kill_launch(t, 0)
    assert r.returncode == 0, r.stderr
    assert t.recover() == "nothing to do" and t.once()
    return int(r.stdout.split()[-1])


def test_sweep_start_killed_at_every_write_is_recovered(project):
    writes = _writes(Trial(project, "ref"))
    fig = _kill_trials(lambda i: Trial(project, f"w{i}"), [(n, None) for n in range(1, writes + 1)],
                       f"sweep-start killed at each of its {writes} writes")
    assert fig["killed"] == writes and fig["exactly_once"] == writes


def test_sweep_start_killed_at_random_moments_is_recovered(project):
    trials = int(os.environ.get("OPSRG_LAUNCH_KILL_TRIALS", "30"))
    t0 = time.monotonic()
    _kill_launch(Trial(project, "ref", rows=1), 0)
    span = time.monotonic() - t0
    rng = random.Random(11)
    fig = _kill_trials(lambda i: Trial(project, f"k{i}", rows=1),
                       [(-1, rng.uniform(0, 0.6 * span)) for _ in range(trials)],
                       "sweep-start killed at random moments")
    assert fig["exactly_once"] == trials


@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_sweep_starts_launch_once(project, monkeypatch, n):
    fig = Counter()
    trials = 4
    for i in range(trials):
        t = Trial(project, f"c{n}-{i}").use(monkeypatch)
        procs = [subprocess.Popen([str(Path(sys.executable).parent / "inv"), "sweep-start", "--csv", str(t.csv)],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, **t.env}) for _ in range(n)]
        outs = [(*p.communicate(timeout=60),) for p in procs]
        outs = [(p.returncode, o, e) for p, (o, e) in zip(procs, outs, strict=True)]
        ok = [o for o in outs if o[0] == 0]
        refused = [o for o in outs if o[0] == 2 and "not allowed in state SWEEP_RUNNING" in o[2]]
        assert len(ok) == 1 and len(refused) == n - 1, outs
        assert t.recover() == "nothing to do" and t.once()
        manifests = sorted((t.root / "outputs" / "_manifests").glob("sweep-*.json"))
        assert len(manifests) == 1, manifests  # the refused starts left no campaign behind
        fig["exactly_once"] += 1
    print(f"\nFIGURE {n} concurrent sweep-starts: trials={trials} launched_once={fig['exactly_once']} "
          f"refused={trials * (n - 1)}")


def test_fsm_reset_during_a_launch(project, monkeypatch):
    rng = random.Random(5)
    fig = Counter()
    trials = 8
    for i in range(trials):
        t = Trial(project, f"f{i}").use(monkeypatch)
        # the reset's own start-up (~0.4 s) against the launch's: it lands before, inside or after the launch
        def reset_cmd(t=t):
            return subprocess.Popen([str(Path(sys.executable).parent / "inv"), "fsm-reset", "CHECKED_OUT"], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, **t.env})

        def launch_cmd(t=t):
            return subprocess.Popen([sys.executable, "-c", KILL_LAUNCH, "-1", str(t.csv)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env={**os.environ, **t.env})

        offset = rng.uniform(-0.8, 0.2)
        first, second = (launch_cmd, reset_cmd) if offset < 0 else (reset_cmd, launch_cmd)
        a = first()
        time.sleep(abs(offset))
        b = second()
        reset, p = (b, a) if offset < 0 else (a, b)
        _, err = reset.communicate(timeout=60)
        assert reset.returncode == 0, err
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        v = t.wait()
        assert not v["failed"]
        assert t.runs_of() == Counter(dict.fromkeys(t.ids, 1))
        fig[t.ctx().store.read().state.value] += 1
    print(f"\nFIGURE fsm-reset CHECKED_OUT during a launch: trials={trials} exactly_once={trials} "
          f"final states={dict(fig)}")


def test_tmux_server_killed_mid_sweep_then_resume(project, monkeypatch, tmux_socket):
    t = Trial(project, "tk", rows=3, command="echo x >> {count}/$OPSRG_RUN_ID; sleep 3")
    t.csv.write_text(t.csv.read_text().replace("{count}", str(t.count)))
    t.use(monkeypatch)
    from opsrg.sweeps import commands

    commands.start(t.ctx(), str(t.csv))
    retry_until(lambda: t.runs_of(), timeout=20, what="the first row to start")
    subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], check=True)
    v = t.wait()
    assert v["failed"], v
    assert t.recover() == "resumed"
    ran = t.runs_of()
    assert set(ran) == set(t.ids) and all(1 <= k <= 2 for k in ran.values()), ran
    print(f"\nFIGURE tmux server killed mid-sweep: rows={len(t.ids)} failed_by_the_kill={len(v['failed'])} "
          f"completed_after_resume={len(t.ids)} runs_per_row={dict(ran)}")


def test_cancel_after_a_killed_driver_completes_a_finished_run(project, monkeypatch):
    """A run that finished while its driver was dead is completed by sweep-cancel, and resume redoes the rest."""
    t = Trial(project, "dc", rows=1).use(monkeypatch)
    later = f"r9,{SH},1,\"command='echo x >> {t.count}/$OPSRG_RUN_ID'\",\n"
    t.csv.write_text(t.csv.read_text().replace("command='echo", "command='sleep 1; echo") + later)
    t.ids.append("r9")
    t.shell_ids.append("r9")
    from opsrg.sweeps import commands

    out = commands.start(t.ctx(), str(t.csv))
    drv = Path(t.env["OPS_REMOTE_OUTPUTS_DIR"]) / "_tasks" / f"sweep-driver.{out['campaign']}" / "status.json"
    r0 = Path(t.env["OPS_REMOTE_OUTPUTS_DIR"]) / "_tasks" / "r0" / "status.json"

    def state(p: Path) -> str:
        try:
            return json.loads(p.read_text()).get("state", "")
        except (OSError, ValueError):
            return ""

    retry_until(lambda: state(drv) == "running" and state(r0) == "running", timeout=20, what="r0 to run")
    rec = json.loads(drv.read_text())
    os.killpg(rec["pgid"], signal.SIGKILL)  # the driver process and its supervisor, as a crash would
    os.kill(rec["pid"], signal.SIGKILL)
    retry_until(lambda: json.loads(r0.read_text())["state"] == "success", timeout=20, what="r0 to end")
    r = inv("sweep-cancel", env=t.env)
    assert r.returncode == 0, r.stderr
    man = json.loads((Path(t.env["OPS_REMOTE_OUTPUTS_DIR"]) / "r0" / "run_manifest.json").read_text())
    assert man["state"] == "completed", man
    assert t.recover() == "resumed" and t.once()


def test_resume_and_doctor_reconcile_a_cancelled_run_whose_summary_is_ok(project, monkeypatch):
    t = Trial(project, "rc", rows=2).use(monkeypatch)
    from opsrg.sweeps import commands, runs

    commands.start(t.ctx(), str(t.csv))
    t.wait()
    # the monitor is done once every run is; the driver may still be writing r1's manifest (on a busy
    # machine, after the edit below): edit it once the driver has ended
    from opsrg.tracked.records import TaskState

    drv = next((Path(t.env["OPS_REMOTE_OUTPUTS_DIR"]) / "_tasks").glob("sweep-driver.*/status.json"))
    retry_until(lambda: TaskState(json.loads(drv.read_text())["state"]).is_terminal, timeout=30,
                what="the sweep driver to end")
    paths = runs.SweepPaths(t.env["OPS_REMOTE_OUTPUTS_DIR"])
    # what an older opsrg left behind: a run recorded cancelled although its summary is ok
    m = runs.read_json(paths.run_manifest("r1"))
    m.update(state="cancelled", reason="cancelled by sweep-cancel")
    (paths.run_manifest("r1")).write_text(json.dumps(m))
    r = inv("doctor", "--json", env=t.env)
    assert r.returncode == 1
    found = [f for f in json.loads(r.stdout) if f["subject"].endswith("/r1")]
    assert found and "summary.json is ok" in found[0]["evidence"]
    assert inv("doctor", "--fix", env=t.env).returncode == 0
    assert runs.read(paths, "r1").state == "completed"
    assert "reconciled" in runs.read(paths, "r1").reason
    assert t.runs_of() == Counter(dict.fromkeys(t.ids, 1))


@pytest.mark.slurm
def test_slurm_sweep_start_killed_at_every_write_is_recovered(project, slurm_cluster):
    """On Slurm the launch submits held jobs, records each, then releases them all: a kill at any
    write leaves no job running that a manifest does not know, and nothing runs twice."""
    env = {"SWEEP_BACKEND": "slurm", "SLURM_MEM": "", "SLURM_ARRAY_PARALLELISM": "4"}

    def make(name: str) -> Trial:  # a packed array of r0, r1, and a job for r2 that depends on it
        t = Trial(project, name, env=env)
        t.csv.write_text(t.csv.read_text() + f"r2,{SH},1,\"command='echo x >> {t.count}/$OPSRG_RUN_ID' after=r0\",\n")
        t.ids.append("r2")
        t.shell_ids.append("r2")
        return t

    writes = _writes(make("sref"))
    fig = _kill_trials(lambda i: make(f"s{i}"), [(n, None) for n in range(1, writes + 1)],
                       f"slurm sweep-start killed at each of its {writes} writes", parallel=2)
    assert fig["killed"] == writes and fig["exactly_once"] == writes
