"""`make demo`: the whole workflow on this machine, as a user would type it.

pod-up, bootstrap, checkout, a sweep of RG runs (`sweeps/demo.csv`) with a live view, its
status, fetch-run of every run, plots, and a report of the physics against RG_SPEC; then the
example trainer's sweep as a user's own project, with the installed `opsrg` command. Each step
is a real `inv` command, printed before it runs; steps already done (by the FSM state, the
sweep's manifests, a run's FETCHED marker) are skipped, so a second run finishes fast.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INV = str(Path(sys.executable).parent / "inv")
# RG_SPEC 3.2: std(z) after step k from uniform G (N >= 2e8), and the converged exponent.
REF_STD = [2.0335, 2.1172, 2.1499, 2.1627, 2.1679, 2.1700, 2.1708, 2.1711, 2.1712, 2.1712]
REF_SLOPE = [1.3802, 1.864, 2.510, 3.377, 4.546, 6.118, 8.237, 11.09, 14.92, 20.09]
REF_NU = 2.332


def say(msg: str) -> None:
    print(f"\n\033[1m== {msg}\033[0m" if sys.stdout.isatty() else f"\n== {msg}", flush=True)


def inv(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    if not quiet:
        print(f"$ inv {shlex.join(args)}", flush=True)
    r = subprocess.run([INV, *args], cwd=REPO, text=True, capture_output=quiet)
    if check and r.returncode != 0:
        if quiet:
            sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"\ndemo stopped: `inv {shlex.join(args)}` exited {r.returncode}. Fix the cause and run "
                         "`make demo` again: completed steps are reused.")
    return r


def inv_json(*args: str) -> object:
    return json.loads(inv(*args, "--json", quiet=True).stdout)


def settings() -> dict[str, str]:
    data = inv_json("config-show")["settings"]  # type: ignore[index]
    return {k: v["value"] for k, v in data.items()}


def local(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO / p


def state() -> str:
    return inv_json("fsm-status")["state"]  # type: ignore[index]


def sweep_done() -> bool:
    r = subprocess.run([INV, "sweep-status", "--json"], cwd=REPO, text=True, capture_output=True)
    if r.returncode not in (0, 1) or not r.stdout.strip():
        return False
    status = json.loads(r.stdout)
    return bool(status.get("done")) and not status.get("failed")


def run_sweep() -> None:
    st = state()
    if st == "SWEEP_COMPLETED" and sweep_done():
        print("(the demo sweep already completed: reusing its runs)")
        return
    if st == "SWEEP_FAILED":
        inv("sweep-start", "--resume")
    elif st in ("CHECKED_OUT", "SWEEP_COMPLETED"):
        inv("sweep-start")
    say("live progress (Ctrl-C stops watching; the sweep goes on)")
    inv("sweep-status", "--watch", check=False)
    inv("sweep-monitor", "--wait")


def fetch_all(artifacts: Path) -> list[str]:
    runs = [r["run_id"] for r in inv_json("sweep-status")["runs"]]  # type: ignore[index]
    for run_id in runs:
        if (artifacts / run_id / "FETCHED.json").exists():
            print(f"({run_id} already fetched and verified)")
            continue
        inv("fetch-run", run_id)
    return runs


def plots(artifacts: Path, runs: list[str]) -> list[Path]:
    out = []
    for run_id in runs:
        run_dir = artifacts / run_id
        r = subprocess.run([sys.executable, "-m", "opsrg.rg", "plot", str(run_dir)], text=True, capture_output=True)
        if r.returncode != 0:
            print(f"(plot of {run_id} failed: {r.stderr.strip()})")
            continue
        out += sorted(run_dir.glob("*.png"))
    return out


def report_fp(artifacts: Path, runs: list[str]) -> None:
    per_run = {}
    for run_id in runs:
        p = artifacts / run_id / "summary.json"
        if p.exists():
            s = json.loads(p.read_text())
            if s.get("mode") == "fp" and s.get("ok"):
                per_run[run_id] = {row["step"]: row for row in s["per_step"]}
    if not per_run:
        print("no FP run to report")
        return
    steps = sorted({k for rows in per_run.values() for k in rows})
    n = json.loads((artifacts / next(iter(per_run)) / "summary.json").read_text()).get("config", {}).get("samples", "?")
    print(f"{len(per_run)} seeds ({', '.join(per_run)}), {n} samples per step; RG_SPEC from N >= 2e8")
    print(f"{'step':>4}  {'std(z)':>8}  {'± seeds':>8}  {'RG_SPEC':>8}  {'diff':>8}  {'var(G)':>7}")
    for k in steps:
        stds = [rows[k]["std_z"] for rows in per_run.values() if k in rows]
        vg = [rows[k].get("var_g", float("nan")) for rows in per_run.values() if k in rows]
        mean = sum(stds) / len(stds)
        spread = (sum((x - mean) ** 2 for x in stds) / max(1, len(stds) - 1)) ** 0.5 / math.sqrt(len(stds))
        ref = REF_STD[min(k, len(REF_STD)) - 1]
        print(f"{k:>4}  {mean:>8.4f}  {spread:>8.4f}  {ref:>8.4f}  {mean - ref:>+8.4f}  {sum(vg) / len(vg):>7.4f}")
    print("converged (RG_SPEC): std(z) = 2.1712 ± 0.0003, var(G) = 0.1008")


def report_exp(artifacts: Path, runs: list[str]) -> None:
    for run_id in runs:
        p = artifacts / run_id / "nu.json"
        if not p.exists():
            continue
        nu = json.loads(p.read_text())
        for shift, res in nu["by_shift"].items():
            mean = res["mean"]
            err = res.get("nu_err")
            print(f"{run_id}: z0 = ±{shift}, {nu.get('samples')} samples per shift, {nu.get('steps')} steps, "
                  f"common random numbers for ±z0")
            print(f"{'n':>3}  {'slope_n':>8}  {'RG_SPEC':>8}  {'nu_n mean':>9}  {'nu_n median':>11}")
            for i, s in enumerate(mean["slope_n"]):
                med = res["median"]["cumulative_nu_n"][i]
                print(f"{i + 1:>3}  {s:>8.4f}  {REF_SLOPE[i]:>8.4f}  {mean['cumulative_nu_n'][i]:>9.3f}  {med:>11.3f}")
            print(f"lambda = {mean['fit_lambda']:.4f} (log-linear fit over n = {mean['fit_n'][0]}..{mean['fit_n'][-1]}),"
                  f" nu = {res['nu']:.4f}" + (f" ± {err:.4f} (bootstrap over shards)" if err else "") + f"  [{res['nu_from']}]")
            print(f"RG_SPEC: lambda = 1.3461 ± 0.0002, nu = {REF_NU} ± 0.003 (ratio estimator, N = 5e7);"
                  " the cumulative nu_n converges only as 1/n")


OPSRG = str(Path(sys.executable).parent / "opsrg")


def own_project() -> None:
    """The tutorial's project (examples/trainer) as a user's own: a git repository of its own,
    its sweep run with the installed `opsrg` command, then the table of its runs and its report."""
    import shutil

    root = REPO / ".opsrg" / "demo-trainer"
    if not (root / ".git").is_dir():
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(REPO / "examples" / "trainer", root)
        with (root / "workflow.env").open("a") as fh:
            fh.write("OPS_TMUX_SOCKET=opsrg-demo-trainer\n")
        for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                    ["-c", "user.name=opsrg demo", "-c", "user.email=demo@localhost", "commit", "-qm", "my trainer"]):
            subprocess.run(["git", *cmd], cwd=root, check=True)
    env = {k: v for k, v in os.environ.items() if k != "OPSRG_ENV_FILE"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # `python` with numpy, as in a venv
    print(f"(in {root}: a copy of examples/trainer, a git repository of its own)")

    def opsrg(*args: str, check: bool = True) -> int:
        print(f"$ opsrg {shlex.join(args)}", flush=True)
        rc = subprocess.run([OPSRG, *args], cwd=root, env=env).returncode
        if check and rc != 0:
            raise SystemExit(f"\ndemo stopped: `opsrg {shlex.join(args)}` exited {rc} in {root}.")
        return rc

    st = json.loads(subprocess.run([OPSRG, "fsm-status", "--json"], cwd=root, env=env, capture_output=True,
                                   text=True, check=True).stdout)["state"]
    for step, before in (("pod-up", "INIT"), ("bootstrap", "POD_READY"), ("checkout", "BOOTSTRAPPED")):
        if st == before:
            opsrg(step)
            st = {"INIT": "POD_READY", "POD_READY": "BOOTSTRAPPED", "BOOTSTRAPPED": "CHECKED_OUT"}[before]
    opsrg("sweep-start")
    opsrg("sweep-monitor", "--wait", "--timeout-secs", "300", check=False)  # lr10-s1 diverges, on purpose
    opsrg("sweep-status", check=False)
    opsrg("sweep-report", check=False)  # runs ranked by SWEEP_METRICS=loss, and the PNG of loss per parameter


def main() -> int:
    os.chdir(REPO)
    t0 = time.monotonic()
    cfg = settings()
    artifacts = local(cfg["LOCAL_ARTIFACTS_DIR"])
    say("1. workflow state")
    inv("fsm-status")
    if state() == "INIT":
        say("2. bring up the pod (local provider: a folder on this machine)")
        inv("pod-up")
    if state() == "POD_READY":
        say("3. bootstrap: check the pod's prerequisites")
        inv("bootstrap")
    if state() == "BOOTSTRAPPED":
        say("4. checkout: clone the code onto the pod and build its venv")
        inv("checkout")
    say(f"5. the sweep {cfg['SWEEP_CSV']} as tracked tasks ({cfg['SWEEP_BACKEND']})")
    run_sweep()
    inv("sweep-status")
    say(f"6. fetch every run to {artifacts} (verified by checksums)")
    runs = fetch_all(artifacts)
    say("7. plots")
    for png in plots(artifacts, runs):
        print(png)
    say("8. fixed point: width of Q(z) per RG step")
    report_fp(artifacts, runs)
    say("9. critical exponent")
    report_exp(artifacts, runs)
    say("10. your own project: the example trainer's sweep (examples/trainer/README.md)")
    own_project()
    say(f"done in {time.monotonic() - t0:.0f}s")
    print(f"artifacts: {artifacts}\nstate:     inv fsm-status\nruns:      inv sweep-status   inv artifacts-ls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
