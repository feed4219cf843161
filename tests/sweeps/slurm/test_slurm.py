"""Slurm text parsing, state mapping, the backed-off batched watcher. No cluster needed."""

from __future__ import annotations

import itertools

from opsrg.sweeps.slurm.cli import (
    JobInfo,
    SlurmOptions,
    expand_ids,
    map_state,
    parse_config,
    parse_jobcomp,
    parse_sacct,
    parse_scontrol,
    parse_squeue,
    render,
    time_directive,
)
from opsrg.sweeps.slurm.watcher import Watcher, backoff, expected_elements
from opsrg.tracked.records import TaskState

SACCT = """1_0|COMPLETED|0:0|2026-11-29T03:14:46|2026-11-29T03:14:47|None
1_2|FAILED|3:0|2026-11-29T03:14:47|2026-11-29T03:14:48|JobArrayTaskLimit
1_[4-6%2]|PENDING|0:0|Unknown|Unknown|JobArrayTaskLimit
5|CANCELLED by 0|0:0|2026-11-29T03:16:22|2026-11-29T03:16:22|None
6|CANCELLED|0:0|None|2026-11-29T03:16:22|Dependency
7|TIMEOUT|0:15|2026-11-29T03:16:22|2026-11-29T03:17:30|TimeLimit
7.batch|FAILED|15:0|||
8|OUT_OF_MEMORY|0:125|||
9|NODE_FAIL|0:0|||
"""
SCONTROL = ("JobId=4 ArrayJobId=1 ArrayTaskId=2 ArrayTaskThrottle=2 JobName=wrap JobState=FAILED "
            "Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 StartTime=2026-11-29T03:14:47 EndTime=2026-11-29T03:14:48\n"
            "JobId=1 ArrayJobId=1 ArrayTaskId=4-6%2 JobState=PENDING Reason=JobArrayTaskLimit ExitCode=0:0 "
            "StartTime=Unknown EndTime=Unknown\n"
            "JobId=12 JobName=x JobState=RUNNING Reason=None ExitCode=0:0 StartTime=2026-11-29T03:20:00 EndTime=Unknown\n")
JOBCOMP = ("JobId=2 UserId=root(0) GroupId=root(0) Name=wrap JobState=COMPLETED Partition=debug StartTime=2026-11-29T03:14:46 "
           "EndTime=2026-11-29T03:14:47 ArrayJobId=1 ArrayTaskId=0 DerivedExitCode=0:0 ExitCode=0:0\n"
           "JobId=20 UserId=root(0) Name=wrap JobState=FAILED ExitCode=3:0 ArrayJobId= ArrayTaskId=\n")


def test_parse_sacct_expands_arrays_and_skips_steps():
    got = parse_sacct(SACCT)
    assert set(got) == {"1_0", "1_2", "1_4", "1_5", "1_6", "5", "6", "7", "8", "9"}
    assert (got["1_2"].state, got["1_2"].exit_code, got["1_2"].source) == ("FAILED", 3, "sacct")
    assert got["5"].state == "CANCELLED" and got["5"].raw_state == "CANCELLED by 0"
    assert got["1_5"].state == "PENDING" and got["1_5"].start == ""
    assert got["7"].state == "TIMEOUT" and got["7"].signal == 15


def test_parse_scontrol_squeue_jobcomp():
    sc = parse_scontrol(SCONTROL)
    assert sc["1_2"].exit_code == 3 and sc["1_2"].reason == "NonZeroExitCode" and sc["1_2"].source == "scontrol"
    assert {"1_4", "1_5", "1_6", "12"} <= set(sc) and sc["12"].end == ""
    sq = parse_squeue("1_0|COMPLETED|None|2026-11-29T03:14:46|2026-11-29T03:14:47\n3|PENDING|Dependency|N/A|N/A\n")
    assert sq["3"].reason == "Dependency" and sq["1_0"].exit_code is None and sq["3"].source == "squeue"
    jc = parse_jobcomp(JOBCOMP)
    assert jc["1_0"].state == "COMPLETED" and jc["20"].exit_code == 3 and jc["20"].source == "jobcomp"


def test_expand_ids():
    assert expand_ids("12_[1,4-5%2]") == ["12_1", "12_4", "12_5"]
    assert expand_ids("12") == ["12"] and expand_ids("12_3") == ["12_3"]


