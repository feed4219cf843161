"""The pod's side of a sweep command sent by a client (opsrg.sweeps.remote).

``python -m opsrg.cli.pod OP JSON_ARGS`` runs the sweep command ``OP`` of opsrg.sweeps.commands on
this machine with the settings named by OPSRG_ENV_FILE, and prints its answer as the last line of
stdout, one JSON object: ``{"result": ...}``, or ``{"error": {"type", "message", "hint",
"exit_code"}}`` for a failure the client raises again as the same error.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _run(op: str, args: dict[str, Any]) -> Any:
    from opsrg.context import Context
    from opsrg.sweeps import commands

    ctx = Context.load()
    if op == "start":
        if py := _checkout_python(ctx):  # the RG study's checkout: its venv runs the driver and the RG rows
            os.environ["SWEEP_PYTHON"] = py
            ctx = Context.load()
        # with nothing to run, the answer carries the campaign's verdict for the client's state
        return commands.start(ctx, args.get("csv"), args.get("backend"), resume=bool(args.get("resume")),
                              dry_run=bool(args.get("dry_run")), force=bool(args.get("force")))
    if op == "monitor":
        m, rows, verdict = commands.monitor(ctx, args.get("campaign"), args.get("metrics"))
        return {"campaign": m.to_json(), "rows": rows, "verdict": verdict}
    if op == "cancel":
        return commands.cancel(ctx, args.get("run_id"))
    if op == "doctor":
        from opsrg.ops import doctor

        return doctor.pod_side(ctx, bool(args.get("fix")))
    if op == "dashboard":
        from opsrg.ops import dashboard

        return dashboard.build_here(ctx, args.get("campaign"))
    if op == "artifacts-ls":
        from opsrg.ops import artifacts

        return artifacts.as_json(artifacts.list_runs(ctx))
    raise ValueError(f"unknown operation {op!r} (start, monitor, cancel, doctor, dashboard or artifacts-ls)")


def _checkout_python(ctx) -> str:
    """The checkout's venv python when the checkout is opsrg itself and SWEEP_PYTHON is unset."""
    from opsrg.pods.lifecycle import is_opsrg

    repo = ctx.pod_path(ctx.s.ops_remote_repo)
    venv = f"{repo}/.venv/bin/python"
    return venv if not ctx.s.sweep_python and os.path.exists(venv) and is_opsrg(ctx, repo) else ""


def main(argv: list[str]) -> int:
    from opsrg.core.errors import OpsError

    if len(argv) != 2:
        print("usage: python -m opsrg.cli.pod start|monitor|cancel|doctor|dashboard|artifacts-ls JSON_ARGS", file=sys.stderr)
        return 2
    try:
        result = _run(argv[0], json.loads(argv[1]))
    except OpsError as e:
        print(json.dumps({"error": {"type": type(e).__name__, "message": e.message, "hint": e.hint,
                                    "exit_code": e.exit_code}}))
        return e.exit_code
    print(json.dumps({"result": result}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
