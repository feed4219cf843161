"""Slurm sweeps against the scheduler's own speed, on a local cluster (scripts/slurm-local-up.sh).

    SLURM_CONF=... python bench/bench_slurm.py [--rows 50,200] [--parallelism 2] [--no-ends]

For each N: the plain-sbatch floor (one ``sbatch --array`` of ``true``, until squeue is empty),
then opsrg (N shell rows of ``true``: ``sweep-start``, then ``sweep-monitor --wait``), as the ratio
of the two walls and opsrg's submit wall. Then the delay from Slurm's final state of an element
(sacct's End) to opsrg's record of it (the run manifest's completed_at) for a COMPLETED, a
FAILED, a TIMEOUT and an externally scancel'ed CANCELLED row, and a COMPLETED one at 100 s (when the
monitor's own polls have backed off to 30 s), with a monitor waiting throughout.
A throw-away project per measurement; jobs are cancelled at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HEAD = "run_id,config,seed,overrides,notes\n"
SHELL = str(REPO / "sweeps" / "configs" / "shell.toml")


def _project(parallelism: int, rows: str) -> tuple[Path, dict[str, str]]:
    root = Path(tempfile.mkdtemp(prefix="opsrg-bench-slurm-"))
    (root / "workflow.env").write_text(
        f"POD_PROVIDER=local\nOPS_REMOTE_OUTPUTS_DIR={root}/outputs\nSWEEP_BACKEND=slurm\nSLURM_MEM=\n"
        f"SLURM_ARRAY_PARALLELISM={parallelism}\nOPS_TMUX_SOCKET=opsrg-bench-slurm-{os.getpid()}\n"
        "WF_FSM_ENFORCE=0\nSWEEP_CSV=s.csv\n")
    (root / "s.csv").write_text(HEAD + rows)
    env = {**os.environ, "OPSRG_ENV_FILE": str(root / "workflow.env")}
    return root, env


def _opsrg(env: dict[str, str], *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "opsrg"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def floor(n: int, parallelism: int) -> float:
    """The scheduler alone: one array of ``true``, submitted and waited on with squeue."""
    d = Path(tempfile.mkdtemp(prefix="opsrg-bench-floor-"))
    t0 = time.perf_counter()
    jid = subprocess.run(["sbatch", "--parsable", f"--array=0-{n - 1}%{parallelism}", "--time=1",
                          f"--output={d}/%a.log", "--wrap", "true"], capture_output=True, text=True,
                         check=True).stdout.strip().split(";")[0]
    while subprocess.run(["squeue", "-h", "-j", jid], capture_output=True, text=True).stdout.strip():
        time.sleep(0.2)
    shutil.rmtree(d, ignore_errors=True)
    return time.perf_counter() - t0


def throughput(n: int, parallelism: int) -> dict:
    root, env = _project(parallelism, "".join(f"r{i:04d},{SHELL},{i},\"command='true'\",\n" for i in range(n)))
    try:
        t0 = time.perf_counter()
        r = _opsrg(env, "sweep-start")
        submit = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr
        r = _opsrg(env, "sweep-monitor", "--wait")
        total = time.perf_counter() - t0
        assert r.returncode == 0, r.stdout + r.stderr
        return {"submit_s": round(submit, 2), "total_s": round(total, 1)}
    finally:
        _opsrg(env, "sweep-cancel")
        shutil.rmtree(root, ignore_errors=True)


def ends(parallelism: int) -> dict:
    """Slurm's final state of each element -> opsrg's record of it, in seconds."""
    from opsrg.core.clock import parse_iso

    rows = (f"ok,{SHELL},1,\"command='sleep 5'\",\nfail,{SHELL},2,\"command='sleep 5; exit 3'\",\n"
            f"slow,{SHELL},3,\"command='sleep 300' timeout_secs=60\",\ncancel,{SHELL},4,\"command='sleep 300'\",\n"
            f"late,{SHELL},5,\"command='sleep 100'\",\n")  # ends when the monitor's polls are 30 s apart
    root, env = _project(max(parallelism, 5), rows)
    try:
        assert _opsrg(env, "sweep-start").returncode == 0
        monitor = subprocess.Popen([str(BIN / "opsrg"), "sweep-monitor", "--wait"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = root / "outputs"

        def manifest(rid: str) -> dict:
            return json.loads((out / rid / "run_manifest.json").read_text())

        while not manifest("cancel").get("job_ids"):
            time.sleep(0.2)
        time.sleep(8)
        subprocess.run(["scancel", manifest("cancel")["job_ids"][0]], check=True)  # as a user or admin would
        monitor.wait(timeout=600)
        delays = {}
        for rid in ("ok", "fail", "slow", "cancel", "late"):
            m = manifest(rid)
            job = m["job_ids"][0]
            end = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "-o", "End,State"], capture_output=True,
                                 text=True).stdout.split("\n")[0].split("|")
            slurm_end = datetime.fromisoformat(end[0]).astimezone().timestamp()
            delays[rid] = {"slurm": end[1], "opsrg": m["state"], "delay_s": round(parse_iso(m["completed_at"]) - slurm_end, 1)}
        return delays
    finally:
        _opsrg(env, "sweep-cancel")
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="50,200")
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--no-ends", action="store_true", help="skip the end-report delays (TIMEOUT takes 1-2 min)")
    args = ap.parse_args()
    if not shutil.which("sbatch") or not os.environ.get("SLURM_CONF"):
        print("needs sbatch and SLURM_CONF (bash scripts/slurm-local-up.sh; source $SLURM_LOCAL_DIR/env.sh)")
        return 2
    result: dict = {"parallelism": args.parallelism, "throughput": {}}
    for n in (int(x) for x in args.rows.split(",")):
        base = floor(n, args.parallelism)
        ours = throughput(n, args.parallelism)
        result["throughput"][n] = {"floor_s": round(base, 1), **ours, "x_floor": round(ours["total_s"] / base, 2)}
        print(json.dumps({n: result["throughput"][n]}), flush=True)
    if not args.no_ends:
        result["ends"] = ends(args.parallelism)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
