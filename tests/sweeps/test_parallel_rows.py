"""Rows side by side on one pod (real tmux, the installed `opsrg` in a project of the user's own):
SWEEP_MAX_PARALLEL rows at once on disjoint GPU sets of POD_GPUS, `after=` kept, a row asking
too many GPUs refused with its line, W&B variables per run, and a killed driver's running rows
adopted by the resumed one instead of started twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import retry_until

pytestmark = pytest.mark.tmux
BIN = Path(sys.executable).parent

PROBE = """import json, os, sys, time
out = os.environ["OPSRG_RUN_DIR"]
with open(os.path.join(os.environ["PROBE_LOG"]), "a") as fh:
    fh.write(os.path.basename(out) + "\\n")
seen = {"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpus": sys.argv[1], "start": time.time(),
        "wandb": {k: v for k, v in os.environ.items() if k.startswith("WANDB_") and k != "WANDB_API_KEY"},
        "key_len": len(os.environ.get("WANDB_API_KEY", ""))}
time.sleep(float(sys.argv[2]))
fail = os.path.join(os.environ["PROBE_FAIL_DIR"], os.path.basename(out))
if os.path.exists(fail):
    os.remove(fail)
    sys.exit(4)
seen["end"] = time.time()
json.dump(seen, open(os.path.join(out, "seen.json"), "w"))
"""
KEY = "wandb-k3y-never-in-a-file"


def _project(root: Path, tmux_socket: str, **settings: str) -> Path:
    root.mkdir(parents=True)
    (root / "probe.py").write_text(PROBE)
    (root / "cfg.txt").write_text("")
    (root / "fail").mkdir()
    values = {"POD_PROVIDER": "local", "OPS_TMUX_SOCKET": tmux_socket, "WF_TMUX_SESSION": "t",
              "SWEEP_TMUX_SESSION": "ts", "TASK_KILL_GRACE_SECS": "2", "OPS_REMOTE_REPO": str(root),
              "SWEEP_CSV": "sweep.csv", "WF_FSM_ENFORCE": "0", "RUN_ENV_PASS": "PROBE_*",
              "RUN_COMMAND": "python probe.py {gpus} {overrides}", **settings}
    (root / "workflow.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "--allow-empty", "-m", "i"],
                   cwd=root, check=True)
    return root


def _runner(root: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPSRG_ENV_FILE", "CUDA_VISIBLE_DEVICES")}
    env.update(PATH=f"{BIN}:{env['PATH']}", PROBE_LOG=str(root / "starts.log"), PROBE_FAIL_DIR=str(root / "fail"))

    def opsrg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "opsrg"), *args], cwd=root, capture_output=True, text=True,
                              timeout=timeout, env=env)

    return opsrg


def _seen(root: Path, rid: str) -> dict:
    return json.loads((root / ".opsrg" / "pod" / "outputs" / rid / "seen.json").read_text())


def test_rows_run_side_by_side_on_disjoint_gpus_and_after_waits(tmp_path, tmux_socket):
    root = _project(tmp_path / "p", tmux_socket, SWEEP_MAX_PARALLEL="3", POD_GPUS="0,1,2,3")
    (root / "sweep.csv").write_text(
        "run_id,config,seed,overrides,notes\n"
        "a,cfg.txt,1,1.5,\n"
        "b,cfg.txt,1,1.5,\n"
        'wide,cfg.txt,1,"gpus=2 1.5",two GPUs\n'
        "c,cfg.txt,1,1.5,\n"
        'after-a,cfg.txt,1,"after=a 0.1",waits for a\n'
        "d,cfg.txt,1,0.1,\n")
    opsrg = _runner(root)
    r = opsrg("sweep-start")
    assert r.returncode == 0, r.stdout + r.stderr
    r = opsrg("sweep-monitor", "--wait", "--timeout-secs", "90")
    assert r.returncode == 0, r.stdout + r.stderr
    seen = {rid: _seen(root, rid) for rid in ("a", "b", "wide", "c", "after-a", "d")}
    assert len(seen["wide"]["cvd"].split(",")) == 2 and seen["wide"]["gpus"] == "2"
    assert all(len(seen[r]["cvd"].split(",")) == 1 and seen[r]["gpus"] == "1" for r in ("a", "b", "c", "d"))
    spans = sorted((s["start"], s["end"], rid) for rid, s in seen.items())
    for t, _, rid in spans:  # at every start: at most 3 rows running, and never one GPU twice
        live = [x for x in spans if x[0] <= t < x[1]]
        assert len(live) <= 3, live
        ids = [g for x in live for g in seen[x[2]]["cvd"].split(",")]
        assert len(ids) == len(set(ids)), (rid, live)
    assert max(len([x for x in spans if x[0] <= t < x[1]]) for t, _, _ in spans) >= 2  # really side by side
    assert seen["after-a"]["start"] >= seen["a"]["end"]
    manifest = json.loads((root / ".opsrg" / "pod" / "outputs" / "wide" / "run_manifest.json").read_text())
    assert manifest["gpus"] == seen["wide"]["cvd"].split(",")


def test_a_row_asking_more_gpus_than_the_pod_has_is_refused_with_its_line(tmp_path, tmux_socket):
    root = _project(tmp_path / "p", tmux_socket, POD_GPUS="0,1")
    (root / "sweep.csv").write_text("run_id,config,seed,overrides,notes\nok,cfg.txt,1,0,\nbig,cfg.txt,1,gpus=3 0,\n")
    opsrg = _runner(root)
    r = opsrg("bootstrap")  # says which GPUs sweeps will share out
    assert r.returncode == 0 and "GPUs 0,1 (POD_GPUS)" in r.stdout, r.stdout + r.stderr
    r = opsrg("sweep-start", "--dry-run")
    assert r.returncode == 2 and "sweep.csv:3: gpus: row big asks for 3 GPUs; the pod has 2 (0,1)" in r.stderr, \
        r.stderr
    assert not (root / ".opsrg" / "pod" / "outputs" / "_manifests").exists()
    (root / "sweep.csv").write_text("run_id,config,seed,overrides,notes\nok,cfg.txt,1,cpus=2 0,\n")
    r = opsrg("sweep-start", "--dry-run")  # a Slurm request on tmux: refused, not ignored
    assert r.returncode == 2 and "sweep.csv:2: cpus" in r.stderr and "--backend slurm" in r.stderr, r.stderr
    r = _runner(_project(tmp_path / "q", tmux_socket, POD_GPUS="0,0"))("config-show")
    assert r.returncode == 2 and "POD_GPUS" in r.stderr and "named twice" in r.stderr, r.stderr


def test_wandb_variables_per_run_stay_across_resume_and_the_key_in_no_file(tmp_path, tmux_socket):
    root = _project(tmp_path / "p", tmux_socket, SWEEP_WANDB="1", WANDB_API_KEY=KEY)
    (root / "sweep.csv").write_text("run_id,config,seed,overrides,notes\n"
                                    'r1,cfg.txt,1,0,"baseline, small"\nr2,cfg.txt,2,0,\n')
    (root / "fail" / "r1").write_text("")  # r1's first attempt fails
    opsrg = _runner(root)
    assert opsrg("sweep-start").returncode == 0
    assert opsrg("sweep-monitor", "--wait", "--timeout-secs", "60").returncode == 1
    campaign = json.loads(opsrg("sweep-status", "--json").stdout)["campaign"]
    first = _seen(root, "r2")["wandb"]
    assert first["WANDB_RUN_GROUP"] == campaign and first["WANDB_NAME"] == "r2"
    assert first["WANDB_RESUME"] == "allow" and first["WANDB_DIR"] == str(root / ".opsrg" / "pod" / "outputs" / "r2")
    r = opsrg("sweep-start", "--resume")
    assert r.returncode == 0 and "resumed: r1" in r.stdout, r.stdout + r.stderr
    assert opsrg("sweep-monitor", "--wait", "--timeout-secs", "60").returncode == 0
    again = _seen(root, "r1")
    assert again["wandb"]["WANDB_RUN_ID"] == f"{campaign}-r1" and again["wandb"]["WANDB_TAGS"] == "baseline,small"
    assert again["key_len"] == len(KEY)
    out = root / ".opsrg" / "pod" / "outputs"
    leaked = [str(p) for p in out.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_a_killed_driver_s_running_rows_are_adopted_not_started_twice(tmp_path, tmux_socket):
    root = _project(tmp_path / "p", tmux_socket, SWEEP_MAX_PARALLEL="2", POD_GPUS="0,1")
    (root / "sweep.csv").write_text("run_id,config,seed,overrides,notes\n"
                                    "long1,cfg.txt,1,4,\nlong2,cfg.txt,1,4,\nlater,cfg.txt,1,0.1,\n")
    opsrg = _runner(root)
    assert opsrg("sweep-start").returncode == 0
    out = root / ".opsrg" / "pod" / "outputs"
    retry_until(lambda: (root / "starts.log").is_file() and len((root / "starts.log").read_text().split()) == 2,
                20, what="two rows running")
    driver = next(p for p in (out / "_tasks").iterdir() if p.name.startswith("sweep-driver."))
    os.killpg(json.loads((driver / "status.json").read_text())["pgid"], signal.SIGKILL)  # the driver, not its rows
    retry_until(lambda: json.loads((driver / "status.json").read_text())["state"] != "running", 20,
                what="the driver recorded ended")
    r = opsrg("sweep-start", "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert opsrg("sweep-monitor", "--wait", "--timeout-secs", "60").returncode == 0
    starts = (root / "starts.log").read_text().split()
    assert sorted(starts) == ["later", "long1", "long2"], starts  # each row started once
    log = (out / "_tasks" / driver.name / "stdout.log").read_text()
    assert "long1: adopted" in log and "long2: adopted" in log, log
    held = {json.loads((out / r / "run_manifest.json").read_text())["gpus"][0] for r in ("long1", "long2")}
    assert held == {"0", "1"}


def test_a_row_over_its_time_limit_records_the_timeout_and_the_signal_at_run_level(tmp_path, tmux_socket):
    root = _project(tmp_path / "p", tmux_socket, TASK_KILL_GRACE_SECS="1")
    (root / "sweep.csv").write_text("run_id,config,seed,overrides,notes\nslow,cfg.txt,1,timeout_secs=1 30,\n"
                                    "fine,cfg.txt,2,0,\n")
    opsrg = _runner(root)
    assert opsrg("sweep-start").returncode == 0
    assert opsrg("sweep-monitor", "--wait", "--timeout-secs", "60").returncode == 1
    runs = {r["run_id"]: r for r in json.loads(opsrg("sweep-status", "--json").stdout)["runs"]}
    slow = runs["slow"]
    assert slow["timed_out"] is True and slow["exit_code"] is None and slow["signal"] in (9, 15), slow
    assert "timed_out" in slow["reason"] and runs["fine"]["timed_out"] is False and runs["fine"]["exit_code"] == 0
    table = opsrg("sweep-status").stdout
    assert "timeout" in table.splitlines()[[i for i, ln in enumerate(table.splitlines()) if "slow" in ln][0]]
