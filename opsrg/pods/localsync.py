"""``RUN_OUT_MODE=local_sync``: a run writes to fast local scratch, mirrored to durable outputs.

The run writes under ``RUN_OUT_LOCAL_ROOT/<run_id>/`` (on the pod); a tracked task
``sync-<run_id>`` rsyncs that folder to ``<outputs>/<run_id>/`` every ``SYNC_INTERVAL_SECS``.
:func:`final_sync` asks the loop to stop, waits for its last pass, and falls back to one
direct rsync when the loop is gone::

    task_id = start_sync(ctx, run_id)      # before starting the run
    ...                                    # run writes to scratch_dir(ctx, run_id)
    final_sync(ctx, run_id)                # after the run ended, whatever its outcome

The tmux sweep driver, which has its launch snapshot rather than a Context, calls the same pair
with explicit places (:func:`start_loop`, :func:`finish_loop`).

A pass is resumable and shows a file under its own name only once it is complete: an interrupted
pass keeps what it copied in ``.rsync-partial/`` next to the file (the next pass goes on from it),
never a truncated file under the real name; a pass killed outright leaves its temp file in
``.rsync-partial/.opsrg-tmp/`` (:data:`TEMP_DIR`). The final pass removes partial folders left behind.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from opsrg.core import layout
from opsrg.core.errors import HostError, TaskError
from opsrg.hosts.rsync import PARTIAL_DIR, RSYNC_PASS, TEMP_DIR, pass_sh

if TYPE_CHECKING:
    from opsrg.context import Context
    from opsrg.hosts.base import Host
    from opsrg.tracked.manager import TaskManager

# After the final pass every file is complete: a partial copy still there belongs to a file the
# run removed meanwhile, a temp file to a pass that was killed.
CLEAN_SH = "find {dst} -type d -name " + PARTIAL_DIR + " -prune -exec rm -rf {{}} +"
LOOP_SH = r"""src={src}; dst={dst}; stop={stop}; every={every}
mkdir -p "$src" "$dst"
pass_() {{ mkdir -p "$dst/{temp}" && {rsync} "$src/" "$dst/"; }}
while [ ! -e "$stop" ]; do
  pass_ || echo "sync pass failed ($?), retrying in ${{every}}s"
  for _ in $(seq "$every"); do [ -e "$stop" ] && break; sleep 1; done
done
pass_ || {{ rc=$?; echo "final sync pass failed ($rc)"; exit "$rc"; }}
{clean}
echo "final sync done"
"""


def task_id(run_id: str) -> str:
    return f"sync-{run_id}"


def scratch_dir(ctx: Context, run_id: str) -> str:
    """Where the run writes (fast, maybe not durable)."""
    return f"{ctx.pod_path(ctx.s.run_out_local_root).rstrip('/')}/{run_id}"


def durable_dir(ctx: Context, run_id: str) -> str:
    return f"{ctx.outputs_dir}/{run_id}"


def stop_path(outputs: str, run_id: str) -> str:
    return f"{outputs}/{layout.CONTROL}/localsync/{run_id}.stop"


def stop_file(ctx: Context, run_id: str) -> str:
    return stop_path(ctx.outputs_dir, run_id)


def start_sync(ctx: Context, run_id: str, *, interval: int | None = None) -> str:
    """Start the mirroring task for ``run_id``; returns its task id."""
    return start_loop(ctx.host, ctx.tasks, run_id, scratch_dir(ctx, run_id), durable_dir(ctx, run_id),
                      stop_file(ctx, run_id), int(interval or ctx.s.sync_interval_secs))


def final_sync(ctx: Context, run_id: str, *, timeout: float = 600.0) -> str:
    """Stop the loop after one last pass and wait for it; a dead loop is replaced by one rsync."""
    return finish_loop(ctx.host, ctx.tasks, run_id, scratch_dir(ctx, run_id), durable_dir(ctx, run_id),
                       stop_file(ctx, run_id), timeout=timeout)


# The same with explicit places (a sweep driver has its launch snapshot, not a Context).
def start_loop(host: Host, tasks: TaskManager, run_id: str, src: str, dst: str, stop: str, every: int) -> str:
    from opsrg.tracked.records import validate_id

    validate_id(run_id)
    host.run(["mkdir", "-p", src, dst, stop.rsplit("/", 1)[0]])
    host.run(["rm", "-f", stop])
    cmd = LOOP_SH.format(src=shlex.quote(src), dst=shlex.quote(dst), stop=shlex.quote(stop), every=int(every),
                         temp=TEMP_DIR, rsync=shlex.join(RSYNC_PASS), clean=CLEAN_SH.format(dst='"$dst"'))
    tasks.run(task_id(run_id), cmd, replace=True)
    return task_id(run_id)


def finish_loop(host: Host, tasks: TaskManager, run_id: str, src: str, dst: str, stop: str, *,
                timeout: float = 600.0) -> str:
    from opsrg.tracked.records import TaskState

    host.write_text(stop, "stop\n")
    tid = task_id(run_id)
    try:
        rec, waited_out = tasks.wait(tid, timeout=timeout, poll=0.2)
    except TaskError:
        rec, waited_out = None, False
    if rec is not None and not waited_out and rec.state == TaskState.SUCCESS:
        return f"{run_id}: final sync done by task {tid}"
    # The loop died, was killed or is stuck: do the final pass here, directly.
    r = host.run(f"{pass_sh(src, dst)} && {CLEAN_SH.format(dst=shlex.quote(dst))}", check=False, timeout=timeout)
    if not r.ok:
        raise HostError(f"{run_id}: final sync {src} -> {dst} failed ({r.exited}): {r.stderr.strip()[-500:]}",
                        hint=f"the run's files are still in {src}; copy them with `{pass_sh(src, dst)}`")
    why = "no sync task" if rec is None else f"task {tid} {'did not stop in time' if waited_out else rec.state}"
    return f"{run_id}: final sync done directly ({why})"
