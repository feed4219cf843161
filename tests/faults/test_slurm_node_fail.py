"""A node failing under a running Slurm job, on a dedicated real single-node cluster.

The node is set ``DOWN`` with ``scontrol update`` while the job runs. Slurm 22.05 kills the job
(``CANCELLED ... DUE TO NODE FAILURE``), writes a ``NODE_FAIL`` line to the jobcomp file and,
batch jobs being requeueable by default (``JobRequeue=1``), requeues the job itself: scontrol
then shows ``PENDING`` (``BeginTime``) with ``Restarts=1``, never a final ``NODE_FAIL``. With
``ReturnToService=2`` the node is back as soon as slurmd answers. The requeued job may start
again once the job credential expires (``cred_expire``, 120 s by default, 5 s on this cluster
through ``SLURM_LOCAL_CRED_EXPIRE``), then at the next scheduling pass (backfill: up to 30 s).

The cluster is this module's own (``SLURM_LOCAL_DIR`` and ports apart from the session cluster
and from tests/faults/test_slurm_faults.py), because the tests take its node down.
Each test prints its figure; docs/reliability.md summarises them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from slurm_cluster import private_cluster, scheduler
from support import inv

pytestmark = [pytest.mark.slurm, pytest.mark.tmux,
              pytest.mark.xdist_group("slurm-node-fail")]  # under xdist: one worker, in order, one module fixture
HEAD = "run_id,config,seed,overrides,notes\n"
SH = "sweeps/configs/shell.toml"
# each execution appends to `tries`; only a run that lives 12 s writes `marker`
ROW = f"nf,{SH},1,\"command='echo x >> tries; sleep 12; echo ok > marker'\",\n"


@pytest.fixture(scope="module")
def cluster():
    with private_cluster("node-fail", SLURM_LOCAL_CRED_EXPIRE="5") as c:
        yield c.dir


def fail_node(d: Path) -> list[str]:
    """Take the node down under its job, then have it back; returns what the node went through."""
    seen = []
    r = scheduler(d, "scontrol", "update", "NodeName=localhost", "State=DOWN", "Reason=opsrg-node-fail-test")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        st = scheduler(d, "sinfo", "-h", "-n", "localhost", "-o", "%T").stdout.strip()
        if not seen or seen[-1] != st:
            seen.append(st)
        if st in ("idle", "mixed", "allocated"):
            return seen
        if st.startswith(("down", "drain")):
            scheduler(d, "scontrol", "update", "NodeName=localhost", "State=RESUME")
        time.sleep(0.2)
    raise AssertionError(f"node not back within 30 s: {seen}")


def make_project(root: Path, d: Path, max_requeue: int) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    env_file = root / "workflow.env"
    env_file.write_text(f"POD_PROVIDER=local\nOPS_REMOTE_OUTPUTS_DIR={root}/outputs\nOPS_TMUX_SOCKET=opsrg-nf-{root.name}\n"
                        f"SWEEP_BACKEND=slurm\nSLURM_MEM=\nTASK_KILL_GRACE_SECS=2\nSLURM_MAX_REQUEUE={max_requeue}\n")
    env = {"OPSRG_ENV_FILE": str(env_file), "SLURM_CONF": str(d / "etc" / "slurm.conf")}
    assert inv("fsm-reset", "CHECKED_OUT", env=env).returncode == 0
    return env


def start_running(env: dict[str, str], root: Path) -> tuple[str, float]:
    """Start the sweep; return (job id, seconds) once its command runs and opsrg has seen it running."""
    (root / "s.csv").write_text(HEAD + ROW)
    t0 = time.monotonic()
    r = inv("sweep-start", "--csv", str(root / "s.csv"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    (job,) = json.loads(r.stdout)["jobs"].values()
    while not ((root / "outputs" / "nf" / "tries").exists() and run(env)["state"] == "running"):
        assert time.monotonic() - t0 < 30, "the job did not start"
        time.sleep(0.3)
    return job, time.monotonic() - t0


def run(env: dict[str, str]) -> dict:
    r = inv("sweep-status", "--json", env=env)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return json.loads(r.stdout)["runs"][0]


def record(root: Path) -> dict:
    (p,) = (root / "outputs" / "_tasks").glob("*/status.json")
    return json.loads(p.read_text())


def jobcomp(d: Path, job: str) -> list[str]:
    lines = (d / "log" / "jobcomp.txt").read_text().splitlines()
    return [x.split("JobState=")[1].split()[0] for x in lines if x.startswith(f"JobId={job} ")]


def test_node_failure_under_a_running_job_is_recorded_requeued_and_completes(cluster, tmp_path):
    env = make_project(tmp_path, cluster, max_requeue=2)
    job, t_start = start_running(env, tmp_path)
    t0 = time.monotonic()
    node = fail_node(cluster)
    # what sweep-status says while the job waits to run again
    seen = None
    while time.monotonic() - t0 < 30:
        run(env)  # one refresh
        rec = record(tmp_path)
        if rec["slurm"].get("requeues"):
            seen = rec
            break
        time.sleep(0.5)
    assert seen is not None, "no requeue recorded"
    r = inv("sweep-monitor", "--wait", "--timeout-secs", "80", env=env, timeout=110)
    took = time.monotonic() - t0
    st, rec = run(env), record(tmp_path)
    out = tmp_path / "outputs" / "nf"
    tries = (out / "tries").read_text().count("x")
    (el,) = rec["slurm"]["elements"].values()
    ledger = (tmp_path / "outputs" / "docs" / "slurm_job_list.md").read_text()
    said = [ln for ln in ledger.splitlines() if "requeued" in ln]
    print(f"\nFIGURE node set DOWN under a running job (SLURM_MAX_REQUEUE=2): node={node} "
          f"jobcomp={jobcomp(cluster, job)} requeues={[(q['state'], q['by'], q['attempt']) for q in rec['slurm']['requeues']]} "
          f"while_requeued={seen['state']}/{next(iter(seen['slurm']['elements'].values()))['state']} restarts={el['restarts']} "
          f"attempt={rec['slurm']['attempt']} executions={tries} monitor_rc={r.returncode} final={st['state']} "
          f"node_down_to_completed={took:.0f}s start={t_start:.1f}s ledger={said}")
    assert jobcomp(cluster, job)[0] == "NODE_FAIL"  # what the scheduler itself recorded
    assert [(q["state"], q["by"], q["attempt"]) for q in rec["slurm"]["requeues"]] == [("NODE_FAIL", "slurm", 2)]
    assert r.returncode == 0, r.stdout + r.stderr
    assert st["state"] == "completed" and st["summary_ok"] is True, st
    assert rec["state"] == "success" and el["restarts"] == 1 and rec["slurm"]["attempt"] == 2
    assert (out / "marker").read_text() == "ok\n" and tries == 2
    assert any("requeued by Slurm after NODE_FAIL (attempt 2)" in ln for ln in said), said


def test_node_failure_with_no_requeue_allowed_fails_the_run_as_node_fail(cluster, tmp_path):
    env = make_project(tmp_path, cluster, max_requeue=0)
    job, _ = start_running(env, tmp_path)
    t0 = time.monotonic()
    node = fail_node(cluster)
    r = inv("sweep-monitor", "--wait", "--timeout-secs", "60", env=env, timeout=90)
    took = time.monotonic() - t0
    st, rec = run(env), record(tmp_path)
    out = tmp_path / "outputs" / "nf"
    time.sleep(1)
    sq = scheduler(cluster, "scontrol", "show", "job", "-o", job).stdout
    print(f"\nFIGURE node set DOWN under a running job (SLURM_MAX_REQUEUE=0): node={node} "
          f"jobcomp={jobcomp(cluster, job)} monitor_rc={r.returncode} final={st['state']} reason={st['reason']!r} "
          f"record={rec['state']} executions={(out / 'tries').read_text().count('x')} "
          f"scheduler_now={sq.split('JobState=')[1].split()[0] if 'JobState=' in sq else sq!r} "
          f"node_down_to_failed={took:.0f}s")
    assert r.returncode == 1, r.stdout + r.stderr
    assert st["state"] == "failed" and "NODE_FAIL" in st["reason"] and "node failure" in st["reason"], st
    assert "SLURM_MAX_REQUEUE=0" in st["reason"], st
    assert rec["state"] == "failed" and ": NODE_FAIL: node failure" in rec["reason"], rec
    assert not (out / "marker").exists()
    assert "JobState=CANCELLED" in sq  # opsrg cancelled Slurm's own requeue
