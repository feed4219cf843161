"""Time to validate and submit a 500-row sweep as one Slurm array submission (target < 5 s), or
with ``--mixed`` rows whose requests differ (cpus, mem: one array per distinct request).

    SLURM_CONF=... python bench/bench_sweep.py [--rows 500] [--mixed] [--keep]

Needs a reachable Slurm (e.g. scripts/slurm-local-up.sh). Writes a throw-away project in a
temporary folder; the submitted array is cancelled at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--keep", action="store_true", help="keep the project folder and the jobs")
    ap.add_argument("--mixed", action="store_true", help="rows ask for 1 or 2 cpus and 64, 128 or 192M (6 arrays)")
    ap.add_argument("--target", type=float, default=5.0, help="seconds the whole submission may take")
    args = ap.parse_args()
    if not shutil.which("sbatch") or not os.environ.get("SLURM_CONF"):
        print("needs sbatch and SLURM_CONF (bash scripts/slurm-local-up.sh; source $SLURM_LOCAL_DIR/env.sh)")
        return 2
    from opsrg.context import Context
    from opsrg.core.fsm import State
    from opsrg.sweeps import commands
    from opsrg.sweeps.rows import parse_file
    from opsrg.sweeps.slurm.cli import Slurm

    root = Path(tempfile.mkdtemp(prefix="opsrg-bench-sweep-"))
    (root / "workflow.env").write_text(f"POD_PROVIDER=local\nOPS_REMOTE_OUTPUTS_DIR={root}/outputs\n"
                                       "SWEEP_BACKEND=slurm\nSLURM_MEM=\n")
    csv = root / "big.csv"
    def req(i: int) -> str:
        return f" cpus={1 + i % 2} mem={64 * (1 + i % 3)}M" if args.mixed else ""

    csv.write_text("run_id,config,seed,overrides,notes\n" + "".join(
        f"r{i:04d},sweeps/configs/shell.toml,{i},\"command='true'{req(i)}\",row {i}\n" for i in range(args.rows)))
    ctx = Context.load(str(root / "workflow.env"))
    ctx.store.set(State.CHECKED_OUT, "bench")
    os.sync()  # what earlier runs left to flush (their folders removed) is not this launch's cost
    t0 = time.perf_counter()
    rows = parse_file(csv, [REPO])
    t_validate = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = commands.start(ctx, str(csv), "slurm")
    t_start = time.perf_counter() - t1
    total = time.perf_counter() - t0
    result = {"rows": len(rows), "sbatch_calls": len(out["jobs"]), "validate_s": round(t_validate, 3),
              "start_s": round(t_start, 3), "total_s": round(total, 3), "target_s": args.target,
              "max_array_size": Slurm(ctx.host).max_array_size()}
    print(json.dumps(result, indent=2))
    if not args.keep:
        Slurm(ctx.host).cancel(out["jobs"].values())
        shutil.rmtree(root, ignore_errors=True)
    return 0 if total < args.target else 1


if __name__ == "__main__":
    sys.exit(main())
