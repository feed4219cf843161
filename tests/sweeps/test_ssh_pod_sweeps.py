"""A sweep of the user's own project on a pod reached over SSH (the real sshd), driven from this
machine with the installed `opsrg`: the pod gets opsrg from a wheel of this build in a venv of its
own, the user's repository checked out with its requirements, and runs the rows there; status,
failure reasons, resume, fetch-run and reuse work from here, and a secret reaches the run only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsrg.pods import tool

from sshd import POD_TOOL_DIR, write_ssh_env
from support import REPO

pytestmark = [pytest.mark.ssh, pytest.mark.tmux]
BIN = Path(sys.executable).parent
SECRET = "tok-5ecr3t-do-not-write"

ENVCHECK = """import json, os
json.dump({"my_var": os.environ.get("MY_VAR"), "token_len": len(os.environ.get("MY_API_TOKEN", "")),
           "cwd": os.getcwd()}, open(os.path.join(os.environ["OPSRG_RUN_DIR"], "env.json"), "w"))
"""


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@x", *args], cwd=root, check=True)


@pytest.fixture
def project(tmp_path, tmux_socket, sshd_server) -> Path:
    root = tmp_path / "nanotrain"
    shutil.copytree(REPO / "examples" / "trainer", root)
    (root / "envcheck.py").write_text(ENVCHECK)
    (root / "config" / "envcheck.toml").write_text('mode = "command"\ncommand = "python envcheck.py"\n')
    (root / ".gitignore").write_text(".opsrg/\nartifacts/\npod/\n")
    write_ssh_env(root, sshd_server, tmux_socket, SWEEP_TMUX_SESSION="ts", SWEEP_CSV="sweep.csv",
                  RUN_COMMAND="python train.py {config} --seed={seed} {overrides}", CHECKOUT_BRANCH="main",
                  RUN_ENV_PASS="MY_VAR,MY_API_TOKEN")
    (root / "sweep.csv").write_text(
        "run_id,config,seed,overrides,notes\n"
        "fast,config/train_small.py,1,--lr=0.1 --max_iters=200,\n"
        "diverges,config/train_small.py,1,--lr=10,exits 2\n"
        'evals,config/train_small.py,2,"after=fast --max_iters=100",after its trainer\n'
        "env,config/envcheck.toml,1,,sees the environment\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "my trainer")
    return root


def _runner(root: Path):
    env = {k: v for k, v in os.environ.items() if k != "OPSRG_ENV_FILE"}
    env.update(MY_VAR="from the client", MY_API_TOKEN=SECRET)

    def opsrg(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "opsrg"), *args], cwd=root, capture_output=True, text=True,
                              timeout=timeout, env=env)

    return opsrg


def _states(opsrg) -> dict[str, dict]:
    r = opsrg("sweep-status", "--json")
    assert r.stdout, r.stderr
    return {x["run_id"]: x for x in json.loads(r.stdout)["runs"]}


def test_a_sweep_on_an_ssh_pod_runs_there_and_is_driven_from_here(project):
    opsrg = _runner(project)
    pod = project / "pod"
    for step in ("pod-up", "bootstrap", "checkout"):
        r = opsrg(step)
        assert r.returncode == 0, f"{step}: {r.stdout}{r.stderr}"
        if step == "bootstrap":  # opsrg of this very build, in a venv of its own on the pod
            assert "opsrg 0.1.0" in r.stdout, r.stdout
            marker = POD_TOOL_DIR / f"0.1.0-{tool.build_id()}" / "tool.json"
            assert json.loads(marker.read_text())["build"] == tool.build_id()
    assert "installed requirements.txt" in r.stdout and "bundle" in r.stdout, r.stdout
    repo = pod / "repo"
    assert not (repo / ".venv" / "bin" / "opsrg").exists()  # never in the user's venv

    r = opsrg("sweep-start", "--dry-run")
    assert r.returncode == 0 and "4 jobs" in r.stdout and "--max_iters=200" in r.stdout, r.stdout + r.stderr
    assert json.loads(opsrg("fsm-status", "--json").stdout)["state"] == "CHECKED_OUT"
    r = opsrg("sweep-start")
    assert r.returncode == 0 and "started on tmux: 4 runs" in r.stdout, r.stdout + r.stderr
    assert json.loads(opsrg("fsm-status", "--json").stdout)["state"] == "SWEEP_RUNNING"
    r = opsrg("sweep-monitor", "--wait", "--timeout-secs", "150")
    assert r.returncode == 1 and "diverges" in r.stderr, r.stdout + r.stderr
    runs = _states(opsrg)
    assert {k: v["state"] for k, v in runs.items()} == {
        "fast": "completed", "diverges": "failed", "evals": "completed", "env": "completed"}
    assert runs["diverges"]["exit_code"] == 2 and "diverged (lr=10.0)" in runs["diverges"]["reason"]
    assert json.loads(opsrg("fsm-status", "--json").stdout)["state"] == "SWEEP_FAILED"
    out = pod / "outputs"
    ids = {t["id"] for t in json.loads(opsrg("task-list", "--json", "--all").stdout)}
    assert {"fast", "diverges", "evals", "env"} <= ids and any(i.startswith("sweep-driver.") for i in ids), ids
    seen = json.loads((out / "env" / "env.json").read_text())
    assert seen == {"my_var": "from the client", "token_len": len(SECRET), "cwd": str(repo)}
    assert json.loads((out / "fast" / "meta.json").read_text())["project"]["dirty"] is False

    r = opsrg("sweep-start", "--resume")  # only the failed row again; its first log is kept
    assert r.returncode == 0 and "resumed: diverges" in r.stdout, r.stdout + r.stderr
    assert opsrg("sweep-monitor", "--wait", "--timeout-secs", "60").returncode == 1
    assert (out / "diverges" / "logs" / "stdout.1.log").is_file()

    r = opsrg("fetch-run", "fast")
    assert r.returncode == 0, r.stderr
    got = project / "artifacts" / "fast"
    assert json.loads((got / "metrics.json").read_text())["iters"] == 200
    assert "done: loss" in (got / "logs" / "stdout.log").read_text()

    # changed code: a completed run is never silently reused; the message says why and how to force it
    (project / "train.py").write_text((project / "train.py").read_text().replace("diverge_loss = 1e3",
                                                                                 "diverge_loss = 1e4"))
    _git(project, "commit", "-qam", "a looser divergence bound")
    assert opsrg("checkout").returncode == 0
    (project / "sweep.csv").write_text("run_id,config,seed,overrides,notes\n"
                                       "fast,config/train_small.py,1,--lr=0.1 --max_iters=200,\n")
    r = opsrg("sweep-start")
    assert r.returncode == 2 and "the project's code changed" in r.stderr and "--force" in r.stderr, r.stderr
    r = opsrg("sweep-start", "--force")
    assert r.returncode == 0 and "1 runs" in r.stdout and "reused" not in r.stdout, r.stdout + r.stderr
    assert opsrg("sweep-monitor", "--wait", "--timeout-secs", "60").returncode == 0
    assert list((out / "_replaced").glob("*/fast/metrics.json"))
    # doctor checks the pod's side there and judges this machine's workflow state by it
    assert opsrg("doctor").returncode == 0
    assert opsrg("fsm-reset", "SWEEP_RUNNING").returncode == 0
    r = opsrg("doctor", "--json")
    assert r.returncode == 1 and [f["kind"] for f in json.loads(r.stdout)] == ["fsm"], r.stdout + r.stderr
    assert opsrg("doctor", "--fix").returncode == 0
    assert json.loads(opsrg("fsm-status", "--json").stdout)["state"] == "SWEEP_COMPLETED"
    assert json.loads(opsrg("fsm-status", "--json").stdout)["state"] == "SWEEP_COMPLETED"
    listed = {r["run_id"]: r for r in json.loads(opsrg("artifacts-ls", "--json").stdout)}
    assert listed["fast"]["state"] == "completed" and listed["diverges"]["state"] == "failed"
    # the live view is built on the pod, by its opsrg and tmuxp, and attached to through ssh -t
    r = opsrg("sweep-attach", "--detached", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    built = json.loads(r.stdout)
    assert built["attach"][0] == "ssh" and "-t" in built["attach"] and built["attach"][-1].endswith(built["session"])
    windows = subprocess.run(["tmux", "-L", built["socket"], "list-windows", "-t", built["session"], "-F",
                              "#{window_name}"], capture_output=True, text=True).stdout.split()
    assert windows == ["status", "runs"]
    r = opsrg("artifacts-gc", "--ttl-days", "0")
    assert r.returncode == 2 and "local pod only" in r.stderr and (out / "fast").is_dir(), r.stderr

    leaked = [str(p) for base in (project, POD_TOOL_DIR) for p in base.rglob("*")
              if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_a_sweep_on_an_ssh_pod_is_cancelled_from_here(project):
    opsrg = _runner(project)
    for step in ("pod-up", "bootstrap", "checkout"):
        assert opsrg(step).returncode == 0, step
    (project / "sweep.csv").write_text("run_id,config,seed,overrides,notes\n"
                                       "long,config/train_small.py,1,--max_iters=100000000,\n")
    assert opsrg("sweep-start").returncode == 0
    log = project / "pod" / "outputs" / "_tasks" / "long" / "stdout.log"
    for _ in range(200):  # until it trains
        if log.is_file() and "iter 0" in log.read_text():
            break
        time.sleep(0.1)
    r = opsrg("sweep-cancel")
    assert r.returncode == 0 and "cancelled: long" in r.stdout, r.stdout + r.stderr
    assert _states(opsrg)["long"]["state"] == "cancelled"
    assert json.loads(opsrg("fsm-status", "--json").stdout)["state"] == "SWEEP_FAILED"
    rec = json.loads((project / "pod" / "outputs" / "_tasks" / "long" / "status.json").read_text())
    assert rec["state"] in ("failed", "timed_out") and rec["ended_at"]  # its process is gone, not left running


def test_a_bad_row_is_refused_here_before_anything_reaches_the_pod(project):
    opsrg = _runner(project)
    (project / "sweep.csv").write_text("run_id,config,seed,overrides,notes\nok,config/nope.py,1,,\n")
    r = opsrg("sweep-start", "--dry-run")
    assert r.returncode == 2 and "sweep.csv:2" in r.stderr and "config file not found" in r.stderr, r.stderr
    assert not (project / "pod" / "outputs" / "_control" / "project").exists()
