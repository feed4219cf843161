"""The typed run records read what is on disk, old files included."""

import json

import pytest

from opsrg.sweeps import runs
from opsrg.sweeps.records import FINAL, LAUNCH_CUT, LAUNCH_OPEN, LaunchState, RunManifest, RunState


def test_states_compare_and_write_as_the_strings_on_disk():
    assert RunState.COMPLETED == "completed" and json.dumps({"s": RunState.FAILED}) == '{"s": "failed"}'
    assert set(FINAL) == {"completed", "failed", "cancelled"} and str(RunState.SYNCED) == "synced"
    assert [s.rank for s in RunState] == [0, 1, 2, 3, 3, 3]
    assert set(LAUNCH_OPEN) == {"pending", "launching"} and set(LAUNCH_CUT) == {"aborted", "interrupted"}
    assert LaunchState("launched") is LaunchState.LAUNCHED and not LaunchState.LAUNCHED.is_open


def test_an_old_manifest_reads_with_defaults_and_keeps_what_it_does_not_know():
    old = {"run_id": "r1", "campaign": "c", "backend": "tmux", "state": "running", "job_ids": [],
           "exit_code": None, "reason": None, "from_the_future": {"x": 1}}
    m = RunManifest.from_json(old)
    assert m.state is RunState.RUNNING and not m.is_final and m.reason == "" and m.attempt == 1
    assert m.requeues == [] and m.exit_code is None and m.extra == {"from_the_future": {"x": 1}}
    again = RunManifest.from_json(m.to_json())
    assert again == m and again.to_json()["state"] == "running"


@pytest.mark.parametrize("bad", [{"state": "running"}, {"run_id": "r", "state": "exploded"}, ["r"]])
def test_what_is_no_run_manifest_is_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        RunManifest.from_json(bad)


def test_runs_read_is_typed_and_none_for_a_file_that_is_no_manifest(tmp_path):
    paths = runs.SweepPaths(str(tmp_path))
    runs.create(paths, "r1", "c", "tmux", {"run_id": "r1"})
    runs.update(paths, "r1", "running")
    runs.update(paths, "r1", RunState.COMPLETED)
    runs.update(paths, "r1", RunState.RUNNING)  # never backwards
    rm = runs.read(paths, "r1")
    assert rm.state is RunState.COMPLETED and rm.completed_at and [h["state"] for h in rm.history] == [
        "submitted", "running", "completed"]
    assert runs.state_of(paths, "r1") is RunState.COMPLETED and runs.read_for(paths, "r1", "other") is None
    with pytest.raises(ValueError):
        runs.update(paths, "r1", "exploded")
    paths.run_manifest("r2").parent.mkdir(parents=True)
    paths.run_manifest("r2").write_text('{"state": "running"}')
    assert runs.read(paths, "r2") is None and runs.state_of(paths, "r2") is None


def test_a_sweep_manifest_of_an_older_opsrg_reads_and_writes_back_what_it_holds():
    from opsrg.sweeps.records import Campaign

    old = {"campaign": "sweep-1", "backend": "tmux", "env": {"outputs": "/o"}, "rows": [{"run_id": "a"}],
           "jobs": {}, "todo": ["a"], "driver_task": "sweep-driver.sweep-1", "something_new": 3}
    c = Campaign.from_json(old)  # no launch record, no identities: an opsrg before they existed
    assert c.launch == {} and c.identities == {} and c.run_ids == ["a"] and c.extra == {"something_new": 3}
    assert Campaign.from_json(c.to_json()) == c and c.to_json()["something_new"] == 3
    with pytest.raises(ValueError):
        Campaign.from_json({"rows": []})


def test_concurrent_appends_to_a_run_manifest_all_land(tmp_path):
    """What the requeue bookkeeping relies on: each append is read and written under the lock."""
    from concurrent.futures import ThreadPoolExecutor

    from opsrg.sweeps import runs

    paths = runs.SweepPaths(str(tmp_path))
    runs.create(paths, "r1", "c", "slurm", {"run_id": "r1"})
    with ThreadPoolExecutor(max_workers=8) as ex:
        assert all(ex.map(lambda i: runs.append(paths, "r1", "requeues", {"n": i}), range(40)))
    assert sorted(q["n"] for q in runs.read(paths, "r1").requeues) == list(range(40))
    runs.update(paths, "r1", "failed", "done")
    assert runs.append(paths, "r1", "requeues", {"n": 99}) is False  # a final run is left as it is
    assert len(runs.read(paths, "r1").requeues) == 40


def test_a_runs_ending_reads_the_same_from_tmux_and_slurm():
    from opsrg.sweeps.records import ending

    assert ending("failed", -15) == {"exit_code": None, "signal": 15, "timed_out": False}  # tmux: Popen's -N
    assert ending("timed_out", 0, 15) == {"exit_code": None, "signal": 15, "timed_out": True}  # sacct's 0:15
    assert ending("failed", 3) == {"exit_code": 3, "signal": None, "timed_out": False}
    assert ending("success", 0) == {"exit_code": 0, "signal": None, "timed_out": False}
    assert ending("timed_out", 0) == {"exit_code": None, "signal": None, "timed_out": True}  # sacct's 0:0
