"""``RUN_OUT_MODE=local_sync``: a run writes to fast local scratch, mirrored to durable outputs.

The run writes under ``RUN_OUT_LOCAL_ROOT/<run_id>/`` (on the pod); a tracked task
``sync-<run_id>`` rsyncs that folder to ``<outputs>/<run_id>/`` every ``SYNC_INTERVAL_SECS``.
:func:`final_sync` asks the loop to stop, waits for its last pass, and falls back to one
direct rsync when the loop is gone. A sweep runner calls::

    task_id = start_sync(ctx, run_id)      # before starting the run
    ...                                    # run writes to scratch_dir(ctx, run_id)
    final_sync(ctx, run_id)                # after the run ended, whatever its outcome
"""

from __future__ import annotations

import shlex

from .context import Context
from .errors import HostError, TaskError

LOOP_SH = r"""src={src}; dst={dst}; stop={stop}; every={every}
mkdir -p "$src" "$dst"
pass_() {{ rsync -a --partial --exclude=.rsync-partial "$src/" "$dst/"; }}
while [ ! -e "$stop" ]; do
  pass_ || echo "sync pass failed ($?), retrying in ${{every}}s"
  for _ in $(seq "$every"); do [ -e "$stop" ] && break; sleep 1; done
done
pass_
echo "final sync done"
"""


def task_id(run_id: str) -> str:
    return f"sync-{run_id}"


def scratch_dir(ctx: Context, run_id: str) -> str:
    """Where the run writes (fast, maybe not durable)."""
    return f"{ctx.pod_path(ctx.s.run_out_local_root).rstrip('/')}/{run_id}"


def durable_dir(ctx: Context, run_id: str) -> str:
    return f"{ctx.outputs_dir}/{run_id}"


def stop_file(ctx: Context, run_id: str) -> str:
    return f"{ctx.control_dir}/localsync/{run_id}.stop"


def start_sync(ctx: Context, run_id: str, *, interval: int | None = None) -> str:
    """Start the mirroring task for ``run_id``; returns its task id."""
    from .tracked import validate_id

    validate_id(run_id)
    host = ctx.host
    stop = stop_file(ctx, run_id)
    host.run(["mkdir", "-p", scratch_dir(ctx, run_id), durable_dir(ctx, run_id), stop.rsplit("/", 1)[0]])
    host.run(["rm", "-f", stop])
    every = int(interval or ctx.s.sync_interval_secs)
    cmd = LOOP_SH.format(src=shlex.quote(scratch_dir(ctx, run_id)), dst=shlex.quote(durable_dir(ctx, run_id)),
                         stop=shlex.quote(stop), every=every)
    ctx.tasks.run(task_id(run_id), cmd, replace=True)
    return task_id(run_id)


def final_sync(ctx: Context, run_id: str, *, timeout: float = 600.0) -> str:
    """Stop the loop after one last pass and wait for it; a dead loop is replaced by one rsync."""
    from .tracked import TaskState

    host = ctx.host
    host.write_text(stop_file(ctx, run_id), "stop\n")
    tid = task_id(run_id)
    try:
        rec, waited_out = ctx.tasks.wait(tid, timeout=timeout, poll=0.2)
    except TaskError:
        rec, waited_out = None, False
    if rec is not None and not waited_out and rec.state == TaskState.SUCCESS:
        return f"{run_id}: final sync done by task {tid}"
    # The loop died, was killed or is stuck: do the final pass here, directly.
    src, dst = scratch_dir(ctx, run_id), durable_dir(ctx, run_id)
    r = host.run(["rsync", "-a", "--partial", "--exclude=.rsync-partial", f"{src}/", f"{dst}/"],
                 check=False, timeout=timeout)
    if not r.ok:
        raise HostError(f"{run_id}: final sync {src} -> {dst} failed ({r.exited}): {r.stderr.strip()[-500:]}",
                        hint=f"the run's files are still in {src}; retry with "
                             f"`python -c \"from opsrg.context import Context; from opsrg.localsync import "
                             f"final_sync; print(final_sync(Context.load(), '{run_id}'))\"`")
    why = "no sync task" if rec is None else f"task {tid} {'did not stop in time' if waited_out else rec.state}"
    return f"{run_id}: final sync done directly ({why})"
