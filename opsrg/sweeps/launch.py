"""The launch: how far the command that starts or resumes a campaign got, and settling it.

A launch record (``launch`` in the sweep manifest, :class:`~opsrg.sweeps.records.LaunchState`)
moves ``pending`` (files written, workflow state not yet committed) -> ``launching`` (committed;
run manifests, driver or jobs being created) -> ``launched``. If the launching process dies on the
way, the next monitor pass or doctor finds the record open with its process gone and settles it:
``aborted`` (nothing was started) or ``interrupted`` (the runs it had not started are failed, so
``--resume`` redoes them). The order of the writes makes every kill point one of these.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from opsrg.core.clock import now_iso, parse_iso
from opsrg.sweeps import runs
from opsrg.sweeps.campaign import create_manifests, identity_extra, record_reused, set_aside, write_manifest
from opsrg.sweeps.records import LAUNCH_OPEN, Campaign, LaunchState, RunState
from opsrg.tracked import supervisor

if TYPE_CHECKING:
    from opsrg.sweeps.backend import Backend
    from opsrg.sweeps.campaign import SweepEnv


REMOTE_LAUNCH_GRACE = 3600.0  # a launch from another machine: judged cut short only after this long


def new_launch(run_ids: list[str]) -> dict[str, Any]:
    return {"state": LaunchState.PENDING, "runs": list(run_ids), "at": now_iso(), "pid": os.getpid(),
            "host": socket.gethostname(), "proc_start": supervisor.proc_start(os.getpid())}


def launcher_gone(launch: dict[str, Any]) -> str:
    """Why the process of an open launch is known to be dead; '' while it may still be working."""
    if launch.get("state") not in LAUNCH_OPEN:
        return ""
    pid, host = launch.get("pid"), launch.get("host", "")
    if host != socket.gethostname():
        age = time.time() - parse_iso(launch["at"])
        return f"its launch from {host} began {age:.0f}s ago and never finished" if age > REMOTE_LAUNCH_GRACE else ""
    if not pid:
        return "no launching process was recorded"
    now = supervisor.proc_start(int(pid))
    if not now:
        return f"the launching process (pid {pid}) is gone"
    if launch.get("proc_start") and now != launch["proc_start"]:
        return f"the launching process (pid {pid}) is gone (the pid now belongs to another process)"
    return ""


def settle_launch(env: SweepEnv, m: Campaign, be: Backend) -> str:
    """Settle a launch whose process died; returns what was found ('' when nothing had to be done)."""
    launch = m.launch
    why = launcher_gone(launch)
    if not why:
        return ""
    camp = m.campaign
    if launch["state"] == LaunchState.LAUNCHING and be.launched(env, m):
        launch.update(state=LaunchState.LAUNCHED, note=f"{why} after the launch went through")
        write_manifest(env, m)
        return f"campaign {camp}: launch had completed; {why} before recording it"
    if launch["state"] == LaunchState.PENDING:
        return cut_launch(env, m, be, LaunchState.ABORTED, why, f"not started: {why} before the campaign was committed")
    be.abandon(env, m)
    return cut_launch(env, m, be, LaunchState.INTERRUPTED, why, f"not started: {why} during the launch")


def cut_launch(env: SweepEnv, m: Campaign, be: Backend, state: LaunchState, why: str, reason: str) -> str:
    """Record a launch that stopped part way: the runs it had not started are failed with ``reason``."""
    paths, camp, launch, rows = env.paths, m.campaign, m.launch, m.rows_by_id
    for rid in launch.get("runs", []):
        rm = runs.read_for(paths, rid, camp)
        if rm is None and state == LaunchState.INTERRUPTED:
            runs.create(paths, rid, camp, be.name, rows[rid], state=RunState.FAILED, reason=reason,
                        completed_at=now_iso())
        elif rm is not None and not rm.is_final:
            runs.update(paths, rid, RunState.FAILED, reason)
    launch.update(state=state, reason=why, settled_at=now_iso())
    write_manifest(env, m)
    return f"campaign {camp}: launch {state} ({why}); {len(launch.get('runs', []))} run(s) not started"


def claim_runs(env: SweepEnv, m: Campaign, be: Backend, todo: list[str],
               known: dict[str, dict[str, Any]] | None = None) -> None:
    """Fresh run manifests for the runs a launch is about to start (they are live from here on),
    with what the backend ``known`` of each by then (its job ids, once submitted)."""
    rows, known = m.rows_by_id, known or {}
    create_manifests(env.paths, [(rid, m.campaign, be.name, rows[rid],
                                  identity_extra(m, rid, **{"tasks": be.run_tasks(rid), **known.get(rid, {})}))
                                 for rid in todo])


def launch_runs(env: SweepEnv, m: Campaign, be: Backend, todo: list[str], *, claimed: bool = False) -> None:
    """Everything a launch does after its workflow state is committed, in an order that any kill
    point leaves recognisable (see LAUNCH_OPEN)."""
    m.launch["state"] = LaunchState.LAUNCHING
    write_manifest(env, m)
    if m.force and not claimed:
        m.replaced = set_aside(env, m.campaign, todo)
        write_manifest(env, m)
    if not claimed:
        record_reused(env.paths, m)
    try:
        be.start(env, m, todo, None if claimed else (lambda known: claim_runs(env, m, be, todo, known)))
    except BaseException as e:  # noqa: BLE001  (a failed submission, Ctrl-C: recorded, then raised)
        if not be.launched(env, m):
            with contextlib.suppress(Exception):
                be.abandon(env, m)
                cut_launch(env, m, be, LaunchState.INTERRUPTED, f"the launch failed ({e.__class__.__name__}: {e})",
                            f"not started: the launch failed ({e})")
        raise
    m.launch.update(state=LaunchState.LAUNCHED, done_at=now_iso())
    write_manifest(env, m)
