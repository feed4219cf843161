"""Per-row overhead of a tmux sweep: N command rows of `true` on the local pod (target <= 0.3 s a row),
and rows side by side: N rows of `sleep S` at SWEEP_MAX_PARALLEL=P against the ideal N*S/P.

    python bench/bench_rows.py [--rows 40] [--mode command|shell]
    python bench/bench_rows.py --rows 40 --sleep 2 --parallel 4     (target <= 1.15 x the ideal 20 s)

What a row costs besides its program: from the row's task being created to its command starting
(`created_at` -> `started_at`), and from its end to the next row's task (`ended_at` -> the next
`created_at`); and the whole sweep's wall time over N. A throw-away project in a temp folder with
its own tmux socket; nothing is left running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

BIN = Path(sys.executable).parent


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--mode", choices=("command", "shell"), default="command")
    ap.add_argument("--sleep", type=float, default=0.0, help="each row runs `sleep S` instead of `true`")
    ap.add_argument("--parallel", type=int, default=1, help="SWEEP_MAX_PARALLEL")
    args = ap.parse_args()
    program = f"sleep {args.sleep:g}" if args.sleep else "true"
    root = Path(tempfile.mkdtemp(prefix="opsrg-bench-rows-"))
    sock = f"opsrg-bench-{os.getpid()}"
    try:
        (root / "workflow.env").write_text(f"POD_PROVIDER=local\nOPS_TMUX_SOCKET={sock}\nRUN_COMMAND={program}\n"
                                           f"OPS_REMOTE_REPO={root}\nSWEEP_MAX_PARALLEL={args.parallel}\n")
        (root / "cfg.txt").write_text("")
        (root / "shell.toml").write_text(f'mode = "shell"\ncommand = "{program}"\n')
        cfg = "cfg.txt" if args.mode == "command" else "shell.toml"
        (root / "s.csv").write_text("run_id,config,seed,overrides,notes\n"
                                    + "".join(f"r{i:03d},{cfg},{i},,\n" for i in range(args.rows)))
        env = {k: v for k, v in os.environ.items() if k != "OPSRG_ENV_FILE"}

        def opsrg(*a: str) -> None:
            subprocess.run([str(BIN / "opsrg"), *a], cwd=root, env=env, check=True, capture_output=True, text=True)

        opsrg("fsm-reset", "CHECKED_OUT")  # the rows run in this folder: nothing to check out
        t0 = time.perf_counter()
        opsrg("sweep-start", "--csv", "s.csv")
        t_start = time.perf_counter() - t0
        opsrg("sweep-monitor", "--wait", "--timeout-secs", "600")
        total = time.perf_counter() - t0
        recs = [json.loads((root / ".opsrg/pod/outputs/_tasks" / f"r{i:03d}" / "status.json").read_text())
                for i in range(args.rows)]
        to_cmd = [_t(r["started_at"]) - _t(r["created_at"]) for r in recs]
        between = [_t(b["created_at"]) - _t(a["ended_at"]) for a, b in zip(recs, recs[1:], strict=False)]
        own = [_t(r["ended_at"]) - _t(r["started_at"]) for r in recs]
        ends = sorted(_t(r["ended_at"]) for r in recs)
        starts = sorted(_t(r["created_at"]) for r in recs)[args.parallel:]
        # a slot freed -> the next row's task: the wait after each end that a new row filled
        refill = [s - max(e for e in ends if e <= s) for s in starts if any(e <= s for e in ends)]
        ideal = args.rows * args.sleep / args.parallel
        makespan = max(_t(r["ended_at"]) for r in recs) - min(_t(r["created_at"]) for r in recs)
        out = {"rows": args.rows, "mode": args.mode, "parallel": args.parallel, "sleep_s": args.sleep,
               "sweep_start_s": round(t_start, 2), "total_s": round(total, 2),
               "per_row_s": round(total / args.rows, 3),
               "rows_makespan_s": round(makespan, 2),  # the first row's task created -> the last row's end
               **({"ideal_s": round(ideal, 2), "x_ideal": round(total / ideal, 3),
                   "rows_x_ideal": round(makespan / ideal, 3)} if ideal else {}),
               "task_created_to_command_start_s": round(statistics.median(to_cmd), 3),
               "row_end_to_next_task_s": round(statistics.median(between if args.parallel == 1 else refill), 3)
               if between else None,
               "row_command_and_wrapper_s": round(statistics.median(own), 3)}
        print(json.dumps(out, indent=2))
        return 0
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
