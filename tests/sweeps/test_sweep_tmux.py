"""Sweeps on the tmux backend, end to end with real tmux and the RG engine (tiny sizes)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support import REPO, inv

pytestmark = pytest.mark.tmux
HEAD = "run_id,config,seed,overrides,notes\n"
FP = "sweeps/configs/fp_tiny.toml"
EXP = "sweeps/configs/exp_small.toml"
SH = "sweeps/configs/shell.toml"
TINY_EXP = '"fp_run=a steps=1 samples=2000 shards=2 backend=numpy"'


def checked_out(project: Path) -> None:
    assert inv("fsm-reset", "CHECKED_OUT").returncode == 0


def write_csv(project: Path, text: str, name: str = "s.csv") -> str:
    p = project / name
    p.write_text(HEAD + text)
    return str(p)


def status(extra=()) -> dict:
    r = inv("sweep-status", "--json", *extra)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def by_run(st: dict) -> dict:
    return {r["run_id"]: r for r in st["runs"]}


def wait(timeout: int = 90) -> subprocess.CompletedProcess:
    return inv("sweep-monitor", "--wait", "--timeout-secs", str(timeout), timeout=timeout + 30)


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(root)) + "/"] = ""
    return out


def test_sweep_runs_every_row_failure_does_not_stop_the_rest_then_resume(project):
    checked_out(project)
    flag = project / "flag"
    csv = write_csv(project, f"a,{FP},5,,fixed point\n"
                             f"flaky,{SH},1,\"command='test -f {flag} || exit 4'\",fails until the flag exists\n"
                             f"e,{EXP},6,{TINY_EXP},exponent on a\n")
    r = inv("sweep-start", "--csv", csv, "--json")
    assert r.returncode == 0, r.stderr
    started = json.loads(r.stdout)
    out = project / "outputs"
    assert (out / "_manifests" / "sweep-latest.csv").read_text() == Path(csv).read_text()
    assert (out / "_manifests" / f"sweep-{started['campaign']}.csv").exists()
    r = wait()
    assert r.returncode == 1, r.stdout + r.stderr
    st = by_run(status())
    assert st["a"]["state"] == "completed" and st["a"]["summary_ok"] is True and st["a"]["step"] == "2/2"
    assert st["e"]["state"] == "completed" and st["e"]["summary_ok"] is True
    assert st["flaky"]["state"] == "failed" and st["flaky"]["exit_code"] == 4 and "exit code 4" in st["flaky"]["reason"]
    rec = json.loads((out / "_tasks" / "a" / "status.json").read_text())
    assert rec["runner"] == "tmux" and rec["state"] == "success" and rec["exit_code"] == 0
    man = json.loads((out / "a" / "run_manifest.json").read_text())
    assert man["campaign"] == started["campaign"] and man["completed_at"]
    assert [h["state"] for h in man["history"]] == ["submitted", "running", "synced", "completed"]
    assert json.loads(inv("fsm-status", "--json").stdout)["state"] == "SWEEP_FAILED"
    # resume: only the failed row runs again
    flag.write_text("x")
    r = inv("sweep-start", "--resume", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resumed"] == ["flaky"]
    assert wait().returncode == 0
    st = by_run(status())
    assert all(v["state"] == "completed" for v in st.values())
    assert st["flaky"]["attempt"] == 2 and st["a"]["attempt"] == 1
    assert json.loads(inv("fsm-status", "--json").stdout)["state"] == "SWEEP_COMPLETED"


def test_cancel_one_run_others_continue(project):
    checked_out(project)
    csv = write_csv(project, f"long,{SH},1,\"command='sleep 60'\",\nafter,{SH},2,,\n")
    assert inv("sweep-start", "--csv", csv).returncode == 0
    deadline = time.monotonic() + 20
    while by_run(status())["long"]["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    r = inv("sweep-cancel", "--run", "long")
    assert r.returncode == 0 and "long" in r.stdout
    assert wait(60).returncode == 1
    st = by_run(status())
    assert st["long"]["state"] == "cancelled" and st["after"]["state"] == "completed"
    assert (project / "outputs" / "long").is_dir()  # outputs kept


def test_killed_driver_is_detected_and_resume_reruns_only_what_is_missing(project):
    checked_out(project)
    csv = write_csv(project, f"r1,{SH},1,\"command='sleep 2'\",\nr2,{SH},2,,\n")
    r = inv("sweep-start", "--csv", csv, "--json")
    campaign = json.loads(r.stdout)["campaign"]
    drv = project / "outputs" / "_tasks" / f"sweep-driver.{campaign}" / "status.json"
    deadline = time.monotonic() + 20
    r1 = project / "outputs" / "_tasks" / "r1" / "status.json"

    def r1_running() -> bool:  # its supervisor has started: killing the driver now cannot strand it
        try:
            return json.loads(r1.read_text()).get("state") == "running"
        except (OSError, ValueError):
            return False

    while json.loads(drv.read_text()).get("state") != "running" or not r1_running():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    rec = json.loads(drv.read_text())
    os.killpg(rec["pgid"], signal.SIGKILL)  # the driver process and its supervisor, as a crash would
    os.kill(rec["pid"], signal.SIGKILL)
    time.sleep(3)
    assert wait(60).returncode == 1
    st = by_run(status())
    assert st["r1"]["state"] == "completed"
    assert st["r2"]["state"] == "failed" and "driver" in st["r2"]["reason"]
    r = inv("sweep-start", "--resume", "--json")
    assert json.loads(r.stdout)["resumed"] == ["r2"], r.stdout + r.stderr
    assert wait(60).returncode == 0


def test_dry_run_and_bad_csv_write_nothing(project):
    checked_out(project)
    csv = write_csv(project, f"a,{FP},5,,\ne,{EXP},6,{TINY_EXP},\n")
    assert inv("sweep-start", "--csv", csv).returncode == 0
    assert wait().returncode == 0
    assert inv("fsm-reset", "CHECKED_OUT").returncode == 0
    before = snapshot(project / "outputs")
    r = inv("sweep-start", "--csv", csv, "--dry-run", "--json")
    plan = json.loads(r.stdout)
    assert plan["runs"] == [] and sorted(plan["reused"]) == ["a", "e"], r.stdout + r.stderr  # identical rows
    assert snapshot(project / "outputs") == before
    for rid in ("a", "e"):  # not completed any more: planned again
        (project / "outputs" / rid / "summary.json").unlink()
    before = snapshot(project / "outputs")
    for backend in ("tmux", "slurm"):
        r = inv("sweep-start", "--csv", csv, "--backend", backend, "--dry-run", "--json")
        assert r.returncode == 0, r.stderr
        plan = json.loads(r.stdout)
        assert plan["dry_run"] and plan["runs"] == ["a", "e"]
    # Steps already DONE in the run folders are reused, as the engine itself would.
    assert [j["key"] for j in plan["jobs"]] == ["a.final", "e.final"]
    assert plan["jobs"][1]["script"].startswith("#!/bin/bash\n#SBATCH --job-name=e.final")
    # --force recomputes from nothing (the real start sets the folders aside): every step is planned
    r = inv("sweep-start", "--csv", csv, "--backend", "slurm", "--dry-run", "--force", "--json")
    keys = [j["key"] for j in json.loads(r.stdout)["jobs"]]
    assert keys == ["a.RG1.gen", "a.RG1.merge", "a.RG2.gen", "a.RG2.merge", "e.RG1.gen", "e.RG1.merge"], keys
    assert snapshot(project / "outputs") == before
    bad = write_csv(project, f"a,{FP},x,,\nb;rm,{FP},1,colour=red,\n", "bad.csv")
    r = inv("sweep-start", "--csv", bad)
    assert r.returncode == 2
    assert f"{bad}:2:31: seed:" in r.stderr and f"{bad}:3:1: run_id:" in r.stderr and f"{bad}:3:36: overrides:" in r.stderr
    assert snapshot(project / "outputs") == before


def test_csv_template_refuses_to_overwrite(project):
    target = project / "mine.csv"
    env = {"SWEEP_CSV": str(target)}
    assert inv("sweep-csv-template", env=env).returncode == 0
    assert target.read_text().startswith("run_id,config,seed,overrides,notes")
    r = inv("sweep-csv-template", env=env)
    assert r.returncode == 2 and "not overwriting" in r.stderr


def test_histograms_are_those_of_the_engine_run_directly(project, tmp_path):
    """The sweep adds nothing to the numbers: same seed, same histogram as `python -m opsrg.rg fp`."""
    checked_out(project)
    csv = write_csv(project, f"a,{FP},5,,\n")
    assert inv("sweep-start", "--csv", csv).returncode == 0
    assert wait().returncode == 0
    import sys

    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "opsrg.rg", "fp", "--steps", "2", "--samples", "4000", "--seed", "5",
                    "--out", str(ref), "--bins", "200", "--backend", "numpy", "--shards", "2"], check=True,
                   capture_output=True)
    a = np.load(project / "outputs" / "a" / "sym_z_hist_RG2.npz")
    b = np.load(ref / "sym_z_hist_RG2.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a.files)


# ------------------------------------------------------------------ provenance, identity, local_sync
def test_meta_json_identity_reuse_force_and_refusal(project):
    checked_out(project)
    out = project / "outputs"
    csv = write_csv(project, f"a,{FP},5,,\nsh,{SH},1,\"command='echo hi > hi.txt'\",\n")
    started = json.loads(inv("sweep-start", "--csv", csv, "--json").stdout)
    assert started["runs"] == ["a", "sh"] and started["reused"] == {}
    assert wait().returncode == 0
    meta = json.loads((out / "a" / "meta.json").read_text())
    assert meta["run_id"] == "a" and meta["seed"] == 5 and meta["campaign"] == started["campaign"]
    assert meta["git"]["commit"] and isinstance(meta["git"]["dirty"], bool)
    assert meta["packages"]["numpy"] and meta["python"] and meta["host"] and meta["backend"] == "tmux"
    assert meta["device"].startswith(("cpu:", "gpu:")) and meta["out_mode"] == "direct"
    cfg = Path(meta["config_file"])
    assert cfg.name == "fp_tiny.toml" and meta["config_sha256"] == hashlib.sha256(cfg.read_bytes()).hexdigest()
    assert meta["config"]["samples"] == 4000 and meta["overrides"] == {}
    assert meta["started_at"] <= meta["ended_at"] and meta["ok"] is True and meta["exit_code"] == 0
    man = json.loads((out / "a" / "run_manifest.json").read_text())
    assert man["identity"] == meta["identity"]
    assert json.loads((out / "sh" / "meta.json").read_text())["overrides"] == {"command": "echo hi > hi.txt"}
    # the same rows again: recognised, nothing recomputed or started
    r = inv("sweep-start", "--csv", csv, "--json")
    again = json.loads(r.stdout)
    sh_identity = json.loads((out / "sh" / "meta.json").read_text())["identity"]
    assert again["runs"] == [] and again["reused"] == {"a": meta["identity"], "sh": sh_identity}
    assert not (out / "_tasks" / f"sweep-driver.{again['campaign']}").exists()
    assert wait(10).returncode == 0
    man = json.loads((out / "a" / "run_manifest.json").read_text())
    assert man["state"] == "completed" and man["reused"] and man["identity"] == meta["identity"]
    assert man["campaign"] == again["campaign"] and man["reused_from"] == started["campaign"]
    assert json.loads((out / "a" / "meta.json").read_text()) == meta  # untouched
    # a different row under the same run id is refused, naming the run, both identities and the ways out
    changed = write_csv(project, f"a,{FP},6,,\nsh,{SH},1,\"command='echo hi > hi.txt'\",\n", "changed.csv")
    before = snapshot(out)
    r = inv("sweep-start", "--csv", changed)
    assert r.returncode == 2 and "a:" in r.stderr and meta["identity"] in r.stderr and "--force" in r.stderr
    assert "run_id" in r.stderr and "sh:" not in r.stderr
    assert snapshot(out) == before
    # --force recomputes into the same run ids; the old folders are kept aside
    r = inv("sweep-start", "--csv", changed, "--force", "--json")
    forced = json.loads(r.stdout)
    assert forced["runs"] == ["a", "sh"] and forced["reused"] == {}, r.stderr
    assert wait().returncode == 0
    new = json.loads((out / "a" / "meta.json").read_text())
    assert new["seed"] == 6 and new["identity"] != meta["identity"] and new["campaign"] == forced["campaign"]
    kept = out / "_replaced" / forced["campaign"] / "a"
    assert json.loads((kept / "meta.json").read_text())["identity"] == meta["identity"]
    man = json.loads((out / "a" / "run_manifest.json").read_text())
    assert man["identity"] == new["identity"] and man["attempt"] == 3 and man["previous"][-1]["reused"]


def test_local_sync_outputs_reach_the_durable_folder_and_resume_starts_from_it(project):
    scratch = project / "scratch"
    with (project / "workflow.env").open("a") as f:
        f.write(f"RUN_OUT_MODE=local_sync\nRUN_OUT_LOCAL_ROOT={scratch}\nSYNC_INTERVAL_SECS=1\n")
    checked_out(project)
    out, flag = project / "outputs", project / "flag"
    # `count` survives a lost scratch disk only through the durable folder
    cmd = f"n=$(cat count 2>/dev/null || echo 0); echo $((n + 1)) > count; test -f {flag} || exit 4"
    csv = write_csv(project, f"a,{FP},5,,\nflaky,{SH},1,\"command='{cmd}'\",\ne,{EXP},6,{TINY_EXP},\n")
    assert inv("sweep-start", "--csv", csv).returncode == 0
    assert wait().returncode == 1
    st = by_run(status())
    assert st["a"]["state"] == st["e"]["state"] == "completed" and st["flaky"]["state"] == "failed"
    for rid in ("a", "e"):  # everything the run wrote is in the durable folder, byte for byte
        files = {p.relative_to(scratch / rid) for p in (scratch / rid).rglob("*") if p.is_file()}
        assert {Path("summary.json"), Path("DONE_RG1.json")} <= files
        for rel in files:
            if not rel.name.endswith(".lock"):
                assert (out / rid / rel).read_bytes() == (scratch / rid / rel).read_bytes(), (rid, rel)
        assert not list((out / rid).rglob(".*.tmp"))
        man = json.loads((out / rid / "run_manifest.json").read_text())
        assert [h["state"] for h in man["history"]] == ["submitted", "running", "synced", "completed"]
        assert json.loads((out / rid / "meta.json").read_text())["out_mode"] == "local_sync"
        assert json.loads((out / "_tasks" / f"sync-{rid}" / "status.json").read_text())["state"] == "success"
        assert not (scratch / rid / "run_manifest.json").exists()
    assert (out / "a" / "sym_z_hist_RG2.npz").exists() and (out / "e" / "nu.json").exists()
    assert (out / "flaky" / "count").read_text().strip() == "1"
    # the fast disk is lost; resume redoes the failed row from what the durable folder holds
    import shutil

    shutil.rmtree(scratch)
    flag.write_text("x")
    r = inv("sweep-start", "--resume", "--json")
    assert json.loads(r.stdout)["resumed"] == ["flaky"], r.stdout + r.stderr
    assert wait().returncode == 0
    assert (out / "flaky" / "count").read_text().strip() == "2"
    assert by_run(status())["flaky"]["summary_ok"] is True


def test_sweep_status_watch_refreshes_until_every_run_is_final_then_exits_with_the_verdict(project):
    checked_out(project)
    csv = write_csv(project, f"ok,{SH},1,\"command='sleep 3'\",\nbad,{SH},2,\"command='sleep 1; exit 3'\",\n")
    assert inv("sweep-start", "--csv", csv).returncode == 0
    t0 = time.monotonic()
    r = inv("sweep-status", "--watch", timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.count("campaign ") >= 2 and r.stdout.count("\033[2J") >= 2  # it refreshed the table
    final = r.stdout.rsplit("\033[2J\033[H", 1)[1]  # the last table printed: every run final
    cells = [ln.replace("│", " ").split() for ln in final.splitlines()]
    lines = {c[0]: " ".join(c) for c in cells if c and c[0] in ("ok", "bad")}
    assert "completed" in lines["ok"] and "failed" in lines["bad"] and "exit code 3" in lines["bad"], final
    assert "SWEEP_FAILED" in final and "failed runs: bad" in r.stderr and took < 45
    # every run ok: exit 0
    assert inv("fsm-reset", "CHECKED_OUT").returncode == 0
    csv = write_csv(project, f"ok2,{SH},1,\"command='sleep 2'\",\n", "ok.csv")
    assert inv("sweep-start", "--csv", csv).returncode == 0
    r = inv("sweep-status", "--watch", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    final = r.stdout.rsplit("\033[2J\033[H", 1)[1]
    assert "ok2" in final and "completed" in final and "SWEEP_COMPLETED" in final, final


def test_monitor_wait_gives_up_at_its_timeout_and_status_watch_ends_with_the_sweep(project):
    checked_out(project)
    go = project / "go"
    csv = write_csv(project, f"slow,{SH},1,\"command='while [ ! -f {go} ]; do sleep 0.1; done'\",\n")
    assert inv("sweep-start", "--csv", csv).returncode == 0
    r = inv("sweep-monitor", "--wait", "--timeout-secs", "0.5", timeout=60)
    assert r.returncode == 124 and "still running after 0.5s: slow" in r.stderr, r.stderr
    # redraws every 2 s until the run is final: the first frame, then the run ends, then the last
    watch = subprocess.Popen([str(Path(sys.executable).parent / "inv"), "sweep-status", "--watch"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = watch.stdout.readline()
    assert "campaign " in first and "SWEEP_RUNNING" in first, first
    go.touch()
    rest, err = watch.communicate(timeout=60)
    assert watch.returncode == 0 and "campaign " in rest and "completed" in rest, first + rest + err


def _state() -> str:
    r = inv("fsm-status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["state"]


def test_after_a_failed_campaign_resume_says_the_csv_changed_and_a_new_campaign_needs_no_reset(project):
    """Also: a failure's reason quotes its log, and every attempt's log is kept and fetched."""
    checked_out(project)
    flag = project / "flag"
    ok = f"ok,{SH},1,\"command='echo fine'\",\n"
    flaky = f"flaky,{SH},1,\"command='echo loss is nan at step 7 >&2; test -f {flag} || exit 4'\",\n"
    csv = write_csv(project, ok + flaky)
    assert inv("sweep-start", "--csv", csv).returncode == 0
    assert wait().returncode == 1 and _state() == "SWEEP_FAILED"
    st = by_run(status())["flaky"]
    assert "exit code 4" in st["reason"] and "log ends: loss is nan at step 7" in st["reason"], st
    assert "loss is nan at step 7" in st["log_tail"]
    # RUN_TIMEOUT_SECS is unset: no time limit on a row
    assert json.loads((project / "outputs" / "_tasks" / "ok" / "status.json").read_text())["timeout_secs"] is None

    # edited after the start: --resume runs the campaign's own rows, and says how to run the edit
    write_csv(project, ok + f"flaky,{SH},1,\"command='echo at last'\",\nnew,{SH},3,\"command='true'\",\n")
    r = inv("sweep-start", "--resume")
    assert r.returncode == 0, r.stderr
    assert f"{csv} has changed since campaign" in r.stderr and "added: new" in r.stderr
    assert "changed: flaky" in r.stderr and "start a new campaign with inv sweep-start" in r.stderr
    assert "resumed: flaky" in r.stdout
    assert wait().returncode == 1 and _state() == "SWEEP_FAILED"  # the old command, still failing
    assert "new" not in by_run(status())

    # a new campaign straight from SWEEP_FAILED: the unchanged completed row is reused
    r = inv("sweep-start", "--csv", csv, "--json")
    assert r.returncode == 0, r.stderr
    started = json.loads(r.stdout)
    assert sorted(started["runs"]) == ["flaky", "new"] and list(started["reused"]) == ["ok"]
    assert wait().returncode == 0 and _state() == "SWEEP_COMPLETED"
    assert by_run(status())["flaky"]["log_tail"] == []

    # three attempts of flaky: the latest log at stdout.log, the earlier two beside it, numbered;
    # in the task's folder, in the run's logs/, and at home after fetch-run
    task_dir = project / "outputs" / "_tasks" / "flaky"
    logs = project / "outputs" / "flaky" / "logs"
    for d in (task_dir, logs):
        assert "at last" in (d / "stdout.log").read_text()
        assert "loss is nan" in (d / "stdout.1.log").read_text() and "loss is nan" in (d / "stdout.2.log").read_text()
    r = inv("fetch-run", "flaky")
    assert r.returncode == 0, r.stderr
    home = Path(json.loads(inv("config-show", "--json").stdout)["settings"]["LOCAL_ARTIFACTS_DIR"]["value"])
    home = home if home.is_absolute() else project / home
    assert sorted(p.name for p in (home / "flaky" / "logs").iterdir()) == ["stdout.1.log", "stdout.2.log", "stdout.log"]
