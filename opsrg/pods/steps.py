"""A long pod step as a tracked task that is waited on: what bootstrap, checkout and opsrg's own
install on the pod run (clone, venv, pip), never streamed over SSH."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opsrg.core.errors import HostError

if TYPE_CHECKING:
    from opsrg.context import Context

TASK_TIMEOUT = 1800.0


def run_and_wait(ctx: Context, task_id: str, command: str, *, resume: str, timeout: float = TASK_TIMEOUT,
                 env: dict[str, str] | None = None, cwd: str | None = None) -> str:
    """Run ``command`` as a tracked task on the pod and wait for it; its log on success.

    A task of that id still running (an earlier, interrupted call) is waited on, not restarted.
    """
    from opsrg.core.errors import TaskError
    from opsrg.tracked.records import TaskState

    tm = ctx.tasks
    try:
        rec = tm.read(task_id)
        running = not rec.state.is_terminal
    except TaskError:
        running = False
    if not running:
        tm.run(task_id, command, timeout_secs=timeout, replace=True, env=env, cwd=cwd)
    rec, waited_out = tm.wait(task_id, timeout=timeout + 60, poll=0.2)
    log = ctx.host.read_text(tm.paths(task_id).log) or ""
    if waited_out or rec.state != TaskState.SUCCESS:
        tail = "\n    ".join(log.strip().splitlines()[-15:])
        raise HostError(f"{task_id} on {ctx.host.name}: {rec.state}"
                        f"{f' (exit {rec.exit_code})' if rec.exit_code is not None else ''}; "
                        f"log {tm.paths(task_id).log}:\n    {tail}", hint=resume)
    return log