def test_state_mapping_with_reasons():
    assert map_state("PENDING", "Dependency") == (TaskState.PENDING, "PENDING (Dependency)")
    assert map_state("RUNNING")[0] == TaskState.RUNNING
    assert map_state("COMPLETED", exit_code=0) == (TaskState.SUCCESS, "COMPLETED")
    assert map_state("FAILED", "NonZeroExitCode", 3) == (TaskState.FAILED, "FAILED: non-zero exit, exit code 3")
    assert map_state("TIMEOUT", "TimeLimit") == (TaskState.TIMED_OUT, "TIMEOUT: time limit reached, TimeLimit")
    assert map_state("CANCELLED", raw="CANCELLED by 0") == (TaskState.FAILED, "CANCELLED by 0")
    assert map_state("CANCELLED", "DependencyNeverSatisfied")[1] == "CANCELLED: DependencyNeverSatisfied"
    assert map_state("OUT_OF_MEMORY")[1] == "OUT_OF_MEMORY: out of memory"
    assert map_state("NODE_FAIL")[0] == TaskState.FAILED
    assert map_state("CANCELLED+")[0] == TaskState.FAILED


def test_config_time_and_render():
    cfg = parse_config("MaxArraySize            = 1001\nAccountingStorageType   = accounting_storage/none\n")
    assert cfg["MaxArraySize"] == "1001"
    assert time_directive(30, "01:00:00") == "00:01:00" and time_directive(3700, "x") == "01:02:00"
    assert time_directive(None, "02:00:00") == "02:00:00"
    d = SlurmOptions(partition="gpu", account="", time="1:00:00", gres="gpu:1").directives("00:05:00", "0-3%2")
    assert d == ["#SBATCH --partition=gpu", "#SBATCH --time=00:05:00", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --gres=gpu:1", "#SBATCH --array=0-3%2"]
    text = render("#!/bin/bash\n#SBATCH --job-name=${job_name}\n${directives}\n# ${campaign} ${key} ${log}\n${body}",
                  key="a b.RG1", campaign="c", log="/l", directives=d[:1], body="echo $$HOME")
    assert "--job-name=a_b.RG1" in text and "echo $$HOME" in text


def test_backoff_schedule():
    assert list(itertools.islice(backoff(30, 60), 8)) == [0, 2, 4, 8, 30, 45, 60, 60]


def test_watcher_batches_and_caches_final_states():
    calls = []
    answers = iter([
        {"1_0": JobInfo("1_0", "COMPLETED", 0), "1_1": JobInfo("1_1", "RUNNING"), "2": JobInfo("2", "PENDING")},
        {"1_1": JobInfo("1_1", "FAILED", 3), "2": JobInfo("2", "CANCELLED", 0)},
    ])

    def query(ids):
        calls.append(list(ids))
        return next(answers)

    w = Watcher(query)
    expected = {"1": expected_elements("1", [0, 1]), "2": expected_elements("2", None)}
    first = w.poll(expected)
    assert first["1_1"].state == "RUNNING" and calls == [["1", "2"]]
    slept = []
    final = w.wait(expected, sleep=slept.append)
    assert calls == [["1", "2"], ["1", "2"]] and final["1_1"].exit_code == 3
    assert w.poll(expected)["2"].state == "CANCELLED" and len(calls) == 2  # cached: no third query
    assert slept == [0.0]


def test_preempted_and_node_fail_are_requeued_up_to_the_limit(tmp_path):
    from opsrg.sweeps.campaign import SweepEnv
    from opsrg.sweeps.records import Campaign
    from opsrg.sweeps.slurm.backend import SlurmBackend

    class FakeSlurm:
        def __init__(self):
            self.requeued = []

        def requeue(self, job_id):
            self.requeued.append(job_id)
            return True

        def query(self, ids):
            return {}

    fake = FakeSlurm()
    be = SlurmBackend(fake)
    env = SweepEnv(outputs=str(tmp_path), max_requeue=2)
    m = Campaign(campaign="c", backend="slurm")
    j = {"key": "a.RG1.gen", "kind": "gen", "runs": ["a"], "requeues": []}
    assert be.requeue_ended(env, m, "a.RG1.gen", j, {"5_0": JobInfo("5_0", "NODE_FAIL")})
    assert be.requeue_ended(env, m, "a.RG1.gen", j, {"5_1": JobInfo("5_1", "PREEMPTED")})
    assert be.requeue_ended(env, m, "a.RG1.gen", j, {"5_1": JobInfo("5_1", "PREEMPTED")})  # the budget is per element
    assert not be.requeue_ended(env, m, "a.RG1.gen", j, {"5_1": JobInfo("5_1", "PREEMPTED")})  # limit reached
    assert not be.requeue_ended(env, m, "a.RG1.gen", j, {"6": JobInfo("6", "FAILED", 1)})
    assert fake.requeued == ["5_0", "5_1", "5_1"]
    assert [(r["state"], r["attempt"]) for r in j["requeues"]] == [("NODE_FAIL", 2), ("PREEMPTED", 2), ("PREEMPTED", 3)]
    assert "requeued after NODE_FAIL" in (tmp_path / "docs" / "slurm_job_list.md").read_text()


def test_the_requeue_budget_is_per_element_and_counts_slurms_own_requeues():
    from opsrg.sweeps.slurm.requeue import RequeuePolicy

    pol = RequeuePolicy(max_requeue=1)
    job = {"requeues": []}
    assert pol.should_requeue(job, "5_0", "PREEMPTED") and pol.should_requeue(job, "5_0", "NODE_FAIL")
    assert not pol.should_requeue(job, "5_0", "FAILED") and not pol.should_requeue(job, "5_0", "TIMEOUT")
    job["requeues"].append(pol.entry(job, "5_0", "PREEMPTED", by="opsrg", ok=True, at="t"))
    assert job["requeues"][0]["attempt"] == 2 and "ended_at" not in job["requeues"][0]
    assert not pol.should_requeue(job, "5_0", "PREEMPTED")  # its budget is spent
    assert pol.should_requeue(job, "5_1", "PREEMPTED")      # a neighbour's is not
    assert not pol.over_budget(job, "5_0")
    # Slurm restarted 5_0 three times; one is recorded: two are unseen, and past the budget
    assert list(pol.unseen(job, "5_0", 3)) == [1, 2]
    for n in pol.unseen(job, "5_0", 3):
        job["requeues"].append(pol.entry(job, "5_0", "NODE_FAIL", by="slurm", ok=True, at="t", attempt=n + 2,
                                         ended_at=""))
    assert [r["attempt"] for r in job["requeues"]] == [2, 3, 4] and pol.over_budget(job, "5_0")
    # a requeue scontrol refused is not one that happened
    failed = {"requeues": [pol.entry({"requeues": []}, "7", "PREEMPTED", by="opsrg", ok=False, at="t")]}
    assert pol.used(failed, "7") == 1 and pol.seen(failed, "7") == 0 and list(pol.unseen(failed, "7", 1)) == [0]


def test_ledger_verify_accepts_an_element_of_a_listed_array(tmp_path):
    """A requeue row names the element (587_0); the run manifest lists its array (587)."""
    from opsrg.sweeps import runs
    from opsrg.sweeps.slurm import ledger

    paths = runs.SweepPaths(str(tmp_path))
    runs.create(paths, "a", "c", "slurm", {}, job_ids=["587"], tasks=["a.RG1.gen"])
    ledger.append(paths, [ledger.entry("c", "a", "a.RG1.gen", "587", "submitted"),
                          ledger.entry("c", "a", "a.RG1.gen", "587_0", "requeued by Slurm after PREEMPTED (attempt 2)"),
                          ledger.entry("c", "a", "a.RG1.gen", "588_0", "requeued by Slurm after PREEMPTED (attempt 2)")])
    assert ledger.verify(paths) == ["row 3: a: job 588_0 (a.RG1.gen) not in its run manifest"]


def test_the_monitor_looks_again_soon_after_an_end_is_due(monkeypatch):
    """An element's end marker or a job's time limit (wake_at): polls close together for a while."""
    from opsrg.sweeps import commands

    monkeypatch.setattr(commands.time, "time", lambda: 1000.0)
    assert commands._due(30.0, None) == 30.0
    assert commands._due(30.0, 1010.0) == 11.0  # a limit ahead: look just after it
    assert commands._due(30.0, 999.0) == 1.0  # just ended (a marker), Slurm not saying so yet
    assert commands._due(30.0, 950.0) == 1.0  # within two minutes of a limit (KillWait)
    assert commands._due(30.0, 800.0) == 30.0  # then the backed-off delay again
    assert commands._due(0.2, 999.0) == 0.2
