"""The sweep plan: commands, Slurm jobs and dependencies, array splitting, resume of missing shards."""

from __future__ import annotations

import shlex
from pathlib import Path

from opsrg.sweeps.plan import RunProgress, Sweep, array_spec, plan_slurm, row_command, split_array
from opsrg.sweeps.rows import parse_text

REPO = Path(__file__).resolve().parents[2]
HEAD = "run_id,config,seed,overrides,notes\n"


def sweep(text: str) -> Sweep:
    return Sweep("c1", parse_text(HEAD + text, "s.csv", [REPO]), "/out", "py")


def test_split_array_and_spec():
    assert split_array(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert split_array([1, 4, 5], 1001) == [[1, 4, 5]]
    assert array_spec([0, 1, 2, 5, 7, 8], 4) == "0-2,5,7-8%4"


def test_fp_run_is_a_chain_of_gen_arrays_and_merges():
    sw = sweep("a,sweeps/configs/fp_tiny.toml,5,,\ne,sweeps/configs/exp_small.toml,6,\"fp_run=a steps=1\",\n")
    jobs = plan_slurm(sw, max_array_size=1001)
    assert [(j.key, j.deps, j.tasks) for j in jobs] == [
        ("a.RG1.gen", [], [0, 1]), ("a.RG1.merge", ["a.RG1.gen"], None),
        ("a.RG2.gen", ["a.RG1.merge"], [0, 1]), ("a.RG2.merge", ["a.RG2.gen"], None),
        ("e.RG1.gen", ["a.RG2.merge"], [0, 1, 2, 3]), ("e.RG1.merge", ["e.RG1.gen"], None)]
    assert jobs[3].final_for == "a" and jobs[1].final_for == ""
    assert "--fp /out/a/sym_z_hist_RG2.npz" in jobs[4].body and '--task "$OPSRG_TASK"' in jobs[4].body
    assert "opsrg.rg merge --step 2" in jobs[3].body and "opsrg.rg fp --steps 2" in jobs[3].body


def test_shards_over_max_array_size_split_and_merge_waits_for_all():
    sw = sweep("a,sweeps/configs/fp_tiny.toml,5,\"shards=7 steps=1\",\n")
    jobs = plan_slurm(sw, max_array_size=3)
    assert [(j.key, j.tasks) for j in jobs[:3]] == [("a.RG1.gen", [0, 1, 2]), ("a.RG1.gen1", [0, 1, 2]),
                                                     ("a.RG1.gen2", [0])]
    assert "OPSRG_TASK_OFFSET=6" in jobs[2].body
    assert jobs[3].deps == ["a.RG1.gen", "a.RG1.gen1", "a.RG1.gen2"]


def test_resume_plans_only_missing_steps_and_shards():
    sw = sweep("a,sweeps/configs/fp_tiny.toml,5,\"shards=3 steps=3\",\n")
    prog = {"a": RunProgress(ok=False, done_steps={1}, ready={2: {0, 2}})}
    jobs = plan_slurm(sw, max_array_size=1001, progress=prog)
    assert [(j.key, j.tasks, j.deps) for j in jobs] == [
        ("a.RG2.gen", [1], []), ("a.RG2.merge", None, ["a.RG2.gen"]),
        ("a.RG3.gen", [0, 1, 2], ["a.RG2.merge"]), ("a.RG3.merge", None, ["a.RG3.gen"])]
    done = {"a": RunProgress(ok=False, done_steps={1, 2, 3})}
    assert [j.key for j in plan_slurm(sw, max_array_size=1001, progress=done)] == ["a.final"]
    assert plan_slurm(sw, max_array_size=1001, progress={"a": RunProgress(ok=True)}) == []


def test_independent_shell_rows_pack_into_arrays():
    rows = "".join(f"r{i},sweeps/configs/shell.toml,{i},,\n" for i in range(5))
    jobs = plan_slurm(sweep(rows + "d,sweeps/configs/shell.toml,9,after=r1,\n"), max_array_size=2)
    assert [(j.key, j.runs, j.tasks) for j in jobs] == [
        ("shell.r0.x2", ["r0", "r1"], [0, 1]), ("shell.r2.x2", ["r2", "r3"], [0, 1]), ("shell.r4", ["r4"], [0]),
        ("d.run", ["d"], None)]
    assert jobs[-1].deps == ["shell.r0.x2#1"]  # r1 is element 1 of that array: d waits for it alone
    assert "1)\n" in jobs[0].body and "OPSRG_RUN_ID=r1" in jobs[0].body


def test_commands_quote_everything():
    sw = sweep("s,sweeps/configs/shell.toml,3,\"command='echo $(id) > /tmp/x; true'\",\n")
    cmd = row_command(sw, sw.rows[0])
    assert "bash -c 'echo $(id) > /tmp/x; true'" in cmd
    (line,) = [x for x in cmd.splitlines() if x.startswith("bash ")]
    assert shlex.split(line) == ["bash", "-c", "echo $(id) > /tmp/x; true"]


def test_rows_with_different_requests_go_into_different_arrays():
    sw = sweep('a,sweeps/configs/shell.toml,1,"cpus=2 mem=4G",\nb,sweeps/configs/shell.toml,2,"mem=4G cpus=2",\n'
               "c,sweeps/configs/shell.toml,3,,\nd,sweeps/configs/shell.toml,4,gpus=1,\n")
    jobs = {j.key: j for j in plan_slurm(sw, max_array_size=1000)}
    assert set(jobs) == {"shell.a.x2", "shell.c", "shell.d"}
    assert jobs["shell.a.x2"].resources == {"cpus": 2, "mem": "4G"} and jobs["shell.d"].resources == {"gpus": 1}


def test_a_jobs_requests_override_the_settings_and_gpus_0_asks_for_none():
    from opsrg.sweeps.slurm.cli import SlurmOptions

    base = SlurmOptions(cpus_per_task=1, mem="2G", gres="gpu:8")
    assert base.for_job({}) is base
    d = base.for_job({"gpus": 2, "cpus": 4, "mem": "16G"}).directives("01:00:00")
    assert "#SBATCH --gres=gpu:2" in d and "#SBATCH --cpus-per-task=4" in d and "#SBATCH --mem=16G" in d
    assert not [x for x in base.for_job({"gpus": 0}).directives("01:00:00") if "gres" in x]


def test_slurm_time_limits_read_as_seconds():
    from opsrg.sweeps.slurm.cli import limit_secs, slurm_secs

    assert [slurm_secs(t) for t in ("30", "10:05", "01:00:00", "2-03", "1-00:30", "1-00:00:10")] == \
        [1800, 605, 3600, 2 * 86400 + 3 * 3600, 86400 + 1800, 86410]
    assert slurm_secs("UNLIMITED") is None and slurm_secs("") is None
    assert limit_secs(30, "01:00:00") == 60 and limit_secs(None, "00:10:00") == 600  # whole minutes, as sbatch gets
