"""Fault injection on Slurm sweeps, on a dedicated real single-node cluster.

The cluster is this module's own (``SLURM_LOCAL_DIR`` and ports apart from the session cluster of
tests/slurm_cluster.py), because the tests kill its controller; it runs without accounting, so
while slurmctld is down no scheduler source answers but the jobcomp file and the marker files,
and its MaxArraySize is lowered to 4 so a real array is split.

Each test prints its figure; docs/reliability.md summarises them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from slurm_cluster import PrivateCluster, private_cluster
from support import REPO, inv

pytestmark = [pytest.mark.slurm, pytest.mark.tmux,
              pytest.mark.xdist_group("slurm-faults")]  # under xdist: one worker, in order, one module fixture
HEAD = "run_id,config,seed,overrides,notes\n"
FP = "sweeps/configs/fp_tiny.toml"
MAX_ARRAY = 4


@pytest.fixture(scope="module")
def cluster():
    with private_cluster("faults", SLURM_LOCAL_MAX_ARRAY_SIZE=str(MAX_ARRAY)) as c:
        yield c


def make_project(root: Path, cluster: PrivateCluster | None, backend: str = "slurm") -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    env_file = root / "workflow.env"
    env_file.write_text(f"POD_PROVIDER=local\nOPS_REMOTE_OUTPUTS_DIR={root}/outputs\nOPS_TMUX_SOCKET=opsrg-sf-{root.name}\n"
                        f"SWEEP_BACKEND={backend}\nSLURM_MEM=\nSLURM_ARRAY_PARALLELISM=2\nTASK_KILL_GRACE_SECS=2\n")
    env = {"OPSRG_ENV_FILE": str(env_file)}
    if cluster is not None:
        env["SLURM_CONF"] = cluster.conf
    assert inv("fsm-reset", "CHECKED_OUT", env=env).returncode == 0
    return env


def start(env: dict[str, str], rows: str, root: Path) -> dict:
    csv = root / "s.csv"
    csv.write_text(HEAD + rows)
    r = inv("sweep-start", "--csv", str(csv), "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def status(env: dict[str, str], timeout: float = 60) -> dict:
    r = inv("sweep-status", "--json", env=env, timeout=timeout)
    assert r.returncode in (0, 1) and r.stdout.strip(), r.stdout + r.stderr
    return json.loads(r.stdout)


def wait(env: dict[str, str], timeout: int = 150) -> subprocess.CompletedProcess:
    return inv("sweep-monitor", "--wait", "--timeout-secs", str(timeout), env=env, timeout=timeout + 30)


def records(root: Path) -> dict[str, dict]:
    out = {}
    for p in sorted((root / "outputs" / "_tasks").glob("*/status.json")):
        out[p.parent.name] = json.loads(p.read_text())
    return out


def histograms(run: Path) -> dict[str, np.ndarray]:
    out = {}
    for p in sorted(run.glob("*_RG*.npz")):
        with np.load(p) as f:
            out[p.name] = f["histval"].copy()
    return out


def same(a: Path, b: Path) -> bool:
    x, y = histograms(a), histograms(b)
    return bool(x) and x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_slurmctld_killed_and_restarted_during_a_sweep(cluster, tmp_path):
    rows = "".join(f"{r},{FP},{s},\"steps=3\",\n" for r, s in (("a", 1), ("b", 2), ("c", 3)))
    ref_env = make_project(tmp_path / "ref", None, backend="tmux")
    start(ref_env, rows, tmp_path / "ref")
    env = make_project(tmp_path / "s", cluster)
    started = start(env, rows, tmp_path / "s")
    jobs = len(started["jobs"])
    mon = subprocess.Popen([str(Path(sys.executable).parent / "inv"), "sweep-monitor", "--wait", "--timeout-secs",
                            "240"], cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    # Wait for the first run to be running, then stop the controller as a restart does (SIGTERM:
    # it saves its state and exits). A kill -9 within seconds of job changes makes Slurm itself
    # recover stale state (docs/reliability.md); opsrg cannot repair the scheduler's own records.
    t0 = time.monotonic()
    while not any(r["state"] == "running" for r in status(env)["runs"]):
        assert time.monotonic() - t0 < 60, "no run started"
        time.sleep(0.3)
    pid = cluster.ctld_pid()
    os.kill(pid, signal.SIGTERM)
    while Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text():
        time.sleep(0.1)
    t_kill = time.monotonic()
    during = status(env, timeout=120)  # one refresh with the controller gone
    recs_during = records(tmp_path / "s")
    failed_during = [r["run_id"] for r in during["runs"] if r["state"] in ("failed", "cancelled")]
    unreachable = [k for k, r in recs_during.items() if "unreachable" in r.get("evidence", "")]
    time.sleep(max(0.0, 8.0 - (time.monotonic() - t_kill)))
    outage = time.monotonic() - t_kill
    back = cluster.up()
    r_mon = mon.communicate(timeout=300)[0]
    st, resumed = status(env), None
    if mon.returncode != 0 or any(r["state"] != "completed" for r in st["runs"]):
        # what the operator does next: resume what did not complete, and monitor again
        r = inv("sweep-start", "--resume", "--json", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        resumed = json.loads(r.stdout)["resumed"]
        assert wait(env).returncode == 0
        st = status(env)
    assert wait(ref_env).returncode == 0
    equal = sum(same(tmp_path / "s" / "outputs" / x, tmp_path / "ref" / "outputs" / x) for x in "abc")
    recs = records(tmp_path / "s")
    states = {r["run_id"]: r["state"] for r in st["runs"]}
    print(f"\nFIGURE slurmctld stopped mid-sweep then restarted: runs=3 jobs={jobs} outage={outage:.0f}s "
          f"restart={back:.1f}s monitor_rc={mon.returncode} resumed={resumed} failed_during_outage={failed_during} "
          f"status_said={during['scheduler_unreachable']!r} records_saying_unreachable={len(unreachable)}/{len(recs_during)} "
          f"monitor_said_unreachable={r_mon.count('scheduler unreachable')}x final={states} equal_histograms={equal}/3 "
          f"record_sources={sorted({r['slurm']['source'] for r in recs.values()})}")
    assert not failed_during and unreachable and during["scheduler_unreachable"], during
    assert st["scheduler_unreachable"] == ""  # once back, nothing says so any more
    assert mon.returncode == 0 and resumed is None, r_mon[-3000:]
    assert all(s == "completed" for s in states.values()) and equal == 3
    assert all(r["state"] == "success" and r["slurm"]["source"] for r in recs.values())


def test_array_above_max_array_size_is_split_and_completes(cluster, tmp_path):
    """6 shards on a cluster whose MaxArraySize is 4: each step is two arrays (0-3, and 4-5 run as 0-1
    with an offset); the merged histograms equal those of the same run done locally."""
    env = make_project(tmp_path / "s", cluster)
    started = start(env, f"big,{FP},9,\"shards=6\",\n", tmp_path / "s")
    r = wait(env)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads(next((tmp_path / "s" / "outputs" / "_manifests").glob("sweep-*.json")).read_text())
    gens = {k: j["tasks"] for k, j in m["jobs"].items() if j["kind"] == "gen"}
    ref = tmp_path / "ref"
    loop = subprocess.run([sys.executable, "-m", "opsrg.rg", "fp", "--steps", "2", "--samples", "4000", "--bins",
                           "200", "--seed", "9", "--shards", "6", "--backend", "numpy", "--out", str(ref)],
                          capture_output=True, text=True, timeout=120)
    assert loop.returncode == 0, loop.stderr
    recs = records(tmp_path / "s")
    equal = same(tmp_path / "s" / "outputs" / "big", ref)
    print(f"\nFIGURE array above MaxArraySize={MAX_ARRAY}: shards=6 steps=2 arrays={len(gens)} "
          f"elements={sorted(gens.items())} jobs={len(started['jobs'])} "
          f"records_success={sum(x['state'] == 'success' for x in recs.values())}/{len(recs)} equal_histograms={equal}")
    assert len(gens) == 4 and all(max(t) < MAX_ARRAY for t in gens.values()) and equal
    assert all(x["state"] == "success" for x in recs.values())


def stop(pid: int, sig: int) -> None:
    os.kill(pid, sig)
    while Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text():
        time.sleep(0.05)


def test_slurmctld_kill9_mid_sweep_then_cancel_and_resume(cluster, tmp_path):
    """``kill -9`` of slurmctld while array tasks run and before opsrg has seen a run finish.

    Slurm saves its state at most every few seconds, so the restarted controller forgets or garbles
    what happened just before the crash (jobs lost, job ids handed out again, ended jobs shown
    running). The documented way out (docs/reliability.md): restart slurmctld, restart slurmd on
    the nodes (it refuses a job id it launched for a job the controller lost: "Duplicate jobid",
    node drained), then ``inv sweep-cancel`` and ``inv sweep-start --resume``.
    """
    rows = "".join(f"{r},{FP},{s},\"steps=3\",\n" for r, s in (("a", 1), ("b", 2), ("c", 3)))
    ref_env = make_project(tmp_path / "ref", None, backend="tmux")
    start(ref_env, rows, tmp_path / "ref")
    env = make_project(tmp_path / "s", cluster)
    started = start(env, rows, tmp_path / "s")
    out = tmp_path / "s" / "outputs"
    t0 = time.monotonic()
    while not any(r["state"] == "running" for r in status(env)["runs"]):
        assert time.monotonic() - t0 < 60, "no run started"
        time.sleep(0.3)
    # no refresh from here on: the first run's summary lands on disk, its manifest still says running
    while not (out / "a" / "summary.json").exists():
        assert time.monotonic() - t0 < 90, "run a did not finish"
        time.sleep(0.05)
    t_kill = time.monotonic()
    stop(cluster.ctld_pid(), signal.SIGKILL)
    back = cluster.up()                                  # slurmctld, as the fixture brings it up
    stop(int((cluster.dir / "run" / "slurmd.pid").read_text()), signal.SIGTERM)
    back += cluster.up()                                 # and slurmd (documented step)
    after_restart = {r["run_id"]: r["state"] for r in status(env)["runs"]}
    cancel = inv("sweep-cancel", env=env)
    res = inv("sweep-start", "--resume", "--json", env=env)
    mon = wait(env)
    took = time.monotonic() - t_kill
    st = status(env)
    assert wait(ref_env).returncode == 0
    equal = sum(same(out / x, tmp_path / "ref" / "outputs" / x) for x in "abc")
    verify = inv("slurm-ledger", "--verify", env=env)
    lost = [ln for ln in verify.stdout.splitlines() if "unknown to the scheduler" in ln]
    def node_now() -> str:
        return subprocess.run(["sinfo", "-h", "-o", "%T %E"], env={**os.environ, "SLURM_CONF": cluster.conf},
                              capture_output=True, text=True, timeout=30).stdout.strip()

    # A job the restarted controller still shows running keeps the node `mixed` until slurmd has
    # reported on it, later on a busy machine; a drained node does not come back by itself.
    t_node = time.monotonic()
    while not (node := node_now()).startswith("idle") and time.monotonic() - t_node < 60:
        time.sleep(0.5)
    node_wait = time.monotonic() - t_node
    m = json.loads(next((out / "_manifests").glob("sweep-*.json")).read_text())
    print(f"\nFIGURE slurmctld kill -9 mid-sweep, then cancel + resume: runs=3 jobs={len(started['jobs'])} "
          f"killed_at={t_kill - t0:.1f}s restart={back:.1f}s after_restart={after_restart} "
          f"cancel={cancel.stdout.strip()!r} resumed={json.loads(res.stdout)['resumed'] if res.returncode == 0 else res.stderr} "
          f"resubmitted_jobs={sum(j['attempt'] == 2 for j in m['jobs'].values())} monitor_rc={mon.returncode} "
          f"kill_to_completed={took:.0f}s final={ {r['run_id']: r['state'] for r in st['runs']} } "
          f"equal_histograms={equal}/3 jobs_lost_by_slurm={len(lost)} node={node!r} node_idle_after={node_wait:.1f}s")
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert res.returncode == 0, res.stdout + res.stderr
    # a was complete on disk: recorded completed, neither cancelled nor run again
    assert "a" not in json.loads(res.stdout)["resumed"]
    assert mon.returncode == 0, mon.stdout + mon.stderr + "\n" + node
    assert all(r["state"] == "completed" and r["summary_ok"] is True for r in st["runs"]), st
    assert equal == 3  # every shard merged once: the histograms equal the uninterrupted tmux sweep
    assert node.startswith("idle")
    # the only ledger problems: jobs the restarted controller no longer knows (lost with its state)
    assert verify.returncode == 0 or len(lost) == len(verify.stdout.splitlines()) - 1, verify.stdout
