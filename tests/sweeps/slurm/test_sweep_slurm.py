"""Sweeps on a real single-node Slurm cluster (tests/slurm_cluster.py), tiny sizes.

The TIMEOUT row takes 60-90 s to be reported: it is submitted by a module fixture before the
other tests and asserted by the last test, so the whole module stays near the TIMEOUT latency.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support import REPO, inv

pytestmark = [pytest.mark.slurm, pytest.mark.tmux,
              pytest.mark.xdist_group("sweep-slurm")]  # under xdist: one worker, in order, one module fixture
HEAD = "run_id,config,seed,overrides,notes\n"
FP = "sweeps/configs/fp_tiny.toml"
EXP = "sweeps/configs/exp_small.toml"
SH = "sweeps/configs/shell.toml"
TINY_EXP = '"fp_run=a steps=1 samples=2000 shards=2 backend=numpy"'


def make_project(root: Path, name: str = "outputs", extra: str = "") -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    env_file = root / "workflow.env"
    env_file.write_text(f"POD_PROVIDER=local\nOPS_REMOTE_OUTPUTS_DIR={root}/{name}\nOPS_TMUX_SOCKET=opsrg-sw-{root.name}\n"
                        "SWEEP_BACKEND=slurm\nSLURM_MEM=\nSLURM_ARRAY_PARALLELISM=2\nTASK_KILL_GRACE_SECS=2\n" + extra)
    env = {"OPSRG_ENV_FILE": str(env_file)}
    assert inv("fsm-reset", "CHECKED_OUT", env=env).returncode == 0
    return env


def start(env, csv_text: str, root: Path, *extra: str) -> dict:
    csv = root / "s.csv"
    csv.write_text(HEAD + csv_text)
    r = inv("sweep-start", "--csv", str(csv), "--json", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait(env, timeout: int = 120):
    return inv("sweep-monitor", "--wait", "--timeout-secs", str(timeout), env=env, timeout=timeout + 30)


def runs_of(env) -> dict:
    r = inv("sweep-status", "--json", env=env)
    assert r.returncode in (0, 1), r.stderr
    return {x["run_id"]: x for x in json.loads(r.stdout)["runs"]}


def record(root: Path, key: str) -> dict:
    return json.loads((root / "outputs" / "_tasks" / key / "status.json").read_text())


@pytest.fixture(scope="module")
def timeout_sweep(slurm_cluster, tmp_path_factory):
    """A row over its 1-minute limit, submitted first so its TIMEOUT arrives while other tests run."""
    root = tmp_path_factory.mktemp("timeout")
    env = make_project(root)
    start(env, f"slow,{SH},1,\"command='sleep 300' timeout_secs=30\",\nquick,{SH},2,,\n", root)
    yield root, env, time.monotonic()
    inv("sweep-cancel", env=env)


def test_tiny_sweep_on_slurm_gives_the_tmux_histograms(timeout_sweep, slurm_cluster, tmp_path):
    slurm_env = make_project(tmp_path / "s")
    tmux_env = make_project(tmp_path / "t")
    rows = f"a,{FP},5,,fixed point\ne,{EXP},6,{TINY_EXP},exponent\n"
    started = start(slurm_env, rows, tmp_path / "s")
    # written once, after the (held) submissions: the manifest names its jobs from the start
    ma = json.loads((tmp_path / "s" / "outputs" / "a" / "run_manifest.json").read_text())
    keys = ["a.RG1.gen", "a.RG1.merge", "a.RG2.gen", "a.RG2.merge"]
    assert ma["tasks"] == keys and ma["job_ids"] == [started["jobs"][k] for k in keys]
    assert ma["history"][0]["state"] == "submitted" and ma["attempt"] == 1
    start(tmux_env, rows, tmp_path / "t", "--backend", "tmux")
    r = wait(slurm_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait(tmux_env).returncode == 0
    s, t = tmp_path / "s" / "outputs", tmp_path / "t" / "outputs"
    for rel in ("a/sym_z_hist_RG2.npz", "a/z_hist_unsym_RG1.npz", "e/shift_+0.010000/z_hist_unsym_RG1.npz",
                "e/shift_-0.010000/z_hist_unsym_RG1.npz"):
        x, y = np.load(s / rel), np.load(t / rel)
        assert all(np.array_equal(x[k], y[k]) for k in x.files), rel
    st = runs_of(slurm_env)
    assert st["a"]["state"] == st["e"]["state"] == "completed" and st["a"]["summary_ok"]
    assert len(st["a"]["job_ids"]) == 4 and len(st["e"]["job_ids"]) == 2
    # the same task record as a tmux task, from the scheduler
    # each element left its end marker (what a waiting monitor watches)
    assert sorted(p.name for p in (tmp_path / "s" / "outputs" / "_tasks" / "a.RG1.gen" / "ended").iterdir()) == [
        "0.0", "1.0"]
    gen = record(tmp_path / "s", "a.RG1.gen")
    assert gen["runner"] == "slurm" and gen["state"] == "success" and gen["exit_code"] == 0
    assert set(gen["slurm"]["elements"]) == {f"{started['jobs']['a.RG1.gen']}_{i}" for i in range(2)}
    assert gen["slurm"]["source"] in ("sacct", "scontrol", "sacct,scontrol")
    assert gen["started_at"] and gen["ended_at"] and gen["paths"]["log"].endswith("stdout-%a.log")
    # the dependency chain: each job started after the one it waits for ended
    chain = ["a.RG1.gen", "a.RG1.merge", "a.RG2.gen", "a.RG2.merge", "e.RG1.gen", "e.RG1.merge"]
    recs = [record(tmp_path / "s", k) for k in chain]
    for before, after in itertools.pairwise(recs):
        assert after["started_at"] >= before["ended_at"], (before["id"], after["id"])
    # meta.json, written on the compute node: same identity as the tmux run of the same row
    for rid in ("a", "e"):
        ms, mt = (json.loads((d / rid / "meta.json").read_text()) for d in (s, t))
        assert ms["backend"] == "slurm" and mt["backend"] == "tmux" and ms["slurm_job_id"]
        assert ms["identity"] == mt["identity"] == json.loads((s / rid / "run_manifest.json").read_text())["identity"]
        assert ms["ok"] is True and ms["ended_at"] and ms["git"]["commit"] and ms["device"].startswith(("cpu:", "gpu:"))
    r = inv("slurm-ledger", "--verify", env=slurm_env)
    assert r.returncode == 0 and "0 problems" in r.stdout, r.stdout
    assert json.loads(inv("fsm-status", "--json", env=slurm_env).stdout)["state"] == "SWEEP_COMPLETED"


def test_failed_and_cancelled_rows_and_a_killed_monitor(timeout_sweep, slurm_cluster, tmp_path):
    env = make_project(tmp_path)
    start(env, f"ok,{SH},1,,\nbad,{SH},2,\"command='echo boom; exit 3'\",\nlong,{SH},3,\"command='sleep 120'\",\n",
          tmp_path)
    mon = subprocess.Popen([str(Path(sys.executable).parent / "inv"), "sweep-monitor", "--wait"], cwd=REPO,
                           env={**__import__("os").environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while runs_of(env)["long"]["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    mon.send_signal(signal.SIGKILL)
    mon.wait()
    # the monitor died; resuming redoes the failed row only: not the completed nor the live one
    r = inv("sweep-start", "--resume", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resumed"] == ["bad"]
    r = inv("sweep-cancel", "--run", "long", env=env)
    assert r.returncode == 0, r.stderr
    assert wait(env, 60).returncode == 1
    st = runs_of(env)
    assert st["ok"]["state"] == "completed"
    assert st["bad"]["state"] == "failed" and st["bad"]["exit_code"] == 3 and "FAILED" in st["bad"]["reason"]
    assert st["long"]["state"] == "cancelled" and st["bad"]["attempt"] == 2 and st["ok"]["attempt"] == 1
    fsm = json.loads(inv("fsm-status", "--json", env=env).stdout)
    assert fsm["state"] == "SWEEP_FAILED"
    hist = json.loads(inv("fsm-history", "--json", env=env).stdout)
    assert "bad" in hist[-1].get("note", "") and "long" in hist[-1].get("note", "")


def test_resume_resubmits_only_missing_shards(timeout_sweep, slurm_cluster, tmp_path):
    env = make_project(tmp_path)
    start(env, f"a,{FP},5,\"shards=3\",\n", tmp_path)
    assert wait(env).returncode == 0
    run = tmp_path / "outputs" / "a"
    want = np.load(run / "sym_z_hist_RG2.npz")["histval"].copy()
    # lose step 2 except its shard 0, as if the merge and two shards had died
    for name in ("summary.json", "DONE_RG2.json", "sym_z_hist_RG2.npz", "z_hist_unsym_RG2.npz"):
        (run / name).unlink()
    subprocess.run([sys.executable, "-m", "opsrg.rg", "gen", "--step", "2", "--task", "0", "--ntasks", "3",
                    "--out", str(run), "--backend", "numpy"], check=True, capture_output=True)
    from opsrg.sweeps import runs

    runs.update(runs.SweepPaths(str(tmp_path / "outputs")), "a", "failed", "lost step 2 (test)")
    assert inv("fsm-reset", "SWEEP_FAILED", env=env).returncode == 0
    r = inv("sweep-start", "--resume", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["resumed"] == ["a"], r.stdout + r.stderr
    m = json.loads(next((tmp_path / "outputs" / "_manifests").glob("sweep-*.json")).read_text())
    again = {k: j for k, j in m["jobs"].items() if j["attempt"] == 2}
    assert sorted(again) == ["a.RG2.gen", "a.RG2.merge"] and again["a.RG2.gen"]["tasks"] == [1, 2]
    assert wait(env).returncode == 0
    assert np.array_equal(np.load(run / "sym_z_hist_RG2.npz")["histval"], want)
    assert runs_of(env)["a"]["attempt"] == 2


def test_local_sync_on_slurm_then_identical_rows_are_reused(timeout_sweep, slurm_cluster, tmp_path):
    scratch = tmp_path / "scratch"
    env = make_project(tmp_path, extra=f"RUN_OUT_MODE=local_sync\nRUN_OUT_LOCAL_ROOT={scratch}\nSYNC_INTERVAL_SECS=1\n")
    rows = f"a,{FP},5,steps=1,\nsh,{SH},1,\"command='sleep 2; echo hi > hi.txt'\",\n"
    start(env, rows, tmp_path)
    assert wait(env).returncode == 0
    out = tmp_path / "outputs"
    assert (out / "a" / "summary.json").exists() and (out / "a" / "sym_z_hist_RG1.npz").exists()
    assert (out / "a" / "shards" / "RG1" / "part_00001.READY").exists()  # each gen job synced its part
    assert (out / "sh" / "hi.txt").read_text() == "hi\n" and (scratch / "sh" / "hi.txt").exists()
    meta = json.loads((out / "a" / "meta.json").read_text())
    assert meta["out_mode"] == "local_sync" and meta["out_dir"] == str(scratch / "a") and meta["ok"] is True
    assert not (scratch / "a" / "meta.json").exists()
    assert inv("fsm-reset", "CHECKED_OUT", env=env).returncode == 0
    again = start(env, rows, tmp_path)
    assert again["runs"] == [] and again["jobs"] == {} and set(again["reused"]) == {"a", "sh"}
    assert wait(env, 10).returncode == 0


def test_command_rows_run_as_array_elements_with_the_same_record(timeout_sweep, slurm_cluster, tmp_path):
    """The user's own program on Slurm: independent rows packed into one array, a dependent row
    after its trainer, the same run records and verdicts as on tmux."""
    root = tmp_path / "proj"
    (root / "config").mkdir(parents=True)
    (root / "config" / "small.py").write_text("lr = 1e-3\n")
    (root / "train.py").write_text(
        "import json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'my': os.environ.get('MY_VAR'),"
        " 'pod': os.environ.get('FROM_POD')}, open(os.environ['OPSRG_RUN_DIR'] + '/seen.json', 'w'))\n"
        "if '--lr=10' in sys.argv:\n    sys.exit('diverged at lr=10')\n")
    (root / "pod.env").write_text("FROM_POD='set on the pod'\n")
    env = make_project(root, extra=f"OPS_REMOTE_REPO={root}\nRUN_ENV_PASS=MY_*\nRUN_ENV_FILE={root}/pod.env\n"
                                   f"RUN_COMMAND={sys.executable} train.py {{config}} --seed={{seed}} {{overrides}}\n")
    env["MY_VAR"] = "from the shell"
    started = start(env, "a,config/small.py,1,\"--lr=3e-4 --note='x y'\",\nb,config/small.py,2,--lr=10,\n"
                         "ev,config/small.py,3,\"after=a --eval\",\n", root)
    assert sorted(started["jobs"]) == ["ev.run", "shell.a.x2"]  # a and b: one array of two
    assert wait(env).returncode == 1
    runs = runs_of(env)
    assert {k: v["state"] for k, v in runs.items()} == {"a": "completed", "b": "failed", "ev": "completed"}
    assert runs["b"]["exit_code"] == 1 and "log ends: diverged at lr=10" in runs["b"]["reason"], runs["b"]
    assert "diverged at lr=10" in runs["b"]["log_tail"]
    assert (root / "outputs" / "b" / "logs" / "slurm-shell.a.x2.log").read_text().strip().endswith("diverged at lr=10")
    assert (root / "outputs" / "ev" / "logs" / "slurm-ev.run.log").is_file()
    seen = json.loads((root / "outputs" / "a" / "seen.json").read_text())
    assert seen == {"argv": ["config/small.py", "--seed=1", "--lr=3e-4", "--note=x y"], "cwd": str(root),
                    "my": "from the shell", "pod": "set on the pod"}  # sbatch exports the shell; the job sources RUN_ENV_FILE
    assert json.loads((root / "outputs" / "ev" / "seen.json").read_text())["argv"][-1] == "--eval"
    rec = record(root, "shell.a.x2")
    assert rec["runner"] == "slurm" and rec["state"] == "failed"  # one element failed


def test_a_rows_gpus_cpus_and_mem_become_its_jobs_requests(timeout_sweep, slurm_cluster, tmp_path):
    """Rows with different requests go into different arrays, each script asking for its rows' own."""
    root = tmp_path / "req"
    env = make_project(root)
    csv = root / "s.csv"
    csv.write_text(HEAD + f'a,{SH},1,"cpus=2 mem=64M",\nb,{SH},2,"cpus=2 mem=64M",\nc,{SH},3,,\n'
                          f'g,{SH},4,gpus=2,\nfp,{FP},1,"gpus=1 backend=numpy",\n')
    r = inv("sweep-start", "--csv", str(csv), "--dry-run", "--json", env=env)
    assert r.returncode == 0, r.stderr
    jobs = {j["key"]: j["script"] for j in json.loads(r.stdout)["jobs"]}
    assert {"shell.a.x2", "shell.c", "shell.g"} <= set(jobs)
    assert "#SBATCH --cpus-per-task=2" in jobs["shell.a.x2"] and "#SBATCH --mem=64M" in jobs["shell.a.x2"]
    assert "#SBATCH --cpus-per-task=1" in jobs["shell.c"] and "--mem=" not in jobs["shell.c"]
    assert "#SBATCH --gres=gpu:2" in jobs["shell.g"] and "--gres" not in jobs["shell.c"]
    assert all("#SBATCH --gres=gpu:1" in v for k, v in jobs.items() if k.startswith("fp."))  # every job of an RG run
    # the cluster takes such requests as written (1 cpu each: the other CPU may be busy with this
    # module's slow row)
    started = start(env, f'a,{SH},1,"cpus=1 mem=64M",\nb,{SH},2,"cpus=1 mem=64M",\n', root)
    assert sorted(started["jobs"]) == ["shell.a.x2"]
    assert wait(env).returncode == 0


def test_zz_row_over_its_time_limit_is_timeout(timeout_sweep):
    root, env, _ = timeout_sweep
    r = wait(env, 150)
    assert r.returncode == 1, r.stdout + r.stderr
    st = runs_of(env)
    assert st["quick"]["state"] == "completed"
    assert st["slow"]["state"] == "failed" and "TIMEOUT" in st["slow"]["reason"], st["slow"]
    assert st["slow"]["timed_out"] is True and st["slow"]["exit_code"] != 0, st["slow"]  # as a tmux row says it
    meta = json.loads((root / "outputs" / "slow" / "meta.json").read_text())  # killed before its books: the monitor's
    assert meta["timed_out"] is True and meta["ok"] is False and "monitor" in meta["recorded_by"], meta
    m = json.loads(next((root / "outputs" / "_manifests").glob("sweep-*.json")).read_text())
    (key,) = [k for k, j in m["jobs"].items() if "slow" in j["runs"]]
    rec = record(root, key)
    assert rec["runner"] == "slurm" and rec["state"] == "timed_out", rec
