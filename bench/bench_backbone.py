"""Backbone latencies: `inv fsm-status` wall time, and how soon `inv task-wait` returns after a task ends.

Usage: .venv/bin/python bench/bench_backbone.py [--runs 20] [--json]
Runs in a throw-away project (its own workflow.env, outputs and tmux socket).
Targets: fsm-status median < 0.3 s; task-wait reacts in < 0.5 s.
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
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).parent / "inv")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--waits", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="opsrg-bench-"))
    sock = f"opsrg-bench-{uuid.uuid4().hex[:8]}"
    (tmp / "workflow.env").write_text(f"OPS_REMOTE_OUTPUTS_DIR={tmp}/out\nOPS_TMUX_SOCKET={sock}\n")
    env = {**os.environ, "OPSRG_ENV_FILE": str(tmp / "workflow.env")}

    def inv(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([INV, *args], cwd=REPO, env=env, capture_output=True, text=True, check=True)

    try:
        inv("fsm-status")  # warm the page cache
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            inv("fsm-status")
            times.append(time.perf_counter() - t0)
        inv("pod-up")
        delays = []
        for i in range(a.waits):
            inv("task-run", "--id", f"w{i}", "--cmd", "sleep 1")
            inv("task-wait", "--id", f"w{i}")
            returned = time.time()
            st = json.loads((tmp / "out" / "_tasks" / f"w{i}" / "status.json").read_text())
            delays.append(returned - datetime.fromisoformat(st["ended_at"]).timestamp())
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
    res = {
        "fsm_status_median_s": round(statistics.median(times), 3),
        "fsm_status_p90_s": round(sorted(times)[int(0.9 * (len(times) - 1))], 3),
        "task_wait_reaction_median_s": round(statistics.median(delays), 3),
        "task_wait_reaction_max_s": round(max(delays), 3),
        "runs": a.runs, "waits": a.waits,
    }
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
