"""State that grows with use: `inv fsm-status`, `fsm-reset` and `fsm-history --last 10` against a
history of 10^3, 10^4 and 10^5 transitions, before and after the migration to the log; and
`inv task-list` (default, `--all`, `--json`) over 10^3 and 10^4 ended tasks.

Usage: .venv/bin/python bench/bench_state.py [--sizes 1000,10000,100000] [--tasks 1000,10000] [--runs 3]
       [--json FILE]
Each size starts from a state file of an older opsrg (the history inline), as a long-lived pod's
outputs hold: the first `fsm-reset` migrates it; the figures after it are the steady state.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).parent / "inv")


def _old_file(path: Path, n: int) -> None:
    entry = {"from": "CHECKED_OUT", "to": "CHECKED_OUT", "command": "fsm-reset", "at": "2026-11-01T00:00:00.000+00:00",
             "user": "root", "host": "pod", "pid": 1234, "note": "x" * 40}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"state": "CHECKED_OUT", "updated_at": entry["at"], "command": "fsm-reset",
                                "history": [entry] * n}, indent=2, sort_keys=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--tasks", default="1000,10000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    out = []
    for n in (int(x) for x in a.sizes.split(",") if x):
        tmp = Path(tempfile.mkdtemp(prefix="opsrg-bench-state-"))
        (tmp / "workflow.env").write_text(f"OPS_REMOTE_OUTPUTS_DIR={tmp}/out\n")
        env = {**os.environ, "OPSRG_ENV_FILE": str(tmp / "workflow.env")}
        state = tmp / "out" / "_control" / "workflow_state.json"
        _old_file(state, n)

        def timed(*args: str, env: dict[str, str] = env) -> float:
            t0 = time.perf_counter()
            subprocess.run([INV, *args], cwd=REPO, env=env, capture_output=True, text=True, check=True)
            return time.perf_counter() - t0

        row = {"history": n, "old_file_bytes": state.stat().st_size,
               "status_before_s": statistics.median(timed("fsm-status") for _ in range(a.runs)),
               "first_reset_s": timed("fsm-reset", "CHECKED_OUT")}
        row["status_after_s"] = statistics.median(timed("fsm-status") for _ in range(a.runs))
        row["reset_after_s"] = statistics.median(timed("fsm-reset", "CHECKED_OUT") for _ in range(a.runs))
        row["history_last10_s"] = statistics.median(timed("fsm-history", "--last", "10", "--json")
                                                    for _ in range(a.runs))
        row["state_file_bytes"] = state.stat().st_size
        row["log_bytes"] = state.with_name("workflow_state.history.jsonl").stat().st_size
        out.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    for n in (int(x) for x in a.tasks.split(",") if x):
        tmp = Path(tempfile.mkdtemp(prefix="opsrg-bench-tasks-"))
        (tmp / "workflow.env").write_text(f"OPS_REMOTE_OUTPUTS_DIR={tmp}/out\n")
        env = {**os.environ, "OPSRG_ENV_FILE": str(tmp / "workflow.env")}
        for i in range(n):
            d = tmp / "out" / "_tasks" / f"t{i:06d}"
            d.mkdir(parents=True)
            (d / "status.json").write_text(json.dumps({
                "id": d.name, "state": "success", "runner": "tmux", "exit_code": 0,
                "created_at": f"2026-11-01T00:00:00.{i % 1000:03d}+00:00", "started_at": "2026-11-01T00:00:00+00:00",
                "ended_at": "2026-11-01T00:00:01+00:00"}))

        def timed(*args: str, env: dict[str, str] = env) -> float:
            t0 = time.perf_counter()
            subprocess.run([INV, *args], cwd=REPO, env=env, capture_output=True, text=True, check=True)
            return time.perf_counter() - t0

        row = {"tasks": n, "list_default_s": statistics.median(timed("task-list") for _ in range(a.runs)),
               "list_all_s": timed("task-list", "--all"), "list_json_s": timed("task-list", "--json")}
        out.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": out, "load": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
