"""`make demo`: the whole workflow on this machine, as a user would type it.

Each step is a real `inv` command, printed before it runs. Steps already done (by the FSM
state or a task's record) are skipped, so a second run reuses what is complete.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).parent / "inv")
# RG_SPEC 3.2: std(z) after step k from uniform G (N >= 2e8).
REF_STD = [2.0335, 2.1172, 2.1499, 2.1627, 2.1679, 2.1700, 2.1708, 2.1711, 2.1712, 2.1712]


def say(msg: str) -> None:
    print(f"\n\033[1m== {msg}\033[0m" if sys.stdout.isatty() else f"\n== {msg}", flush=True)


def inv(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    print(f"$ inv {shlex.join(args)}", flush=True)
    r = subprocess.run([INV, *args], cwd=REPO, text=True, capture_output=capture)
    if check and r.returncode != 0:
        if capture:
            sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"demo stopped: `inv {shlex.join(args)}` exited {r.returncode}; "
                         f"fix the cause and run `make demo` again (completed steps are reused)")
    return r


def state() -> str:
    r = subprocess.run([INV, "fsm-status", "--json"], cwd=REPO, text=True, capture_output=True, check=True)
    return json.loads(r.stdout)["state"]


def task_state(task_id: str) -> str | None:
    r = subprocess.run([INV, "task-status", "--id", task_id, "--json"], cwd=REPO, text=True, capture_output=True)
    return json.loads(r.stdout)["state"] if r.returncode == 0 else None


def outputs_dir() -> Path:
    r = subprocess.run([INV, "config-show", "--json"], cwd=REPO, text=True, capture_output=True, check=True)
    out = json.loads(r.stdout)["settings"]["OPS_REMOTE_OUTPUTS_DIR"]["value"]
    p = Path(out)
    return p if p.is_absolute() else REPO / p


def run_fp_task(task_id: str, run_dir: Path, steps: int, samples: int, seed: int) -> None:
    st = task_state(task_id)
    if st == "success" and (run_dir / "summary.json").exists():
        print(f"(task {task_id} already succeeded: reusing {run_dir})")
        return
    cmd = shlex.join([sys.executable, "-m", "opsrg.rg", "fp", "--steps", str(steps), "--samples", str(samples),
                      "--seed", str(seed), "--out", str(run_dir)])
    args = ["task-run", "--id", task_id, "--cmd", cmd, "--timeout-secs", "900", "--cwd", str(REPO)]
    if st is not None:
        args.append("--replace")
    inv(*args)
    t0 = time.monotonic()
    inv("task-wait", "--id", task_id)
    print(f"({task_id} finished in {time.monotonic() - t0:.1f}s)")


def report_fp(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"{'step':>4}  {'std(z)':>8}  {'RG_SPEC':>8}  {'diff':>8}  {'var(G)':>7}  backend")
    for row in summary["per_step"]:
        k, std = row["step"], row["std_z"]
        ref = REF_STD[k - 1] if k <= len(REF_STD) else REF_STD[-1]
        be = row.get("backend")
        be = ",".join(be) if isinstance(be, list) else be
        print(f"{k:>4}  {std:>8.4f}  {ref:>8.4f}  {std - ref:>+8.4f}  {row.get('var_g', float('nan')):>7.4f}  {be}")


def main() -> int:
    os.chdir(REPO)
    say("1. workflow state")
    inv("fsm-status")
    if state() == "INIT":
        say("2. bring up the pod (local provider: a folder on this machine)")
        inv("pod-up")
    if state() == "POD_READY":
        say("3. bootstrap: check the pod's prerequisites")
        inv("bootstrap")
    say("4. an RG fixed-point run as a tracked task (tmux, detached; survives this client)")
    run_dir = outputs_dir() / "demo-fp"
    run_fp_task("demo-fp", run_dir, steps=4, samples=200_000, seed=1)
    inv("task-list")
    say("5. fixed-point widths against the reference (small N: expect agreement to ~0.01)")
    report_fp(run_dir)
    say("done")
    print(f"outputs: {run_dir}\nlogs:    inv task-logs --id demo-fp\nstate:   inv fsm-status")
    return 0


if __name__ == "__main__":
    sys.exit(main())
