"""Preemption of running sweep jobs, on a dedicated real single-node cluster.

The cluster is this module's own (``SLURM_LOCAL_DIR`` and ports apart from the other Slurm
tests), brought up with ``SLURM_LOCAL_PREEMPT=1``: ``PreemptType=preempt/partition_prio``,
``PreemptMode=REQUEUE``, opsrg's default partition ``debug`` at ``PriorityTier=1`` and a
partition ``high`` on the same node at ``PriorityTier=10``. A job submitted to ``high`` that
needs CPUs held by ``debug`` jobs preempts them at once: Slurm 22.05 kills them, writes a
``PREEMPTED`` line per element to the jobcomp file and requeues them itself (scontrol shows
``PENDING`` (``BeginTime``) with ``Restarts=N``, never a final ``PREEMPTED``). A requeued job
may start again once its credential expires (``SLURM_LOCAL_CRED_EXPIRE=5`` here), at the next
backfill pass (up to 30 s).

Each test prints its figure; docs/reliability.md summarises it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from slurm_cluster import private_cluster, scheduler
from support import inv

pytestmark = [pytest.mark.slurm, pytest.mark.tmux,
              pytest.mark.xdist_group("slurm-preempt")]  # under xdist: one worker, in order, one module fixture
HEAD = "run_id,config,seed,overrides,notes\n"
SH = "sweeps/configs/shell.toml"
# One array of three elements (SLURM_ARRAY_PARALLELISM=2): q ends at once; a and b each append to
# `tries` once per execution and write `marker` only when they live 10 s.
LONG = "command='echo x >> tries; sleep 10; echo ok > marker'"
ROWS = (f"q,{SH},1,\"command='echo x >> tries; echo ok > marker'\",\n"
        f"a,{SH},2,\"{LONG}\",\nb,{SH},3,\"{LONG}\",\n")


@pytest.fixture(scope="module")
def cluster():
    with private_cluster("preempt", SLURM_LOCAL_CRED_EXPIRE="5", SLURM_LOCAL_PREEMPT="1") as c:
        yield c.dir


def preempt(d: Path, out: Path, cpus: str) -> str:
    """Submit a job to the high-priority partition (``--exclusive``: the whole node, else 1 CPU)."""
    size = ["--exclusive"] if cpus == "node" else ["-n", "1"]
    r = scheduler(d, "sbatch", "--parsable", "-p", "high", *size, "-o", str(out / "high-%j.out"),
                  "--wrap", "sleep 2")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def jobcomp(d: Path) -> list[tuple[str, str]]:
    """(element, state) of every ending the scheduler wrote, oldest first."""
    out = []
    for ln in (d / "log" / "jobcomp.txt").read_text().splitlines():
        kv = dict(x.split("=", 1) for x in ln.split() if "=" in x)
        if kv.get("ArrayTaskId"):
            out.append((f"{kv['ArrayJobId']}_{kv['ArrayTaskId']}", kv["JobState"]))
    return out


def make_project(root: Path, d: Path, max_requeue: int) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    env_file = root / "workflow.env"
    env_file.write_text(f"POD_PROVIDER=local\nOPS_REMOTE_OUTPUTS_DIR={root}/outputs\nOPS_TMUX_SOCKET=opsrg-pe-{root.name}\n"
                        f"SWEEP_BACKEND=slurm\nSLURM_MEM=\nSLURM_ARRAY_PARALLELISM=2\nTASK_KILL_GRACE_SECS=2\n"
                        f"SLURM_MAX_REQUEUE={max_requeue}\n")
    env = {"OPSRG_ENV_FILE": str(env_file), "SLURM_CONF": str(d / "etc" / "slurm.conf")}
    assert inv("fsm-reset", "CHECKED_OUT", env=env).returncode == 0
    return env


def status(env: dict[str, str]) -> dict:
    r = inv("sweep-status", "--json", env=env)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return json.loads(r.stdout)


def runs(env: dict[str, str]) -> dict[str, dict]:
    return {r["run_id"]: r for r in status(env)["runs"]}


def tries(out: Path, rid: str) -> int:
    p = out / rid / "tries"
    return p.read_text().count("x") if p.exists() else 0


def until(what: str, timeout: float, fn):
    t0 = time.monotonic()
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() - t0 < timeout, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.5)


def test_preempted_array_tasks_are_recorded_requeued_within_budget_and_resumed_past_it(cluster, tmp_path):
    env = make_project(tmp_path, cluster, max_requeue=1)
    out = tmp_path / "outputs"
    (tmp_path / "s.csv").write_text(HEAD + ROWS)
    t0 = time.monotonic()
    r = inv("sweep-start", "--csv", str(tmp_path / "s.csv"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    (job,) = json.loads(r.stdout)["jobs"].values()
    elem = {"q": f"{job}_0", "a": f"{job}_1", "b": f"{job}_2"}
    until("a and b running", 40, lambda: tries(out, "a") and tries(out, "b")
          and all(x["state"] == "running" for k, x in runs(env).items() if k != "q"))

    # 1. a job needing the whole node preempts both running elements; SLURM_MAX_REQUEUE=1 lets
    #    each be requeued once: neither run fails, the requeue is on record everywhere
    t1 = time.monotonic()
    preempt(cluster, tmp_path, "node")
    until("two PREEMPTED endings in jobcomp", 20,
          lambda: sorted(e for e, s in jobcomp(cluster) if s == "PREEMPTED") == [elem["a"], elem["b"]])
    rec_path = next((out / "_tasks").glob("*/status.json"))

    def requeues_recorded():
        runs(env)  # one refresh
        rec = json.loads(rec_path.read_text())
        return rec if len(rec["slurm"]["requeues"]) >= 2 else None

    first = until("the requeues on the job record", 20, requeues_recorded)
    after1 = runs(env)
    manifests1 = {k: json.loads((out / k / "run_manifest.json").read_text()) for k in "ab"}

    # 2. both run again; then a 1-CPU job preempts exactly one of them: over the budget, opsrg
    #    cancels Slurm's requeue and fails that run, the other one completes
    until("a and b running again", 60, lambda: tries(out, "a") == 2 and tries(out, "b") == 2)
    t_rerun = time.monotonic() - t1
    preempt(cluster, tmp_path, "1cpu")
    victim = until("a second PREEMPTED ending", 20, lambda: next(
        (k for k in "ab" if [s for e, s in jobcomp(cluster) if e == elem[k]].count("PREEMPTED") == 2), None))
    survivor = "b" if victim == "a" else "a"
    mon = inv("sweep-monitor", "--wait", "--timeout-secs", "60", env=env, timeout=90)
    after2, rec = runs(env), json.loads(rec_path.read_text())
    sq = scheduler(cluster, "scontrol", "show", "job", "-o", elem[victim]).stdout
    ledger = (out / "docs" / "slurm_job_list.md").read_text()

    # 3. the documented way on: resume what failed
    t3 = time.monotonic()
    res = inv("sweep-start", "--resume", "--json", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    done = inv("sweep-monitor", "--wait", "--timeout-secs", "60", env=env, timeout=90)
    final = runs(env)
    verify = inv("slurm-ledger", "--verify", env=env)
    fsm = inv("fsm-status", "--json", env=env)
    took = time.monotonic() - t0
    print(f"\nFIGURE preemption (SLURM_MAX_REQUEUE=1, 3-element array, 2 running): "
          f"first={[(q['element'], q['state'], q['by'], q['attempt']) for q in first['slurm']['requeues']]} "
          f"runs_while_requeued={ {k: after1[k]['state'] for k in 'ab'} } "
          f"preempt_to_rerun={t_rerun:.0f}s victim={victim} victim_reason={after2[victim]['reason']!r} "
          f"survivor={after2[survivor]['state']} monitor_rc={mon.returncode} "
          f"resumed={json.loads(res.stdout)['resumed']} resume_to_completed={time.monotonic() - t3:.0f}s "
          f"executions={ {k: tries(out, k) for k in 'qab'} } final={ {k: v['state'] for k, v in final.items()} } "
          f"jobcomp={jobcomp(cluster)} total={took:.0f}s")

    # the first preemption: recorded on the job record, the run manifests, sweep-status and the ledger
    assert sorted((q["element"], q["state"], q["by"], q["attempt"]) for q in first["slurm"]["requeues"]) == \
        [(elem["a"], "PREEMPTED", "slurm", 2), (elem["b"], "PREEMPTED", "slurm", 2)]
    for k in "ab":
        assert after1[k]["state"] == "running", after1[k]
        assert [(q["state"], q["attempt"]) for q in manifests1[k]["requeues"]] == [("PREEMPTED", 2)], manifests1[k]
        assert [q["state"] for q in after1[k]["requeues"]] == ["PREEMPTED"], after1[k]
        assert after1[k]["reason"] == f"{elem[k]} requeued after PREEMPTED (1x)", after1[k]
        assert f"| {k} | " in ledger and f"{elem[k]} | requeued by Slurm after PREEMPTED (attempt 2) |" in ledger
    # the second: over SLURM_MAX_REQUEUE=1, so opsrg cancelled Slurm's requeue and failed the run
    assert mon.returncode == 1, mon.stdout + mon.stderr
    assert after2[victim]["state"] == "failed", after2[victim]
    assert "PREEMPTED: preempted" in after2[victim]["reason"] and "SLURM_MAX_REQUEUE=1" in after2[victim]["reason"]
    assert after2[survivor]["state"] == "completed" and after2[survivor]["summary_ok"] is True
    assert after2["q"]["state"] == "completed" and "JobState=CANCELLED" in sq
    assert rec["state"] == "failed" and rec["reason"].startswith(f"{elem[victim]}: PREEMPTED: preempted"), rec
    assert f"{elem[victim]} | requeued by Slurm after PREEMPTED (attempt 3) |" in ledger
    # resumed: every run completed with its outputs; each command ran exactly as often as Slurm started it
    assert json.loads(res.stdout)["resumed"] == [victim]
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(v["state"] == "completed" and v["summary_ok"] is True for v in final.values()), final
    assert json.loads(fsm.stdout)["state"] == "SWEEP_COMPLETED"
    assert verify.returncode == 0, verify.stdout + verify.stderr  # every ledger row matches a run manifest
    assert ledger.count("requeued") == 3  # one row per requeue, for its own run only
    assert all((out / k / "marker").read_text() == "ok\n" for k in "qab")
    assert (tries(out, "q"), tries(out, survivor), tries(out, victim)) == (1, 2, 3)
    assert took < 110
