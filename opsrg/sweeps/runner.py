"""Run a sweep: launch manifest, then a tmux or a Slurm backend behind one small interface.

Both backends produce the same things: a tracked-task record (``_tasks/<id>/status.json``) per
job, a ``run_manifest.json`` per run, and each run's ``summary.json``. ``refresh`` advances the
manifests from the evidence (task records, scheduler answers, marker files); it is what
``inv sweep-monitor`` and ``inv sweep-status`` run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from opsrg.core.atomic import atomic_write_json, atomic_write_text
from opsrg.core.errors import InputError, OpsError, TaskError
from opsrg.hosts.local import Host, LocalHost
from opsrg.pods import localsync
from opsrg.sweeps import runs
from opsrg.sweeps.plan import Job, RunProgress, Sweep, new_campaign_id, plan_slurm, row_command, row_identity
from opsrg.sweeps.rows import SweepRow, parse_file
from opsrg.sweeps.runs import FINAL, SweepPaths
from opsrg.sweeps.slurm import ledger
from opsrg.sweeps.slurm.cli import (
    REQUEUEABLE,
    JobInfo,
    Slurm,
    SlurmOptions,
    load_template,
    render,
    time_directive,
)
from opsrg.sweeps.slurm.watcher import Watcher, expected_elements
from opsrg.tracked import supervisor
from opsrg.tracked.manager import TaskManager, TaskState

DRIVER_PREFIX = "sweep-driver."


@dataclass
class SweepEnv:
    """What a backend needs, snapshotted into the launch manifest so the driver needs no settings."""

    outputs: str
    python: str = sys.executable
    tmux_socket: str = "opsrg"
    tmux_session: str = "opsrg-sweep"
    run_timeout: int = 3600
    kill_grace: float = 5.0
    stale_secs: float = 30.0
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    max_requeue: int = 2
    out_mode: str = "direct"       # RUN_OUT_MODE
    local_root: str = ""           # RUN_OUT_LOCAL_ROOT, as a path on the pod / compute node
    sync_interval: int = 60        # SYNC_INTERVAL_SECS
    host: Host = field(default_factory=LocalHost, repr=False)

    @classmethod
    def from_context(cls, ctx) -> SweepEnv:
        s = ctx.s
        return cls(ctx.outputs_dir, ctx.host.python, s.ops_tmux_socket, s.sweep_tmux_session, s.run_timeout_secs,
                    s.task_kill_grace_secs, s.task_heartbeat_stale_secs,
                    SlurmOptions(s.slurm_partition, s.slurm_account, s.slurm_time, s.slurm_cpus_per_task,
                                 s.slurm_mem, s.slurm_gres, s.slurm_array_parallelism), s.slurm_max_requeue,
                   s.run_out_mode, ctx.pod_path(s.run_out_local_root), s.sync_interval_secs, ctx.host)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SweepEnv:
        d = dict(d)
        d["slurm"] = SlurmOptions(**d["slurm"])
        return cls(**d)

    def to_json(self) -> dict[str, Any]:
        return {"outputs": self.outputs, "python": self.python, "tmux_socket": self.tmux_socket,
                "tmux_session": self.tmux_session, "run_timeout": self.run_timeout, "kill_grace": self.kill_grace,
                "stale_secs": self.stale_secs, "slurm": self.slurm.__dict__, "max_requeue": self.max_requeue,
                "out_mode": self.out_mode, "local_root": self.local_root, "sync_interval": self.sync_interval}

    @property
    def local_sync(self) -> bool:
        return self.out_mode == "local_sync"

    def scratch_dir(self, run_id: str) -> str:
        return f"{self.local_root.rstrip('/')}/{run_id}"

    def start_sync(self, run_id: str) -> str:
        return localsync.start_loop(self.host, self.tasks(), run_id, self.scratch_dir(run_id),
                                    str(self.paths.run_dir(run_id)), localsync.stop_path(self.outputs, run_id),
                                    self.sync_interval)

    def final_sync(self, run_id: str) -> str:
        return localsync.finish_loop(self.host, self.tasks(), run_id, self.scratch_dir(run_id),
                                     str(self.paths.run_dir(run_id)), localsync.stop_path(self.outputs, run_id))

    @property
    def paths(self) -> SweepPaths:
        return SweepPaths(self.outputs)

    def tasks(self) -> TaskManager:
        return TaskManager(self.host, self.outputs, tmux_socket=self.tmux_socket, tmux_session=self.tmux_session,
                           kill_grace=self.kill_grace, stale_secs=self.stale_secs)


# ------------------------------------------------------------------ launch manifest
def load_rows(csv_path: str, bases: list[Path]) -> list[SweepRow]:
    return parse_file(csv_path, bases)


def save_launch(env: SweepEnv, sweep: Sweep, csv_path: str, backend: str,
                identities: dict[str, str] | None = None, reused: dict[str, Any] | None = None,
                launch: dict[str, Any] | None = None, force: bool = False) -> dict[str, Any]:
    """Write the campaign's own files (its CSV copy and sweep manifest); returns the manifest.

    Nothing reads them until :func:`publish` names the campaign in ``LATEST``, so a command killed
    here leaves no live state behind.
    """
    p = env.paths
    p.manifests.mkdir(parents=True, exist_ok=True)
    from opsrg.core.atomic import atomic_write_bytes

    atomic_write_bytes(p.csv_copy(sweep.campaign), Path(csv_path).read_bytes())
    m = {"campaign": sweep.campaign, "backend": backend, "created_at": runs.now_iso(),
         "source_csv": str(Path(csv_path).resolve()), "csv_copy": str(p.csv_copy(sweep.campaign)),
         "env": env.to_json(), "rows": [r.to_json() for r in sweep.rows], "jobs": {}, "todo": [],
         "resumes": [], "identities": identities or {}, "reused": reused or {}, "force": force,
         "launch": launch or new_launch([])}
    write_manifest(env, m)
    return m


def publish(env: SweepEnv, m: dict[str, Any]) -> None:
    """Make ``m`` the latest campaign (``LATEST`` and ``sweep-latest.csv``)."""
    from opsrg.core.atomic import atomic_write_bytes

    p = env.paths
    atomic_write_bytes(p.latest_csv, Path(m["csv_copy"]).read_bytes())
    atomic_write_text(p.latest, m["campaign"] + "\n")


def discard(env: SweepEnv, m: dict[str, Any]) -> None:
    """Remove the files of a campaign that was refused before it was published."""
    for f in (env.paths.sweep_manifest(m["campaign"]), env.paths.csv_copy(m["campaign"])):
        f.unlink(missing_ok=True)


def write_manifest(env: SweepEnv, m: dict[str, Any]) -> None:
    atomic_write_json(env.paths.sweep_manifest(m["campaign"]), m)


def load_manifest(paths: SweepPaths, campaign: str | None = None) -> dict[str, Any]:
    if campaign is None:
        try:
            campaign = paths.latest.read_text().strip()
        except FileNotFoundError:
            raise InputError(f"no sweep has been started under {paths.outputs}",
                             hint="inv sweep-start") from None
    m = runs.read_json(paths.sweep_manifest(campaign))
    if m is None:
        raise InputError(f"{paths.sweep_manifest(campaign)}: sweep manifest missing or unreadable")
    return m


def sweep_of(m: dict[str, Any]) -> Sweep:
    rows = [SweepRow(**r) for r in m["rows"]]
    e = m["env"]
    scratch = e.get("local_root", "") if e.get("out_mode") == "local_sync" else ""
    return Sweep(m["campaign"], rows, e["outputs"], e["python"], m["backend"], scratch, e.get("sync_interval", 60))


def _as_launched(env: SweepEnv, m: dict[str, Any]) -> SweepEnv:
    """``env`` with the output mode the campaign was launched with (settings may have changed since)."""
    e = m["env"]
    return replace(env, out_mode=e.get("out_mode", "direct"), local_root=e.get("local_root", ""),
                   sync_interval=e.get("sync_interval", 60))


def _identity_extra(m: dict[str, Any], rid: str, **extra: Any) -> dict[str, Any]:
    ident = m.get("identities", {}).get(rid)
    return {**extra, "identity": ident} if ident else extra


# ------------------------------------------------------------------ run progress
def progress(paths: SweepPaths, row: SweepRow) -> RunProgress:
    rd = paths.run_dir(row.run_id)
    p = RunProgress(ok=runs.summary_ok(paths, row.run_id) is True)
    if row.mode != "shell":
        for k in range(1, row.spec["steps"] + 1):
            if (rd / f"DONE_RG{k}.json").exists():
                p.done_steps.add(k)
            sd = rd / "shards" / f"RG{k}"
            if sd.is_dir():
                p.ready[k] = {int(x.stem.split("_")[1]) for x in sd.glob("part_*.READY")}
    return p


def step_reached(paths: SweepPaths, row: SweepRow) -> str:
    if row.mode == "shell":
        return ""
    rd = paths.run_dir(row.run_id)
    done = [k for k in range(1, row.spec["steps"] + 1) if (rd / f"DONE_RG{k}.json").exists()]
    return f"{max(done) if done else 0}/{row.spec['steps']}"


def finish_run(paths: SweepPaths, run_id: str, ok_so_far: bool, reason: str = "", **extra: Any) -> None:
    """A run whose last job ended: synced when its summary is here, then completed or failed."""
    ok = runs.summary_ok(paths, run_id)
    if ok is not None:
        runs.update(paths, run_id, "synced", summary_ok=ok)
    if ok_so_far and ok:
        runs.update(paths, run_id, "completed", **extra)
    else:
        why = reason or ("summary.json missing" if ok is None else "summary.json has ok=false")
        runs.update(paths, run_id, "failed", why, **extra)


def create_manifests(paths: SweepPaths, items: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]]) -> None:
    """Write many fresh run manifests; the fsyncs run in parallel (each file is still atomic)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[str, str, str, dict[str, Any], dict[str, Any]]) -> None:
        rid, campaign, backend, row, extra = item
        runs.create(paths, rid, campaign, backend, row, **extra)

    if len(items) < 8:
        for it in items:
            one(it)
        return
    with ThreadPoolExecutor(max_workers=16) as ex:
        list(ex.map(one, items))


# ------------------------------------------------------------------ identity: reuse, refuse, force
def check_reuse(env: SweepEnv, sweep: Sweep, force: bool = False) -> tuple[dict[str, str], dict[str, Any]]:
    """(identity of every row, the rows to reuse) for a new campaign; nothing is written.

    A row whose durable folder holds a completed run (summary ok) with the same identity in its
    meta.json is reused; a different identity there is refused, naming the runs, unless
    ``force``. A completed folder without meta.json is recomputed (the engine's run.json still
    refuses a different RG configuration).
    """
    paths = env.paths
    idents = {r.run_id: row_identity(sweep, r) for r in sweep.rows}
    reused: dict[str, Any] = {}
    clash = []
    for r in [] if force else sweep.rows:
        rid = r.run_id
        if runs.summary_ok(paths, rid) is not True:
            continue
        meta = runs.read_json(paths.run_dir(rid) / "meta.json") or {}
        old = meta.get("identity")
        if old == idents[rid]:
            reused[rid] = {"identity": old, "campaign": meta.get("campaign"), "ended_at": meta.get("ended_at")}
        elif old is not None:
            clash.append(f"{rid}: {paths.run_dir(rid)} holds a completed run of identity {old} "
                         f"(campaign {meta.get('campaign')}); this row's identity is {idents[rid]}")
    if clash:
        raise InputError(f"{len(clash)} run{'s' if len(clash) > 1 else ''} would mix results with a different "
                         "completed run; nothing was started:\n  " + "\n  ".join(clash),
                         hint="give the row a new run_id to keep both, or pass --force to recompute into the "
                              "same run_id (the old folder is kept under _replaced/<campaign>/)")
    return idents, reused


def set_aside(env: SweepEnv, campaign: str, run_ids: list[str]) -> dict[str, str]:
    """--force: move existing run folders (and their scratch folders) to ``_replaced/<campaign>/``.

    The run manifest is copied back, so the new attempt keeps the earlier ones under ``previous``
    (and the Slurm ledger still finds their jobs).
    """
    moved = {}
    for rid in run_ids:
        places = [(env.paths.run_dir(rid), Path(env.outputs) / "_replaced" / campaign / rid)]
        if env.local_sync:
            places.append((Path(env.scratch_dir(rid)), Path(env.local_root) / "_replaced" / campaign / rid))
        for src, dst in places:
            if src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), str(dst))
                moved.setdefault(rid, str(dst))
        old = runs.read_json(Path(moved.get(rid, "-")) / "run_manifest.json")
        if old is not None:
            atomic_write_json(env.paths.run_manifest(rid), old)
    return moved


def record_reused(paths: SweepPaths, m: dict[str, Any]) -> None:
    """Run manifests of the reused rows: completed at once, with the identity and where it was computed."""
    rows = {r["run_id"]: r for r in m["rows"]}
    now = runs.now_iso()
    create_manifests(paths, [(rid, m["campaign"], m["backend"], rows[rid],
                              {"state": "completed", "completed_at": now, "summary_ok": True, "reused": True,
                               "identity": u["identity"], "reused_from": u["campaign"],
                               "reason": f"reused: identical completed run (identity {u['identity']}, "
                                         f"campaign {u['campaign']})"})
                             for rid, u in m.get("reused", {}).items()])


def verdict(paths: SweepPaths, m: dict[str, Any]) -> tuple[bool, list[str], list[str]]:
    """(all runs final, failed run ids, unfinished run ids) from this campaign's run manifests.

    A row without a manifest of this campaign is unfinished while the launch may still write it,
    and failed (never started) once the launch is known to have been cut short.
    """
    failed, live = [], []
    cut = (m.get("launch") or {}).get("state") in LAUNCH_CUT
    for r in m["rows"]:
        rm = runs.read_for(paths, r["run_id"], m["campaign"])
        st = rm.get("state") if rm else ("failed" if cut else None)
        if st in ("failed", "cancelled"):
            failed.append(r["run_id"])
        elif st != "completed":
            live.append(r["run_id"])
    return not live, failed, live


def reconcile_runs(paths: SweepPaths, m: dict[str, Any]) -> list[str]:
    """Runs recorded failed/cancelled whose summary.json is ok, now recorded completed (see runs.reconcile)."""
    return [r["run_id"] for r in m["rows"] if runs.reconcile(paths, r["run_id"]) is not None]


def settle_cancelled(paths: SweepPaths, run_id: str) -> None:
    """The one rule of ``sweep-cancel`` for every backend, applied once the run's work is stopped.

    A run whose summary is ok finished before anyone saw it (no refresh since, a killed driver, a
    scheduler that lost its state): ``--resume`` skips it, so it is completed, never cancelled.
    """
    rm = runs.read(paths, run_id)
    if rm is None or rm["state"] in FINAL:
        return
    if runs.summary_ok(paths, run_id) is True:
        finish_run(paths, run_id, True)
    else:
        runs.update(paths, run_id, "cancelled", "cancelled by sweep-cancel")


# ------------------------------------------------------------------ the launch
# A launch record (``launch`` in the sweep manifest) says how far the command that starts or
# resumes a campaign got: ``pending`` (files written, workflow state not yet committed),
# ``launching`` (committed; run manifests, driver or jobs being created), ``launched``. If the
# launching process dies on the way, the next monitor pass or doctor finds the record open with
# its process gone and settles it: ``aborted`` (nothing was started) or ``interrupted`` (the runs it
# had not started are failed, so ``--resume`` redoes them). The order of the writes makes every
# kill point one of these.
LAUNCH_OPEN = ("pending", "launching")
LAUNCH_CUT = ("aborted", "interrupted")
REMOTE_LAUNCH_GRACE = 3600.0  # a launch from another machine: judged cut short only after this long


def new_launch(run_ids: list[str]) -> dict[str, Any]:
    return {"state": "pending", "runs": list(run_ids), "at": runs.now_iso(), "pid": os.getpid(),
            "host": socket.gethostname(), "proc_start": supervisor.proc_start(os.getpid())}


def launcher_gone(launch: dict[str, Any]) -> str:
    """Why the process of an open launch is known to be dead; '' while it may still be working."""
    if launch.get("state") not in LAUNCH_OPEN:
        return ""
    pid, host = launch.get("pid"), launch.get("host", "")
    if host != socket.gethostname():
        age = time.time() - supervisor.parse_iso(launch["at"])
        return f"its launch from {host} began {age:.0f}s ago and never finished" if age > REMOTE_LAUNCH_GRACE else ""
    if not pid:
        return "no launching process was recorded"
    now = supervisor.proc_start(int(pid))
    if not now:
        return f"the launching process (pid {pid}) is gone"
    if launch.get("proc_start") and now != launch["proc_start"]:
        return f"the launching process (pid {pid}) is gone (the pid now belongs to another process)"
    return ""


def settle_launch(env: SweepEnv, m: dict[str, Any], be: Backend) -> str:
    """Settle a launch whose process died; returns what was found ('' when nothing had to be done)."""
    launch = m.get("launch") or {}
    why = launcher_gone(launch)
    if not why:
        return ""
    camp = m["campaign"]
    if launch["state"] == "launching" and be.launched(env, m):
        launch.update(state="launched", note=f"{why} after the launch went through")
        write_manifest(env, m)
        return f"campaign {camp}: launch had completed; {why} before recording it"
    if launch["state"] == "pending":
        return _cut_launch(env, m, be, "aborted", why, f"not started: {why} before the campaign was committed")
    be.abandon(env, m)
    return _cut_launch(env, m, be, "interrupted", why, f"not started: {why} during the launch")


def _cut_launch(env: SweepEnv, m: dict[str, Any], be: Backend, state: str, why: str, reason: str) -> str:
    """Record a launch that stopped part way: the runs it had not started are failed with ``reason``."""
    paths, camp, launch = env.paths, m["campaign"], m["launch"]
    rows = {r["run_id"]: r for r in m["rows"]}
    for rid in launch.get("runs", []):
        rm = runs.read_for(paths, rid, camp)
        if rm is None and state == "interrupted":
            runs.create(paths, rid, camp, be.name, rows[rid], state="failed", reason=reason,
                        completed_at=runs.now_iso())
        elif rm is not None and rm["state"] not in FINAL:
            runs.update(paths, rid, "failed", reason)
    launch.update(state=state, reason=why, settled_at=runs.now_iso())
    write_manifest(env, m)
    return f"campaign {camp}: launch {state} ({why}); {len(launch.get('runs', []))} run(s) not started"


def _claim_runs(env: SweepEnv, m: dict[str, Any], be: Backend, todo: list[str]) -> None:
    """Fresh run manifests for the runs a launch is about to start (they are live from here on)."""
    rows = {r["run_id"]: r for r in m["rows"]}
    create_manifests(env.paths, [(rid, m["campaign"], be.name, rows[rid],
                                  _identity_extra(m, rid, tasks=be.run_tasks(rid))) for rid in todo])


def _launch(env: SweepEnv, m: dict[str, Any], be: Backend, todo: list[str], *, claimed: bool = False) -> None:
    """Everything a launch does after its workflow state is committed, in an order that any kill
    point leaves recognisable (see LAUNCH_OPEN)."""
    m["launch"]["state"] = "launching"
    write_manifest(env, m)
    if m.get("force") and not claimed:
        m["replaced"] = set_aside(env, m["campaign"], todo)
        write_manifest(env, m)
    if not claimed:
        record_reused(env.paths, m)
        _claim_runs(env, m, be, todo)
    try:
        be.start(env, m, todo)
    except BaseException as e:  # noqa: BLE001  (a failed submission, Ctrl-C: recorded, then raised)
        if not be.launched(env, m):
            with contextlib.suppress(Exception):
                be.abandon(env, m)
                _cut_launch(env, m, be, "interrupted", f"the launch failed ({e.__class__.__name__}: {e})",
                            f"not started: the launch failed ({e})")
        raise
    m["launch"].update(state="launched", done_at=runs.now_iso())
    write_manifest(env, m)


# ------------------------------------------------------------------ interface
class Backend(Protocol):
    name: str

    def start(self, env: SweepEnv, m: dict[str, Any], todo: list[str]) -> None: ...

    def refresh(self, env: SweepEnv, m: dict[str, Any]) -> None: ...

    def cancel(self, env: SweepEnv, m: dict[str, Any], run_ids: list[str]) -> None: ...

    def alive(self, env: SweepEnv, m: dict[str, Any], run_id: str) -> bool: ...

    def run_tasks(self, run_id: str) -> list[str]:
        """The task ids a fresh run manifest lists before anything is started."""
        ...

    def launched(self, env: SweepEnv, m: dict[str, Any]) -> bool:
        """Whether a launch whose process died had gone through (only its last write was lost)."""
        ...

    def abandon(self, env: SweepEnv, m: dict[str, Any]) -> None:
        """Undo what a launch cut short had set up but not let run."""
        ...

    def busy(self, env: SweepEnv, m: dict[str, Any]) -> str:
        """Why the campaign cannot be resumed now ('' when it can)."""
        ...

    def preflight(self, env: SweepEnv) -> None:
        """Refuse, before anything is written, what this backend could never launch here."""
        ...


# ------------------------------------------------------------------ tmux
class TmuxBackend:
    """A driver task runs the rows in order, each a tracked task in SWEEP_TMUX_SESSION."""

    name = "tmux"

    def start(self, env: SweepEnv, m: dict[str, Any], todo: list[str]) -> None:
        paths = env.paths
        m["todo"] = todo
        if not todo:  # every row reused: nothing to drive
            write_manifest(env, m)
            return
        driver = DRIVER_PREFIX + m["campaign"]
        m["driver_task"] = driver
        write_manifest(env, m)
        cmd = shlex.join([env.python, "-m", "opsrg.sweep_runner", "drive", str(paths.sweep_manifest(m["campaign"]))])
        env.tasks().run(driver, cmd, replace=True, cwd=env.outputs)

    def refresh(self, env: SweepEnv, m: dict[str, Any]) -> None:
        env = _as_launched(env, m)
        paths, tasks = env.paths, env.tasks()
        driver = None
        try:
            driver = tasks.status(m.get("driver_task", ""))
        except (TaskError, InputError):
            pass
        for rid in m.get("todo", []):
            rm = runs.read(paths, rid)
            if rm is None or rm["state"] in FINAL:
                continue
            try:
                rec = tasks.status(rid)
            except TaskError:
                rec = None
            driver_done = driver is not None and driver.state.is_terminal
            if rec is not None and rec.state.is_terminal and (driver_done or rm["state"] != "submitted"
                                                               and not env.local_sync):
                # with local_sync a live driver finishes the run itself, after its final sync
                ok, reason = rec.state == TaskState.SUCCESS, _task_reason(rec)
                if env.local_sync:  # the driver ended before its final sync: do it here
                    try:
                        env.final_sync(rid)
                    except OpsError as e:
                        ok, reason = False, reason or str(e)
                finish_run(paths, rid, ok, reason, exit_code=rec.exit_code)
            elif driver is not None and driver.state.is_terminal and rm["state"] == "submitted":
                runs.update(paths, rid, "failed", f"sweep driver ended ({driver.state}"
                            + (f": {driver.reason}" if driver.reason else "") + ") before this run finished")

    def cancel(self, env: SweepEnv, m: dict[str, Any], run_ids: list[str]) -> None:
        env = _as_launched(env, m)
        paths, tasks = env.paths, env.tasks()
        everything = set(run_ids) >= {r for r in m.get("todo", [])}
        if everything and m.get("driver_task"):  # first, so that it starts nothing more
            try:
                tasks.kill(m["driver_task"])
            except (TaskError, InputError):
                pass
        for rid in run_ids:
            # decided before its task is stopped: a live driver would record the killed task failed
            settle_cancelled(paths, rid)
            if env.local_sync:
                _stop_sync(env, rid)  # its loop makes one last pass and ends
        for rid in run_ids:
            try:
                tasks.kill(rid)
            except (TaskError, InputError):
                pass

    def alive(self, env: SweepEnv, m: dict[str, Any], run_id: str) -> bool:
        rm = runs.read(env.paths, run_id)
        return rm is not None and rm["state"] not in FINAL

    def run_tasks(self, run_id: str) -> list[str]:
        return [run_id]

    def preflight(self, env: SweepEnv) -> None:
        return None  # every command it builds is quoted

    def launched(self, env: SweepEnv, m: dict[str, Any]) -> bool:
        if not m.get("launch", {}).get("runs"):
            return True  # nothing to drive
        if not m.get("driver_task"):
            return False
        try:  # its record exists: from here on the driver (or its lost record) decides
            env.tasks().read(m["driver_task"])
            return True
        except (TaskError, InputError):
            return False

    def abandon(self, env: SweepEnv, m: dict[str, Any]) -> None:
        return None  # no driver was started: nothing runs

    def busy(self, env: SweepEnv, m: dict[str, Any]) -> str:
        if not m.get("driver_task"):
            return ""
        try:
            drv = env.tasks().status(m["driver_task"])
        except (TaskError, InputError):
            return ""
        return "" if drv.state.is_terminal else f"its driver task {drv.id} is still {drv.state}"


def _stop_sync(env: SweepEnv, run_id: str) -> None:
    """Ask a run's sync loop, if it has one, for its last pass (it ends by itself)."""
    stop = localsync.stop_path(env.outputs, run_id)
    if not Path(stop).exists() and Path(env.tasks().paths(localsync.task_id(run_id)).root).is_dir():
        atomic_write_text(stop, "stop\n")


def _task_reason(rec) -> str:
    if rec.state == TaskState.SUCCESS:
        return ""
    return f"task {rec.id} {rec.state}" + (f" ({rec.reason})" if rec.reason else "") + \
        (f" [evidence: {rec.evidence}]" if rec.evidence else "")


def drive(manifest_path: str) -> int:
    """The tmux driver: run the sweep's rows in order, continuing past failures."""
    m = json.loads(Path(manifest_path).read_text())
    env = SweepEnv.from_json(m["env"])
    paths, tasks, sweep = env.paths, env.tasks(), sweep_of(m)
    todo = set(m.get("todo", []))
    failed = []
    for row in sweep.ordered():
        rid = row.run_id
        if rid not in todo:
            continue
        rm = runs.read(paths, rid) or {}
        if rm.get("state") in FINAL:
            failed += [rid] if rm["state"] != "completed" else []
            continue
        bad = [d for d in row.deps if (runs.read(paths, d) or {}).get("state", "completed") != "completed"
               and not runs.summary_ok(paths, d)]
        if bad:
            runs.update(paths, rid, "failed", f"dependency {', '.join(bad)} did not complete")
            failed.append(rid)
            print(f"[sweep] {rid}: skipped, dependency {', '.join(bad)} did not complete", flush=True)
            continue
        Path(sweep.run_dir(rid)).mkdir(parents=True, exist_ok=True)
        timeout = row.spec.get("timeout_secs") or env.run_timeout
        try:
            if env.local_sync:
                env.start_sync(rid)
            tasks.run(rid, row_command(sweep, row), timeout_secs=float(timeout), replace=True, cwd=sweep.run_dir(rid))
        except (TaskError, OpsError) as e:
            runs.update(paths, rid, "failed", f"could not start: {e}")
            failed.append(rid)
            continue
        runs.update(paths, rid, "running")
        print(f"[sweep] {rid}: started", flush=True)
        rec, _ = tasks.wait(rid, poll=0.2)
        ok, reason = rec.state == TaskState.SUCCESS, _task_reason(rec)
        if env.local_sync:  # the outputs reach the durable folder before the run is marked synced
            try:
                print(f"[sweep] {env.final_sync(rid)}", flush=True)
            except OpsError as e:
                ok, reason = False, reason or str(e)
        finish_run(paths, rid, ok, reason, exit_code=rec.exit_code)
        final = (runs.read(paths, rid) or {}).get("state")
        print(f"[sweep] {rid}: {final} ({rec.state}{', ' + rec.reason if rec.reason else ''})", flush=True)
        if final != "completed":
            failed.append(rid)
    print(f"[sweep] {m['campaign']}: {len(todo) - len(failed)} ok, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


# ------------------------------------------------------------------ Slurm
def _task_dir(env: SweepEnv, key: str) -> Path:
    return Path(env.outputs) / "_tasks" / key


def _step_of(key: str) -> int | None:
    mt = re.search(r"\.RG(\d+)\.", key)
    return int(mt.group(1)) if mt else None


def _runs_of(j: dict[str, Any], elem: str) -> list[str]:
    """The runs a job element works for: its own row in a packed shell array, else the job's runs."""
    if j.get("kind") == "shell" and "_" in elem and len(j["runs"]) > 1:
        return [j["runs"][int(elem.split("_")[1])]]
    return list(j["runs"])


def _requeues_of(j: dict[str, Any], elem: str) -> int:
    """Requeues of one element so far: SLURM_MAX_REQUEUE is a budget per element, not per array."""
    return sum(1 for r in j.get("requeues", []) if r["element"] == elem)


def _note_requeue(env: SweepEnv, m: dict[str, Any], key: str, j: dict[str, Any], q: dict[str, Any],
                  status: str) -> None:
    """Record a requeue on the job (launch manifest), in the ledger and on the run manifests of its runs."""
    j["requeues"].append(q)
    rids = _runs_of(j, q["element"])
    ledger.append(env.paths, [ledger.entry(m["campaign"], rid, key, q["element"], status) for rid in rids])
    for rid in rids:
        rm = runs.read(env.paths, rid)
        if rm is not None:
            runs.update(env.paths, rid, None, requeues=rm.get("requeues", []) + [{**q, "job": key}])


def _record_jobs(paths: SweepPaths, per_run: dict[str, dict[str, list[str]]]) -> None:
    """Add the submitted job ids and task keys to the run manifests (in parallel, each write locked)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(rid: str) -> None:
        runs.update(paths, rid, None, **per_run[rid])

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(per_run)))) as ex:
        list(ex.map(one, per_run))


class SlurmBackend:
    """sbatch scripts per job; arrays of RG shards with afterok merges; one batched query per refresh."""

    name = "slurm"

    def __init__(self, slurm: Slurm | None = None) -> None:
        self.slurm = slurm
        self.watcher: Watcher | None = None
        self.unreachable = ""  # why slurmctld did not answer the last refresh: states are kept meanwhile

    def _slurm(self, env: SweepEnv) -> Slurm:
        if self.slurm is None:
            self.slurm = Slurm(env.host)
        if self.watcher is None:
            self.watcher = Watcher(self.slurm.query)
        return self.slurm

    def plan(self, env: SweepEnv, m: dict[str, Any], todo: list[str], max_array: int,
             fresh: frozenset[str] = frozenset()) -> list[Job]:
        """``fresh``: runs planned from nothing, whatever their folders hold (--force sets those aside)."""
        sweep = sweep_of(m)
        prog = {r.run_id: RunProgress() if r.run_id in fresh else progress(env.paths, r) for r in sweep.rows}
        for rid in todo:
            prog[rid].ok = False
        return plan_slurm(sweep, max_array_size=max_array, progress=prog, only=set(todo))

    def script(self, env: SweepEnv, m: dict[str, Any], job: Job, template: str | None = None) -> str:
        tdir = _task_dir(env, job.key)
        log = f"{tdir}/stdout-%a.log" if job.tasks is not None else f"{tdir}/stdout.log"
        from opsrg.sweeps.plan import array_spec

        arr = array_spec(job.tasks, env.slurm.array_parallelism) if job.tasks is not None else ""
        return render(template or load_template(), key=job.key, campaign=m["campaign"], log=log,
                      directives=env.slurm.directives(time_directive(job.timeout_secs, env.slurm.time), arr),
                      body=job.body)

    def start(self, env: SweepEnv, m: dict[str, Any], todo: list[str], jobs: list[Job] | None = None) -> None:
        sl = self._slurm(env)
        paths = env.paths
        if jobs is None:
            jobs = self.plan(env, m, todo, sl.max_array_size())
        sdir = paths.scripts(m["campaign"])
        sdir.mkdir(parents=True, exist_ok=True)
        attempt = len(m.get("resumes", [])) + 1
        launch = m.setdefault("launch", new_launch(todo))
        launch.setdefault("jobs", [])
        per_run: dict[str, dict[str, list[str]]] = {rid: {"job_ids": [], "tasks": []} for rid in todo}
        m["todo"] = sorted(set(m.get("todo", [])) | set(todo))
        ids: dict[str, str] = {}
        template = load_template()
        for job in jobs:
            tdir = _task_dir(env, job.key)
            if tdir.exists():
                keep = Path(env.outputs) / "_tasks" / ".replaced" / f"{job.key}-{int(time.time() * 1000)}"
                keep.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(tdir), str(keep))
            tdir.mkdir(parents=True)
            script = sdir / f"{job.key}.a{attempt}.sbatch"
            atomic_write_text(script, self.script(env, m, job, template), mode=0o755)
            # held until every job is recorded: a launch killed midway leaves no job running unrecorded
            jid = sl.submit(str(script), [ids[d] for d in job.deps if d in ids], hold=True)
            ids[job.key] = jid
            rec = {"id": job.key, "state": "pending", "runner": "slurm", "command": str(script),
                   "created_at": supervisor.now_iso(), "host": env.host.name, "exit_code": None,
                   "timeout_secs": job.timeout_secs, "campaign": m["campaign"], "launch": launch["at"],
                   "slurm": {"job_id": jid, "array": job.tasks, "elements": {}, "source": "", "attempts": []},
                   "paths": {"status": str(tdir / "status.json"), "command": str(script),
                             "log": str(tdir / ("stdout-%a.log" if job.tasks is not None else "stdout.log"))}}
            supervisor.write_json_atomic(str(tdir / "status.json"), rec)
            launch["jobs"].append(jid)
            m["jobs"][job.key] = {**job.to_json(), "job_id": jid, "script": str(script), "attempt": attempt,
                                  "submitted_at": runs.now_iso(), "requeues": []}
            write_manifest(env, m)
            entries = []
            for i, rid in enumerate(job.runs if job.kind == "shell" and job.tasks is not None else job.runs[:1]):
                jref = f"{jid}_{i}" if len(job.runs) > 1 else jid
                per_run[rid]["job_ids"].append(jref)
                per_run[rid]["tasks"].append(job.key)
                entries.append(ledger.entry(m["campaign"], rid, job.key, jref, "submitted"))
            ledger.append(paths, entries)  # the durable record, one append per submission
        _record_jobs(paths, per_run)
        launch["releasing"] = True  # from here on the launch counts as done (see launched)
        write_manifest(env, m)
        sl.release(launch["jobs"])

    def run_tasks(self, run_id: str) -> list[str]:
        return []  # filled in once its jobs are submitted

    def preflight(self, env: SweepEnv) -> None:
        # the job logs go into #SBATCH lines, which cannot be quoted: refuse a bad path before anything is written
        from opsrg.sweeps.slurm.cli import check_log_path

        check_log_path(f"{_task_dir(env, 'x')}/stdout-%a.log")

    def launched(self, env: SweepEnv, m: dict[str, Any]) -> bool:
        launch = m.get("launch", {})
        if not launch.get("runs"):
            return True
        if not launch.get("releasing"):
            return False
        with contextlib.suppress(OpsError):  # it may have died inside the release: release again
            self._slurm(env).release(launch.get("jobs", []), check=False)
        return True

    def abandon(self, env: SweepEnv, m: dict[str, Any]) -> None:
        """Cancel the held jobs of a launch cut short (none of them ever ran)."""
        launch = m.get("launch", {})
        ids = set(launch.get("jobs", []))
        mine = []  # this launch's records, also one written just before its job reached the manifest
        for st in (Path(env.outputs) / "_tasks").glob("*/status.json"):
            rec = runs.read_json(st) or {}
            if rec.get("campaign") == m["campaign"] and rec.get("launch") == launch.get("at"):
                mine.append(st.parent)
                ids.add(str((rec.get("slurm") or {}).get("job_id", "")))
        self._slurm(env).cancel(i for i in ids if i)
        for tdir in mine:
            with contextlib.suppress(OSError, ValueError):
                supervisor.update_status(str(tdir), state="failed", ended_at=supervisor.now_iso(),
                                         reason="cancelled: the launch was cut short before releasing it")

    def busy(self, env: SweepEnv, m: dict[str, Any]) -> str:
        return ""

    # ---------------------------------------------------------- observe
    def refresh(self, env: SweepEnv, m: dict[str, Any]) -> None:
        self._slurm(env)
        live = {k: j for k, j in m["jobs"].items() if not self._record_final(env, k)}
        expected = {j["job_id"]: expected_elements(j["job_id"], j["tasks"]) for j in live.values()}
        infos = self.watcher.poll(expected) if expected else {}
        self.unreachable = getattr(self.slurm, "unreachable", "") if expected else ""
        changed = False
        for key, j in live.items():
            elems = expected_elements(j["job_id"], j["tasks"])
            got: dict[str, JobInfo] = {}
            for e in elems:
                info = infos.get(e) or self._from_markers(env, m, j, e)
                if info is not None:
                    got[e] = info
            changed |= self._slurm_requeues(env, m, key, j, got)
            requeued = self._requeue(env, m, key, j, got)
            changed |= requeued
            if not requeued:
                self._update_record(env, key, j, elems, got, self.unreachable)
        if changed:
            write_manifest(env, m)
        self._advance_runs(env, m)

    def _record_final(self, env: SweepEnv, key: str) -> bool:
        rec = runs.read_json(_task_dir(env, key) / "status.json")
        return rec is not None and rec.get("state") in supervisor.TERMINAL

    def _from_markers(self, env: SweepEnv, m: dict[str, Any], j: dict[str, Any], elem: str) -> JobInfo | None:
        """Evidence when no scheduler source knows the job: READY/DONE markers and summary.json."""
        rid = _runs_of(j, elem)[0]
        rd = env.paths.run_dir(rid)
        k = _step_of(j["key"])
        ok = False
        if j.get("final_for") or j["kind"] == "shell":
            ok = runs.summary_ok(env.paths, rid) is True
        elif j["kind"] == "merge" and k:
            ok = (rd / f"DONE_RG{k}.json").exists()
        elif j["kind"] == "gen" and k:
            i = int(elem.split("_")[1]) if "_" in elem else 0
            ok = (rd / f"DONE_RG{k}.json").exists() or (rd / "shards" / f"RG{k}" / f"part_{i:05d}.READY").exists()
        if ok:
            return JobInfo(elem, "COMPLETED", 0, 0, source="markers", raw_state="COMPLETED (marker files)")
        return None

    def _slurm_requeues(self, env: SweepEnv, m: dict[str, Any], key: str, j: dict[str, Any],
                        got: dict[str, JobInfo]) -> bool:
        """Requeues the scheduler did by itself (with ``JobRequeue=1``, Slurm's default, a batch job on
        a failed node is requeued, never seen ending ``NODE_FAIL``): each is recorded with its cause;
        past SLURM_MAX_REQUEUE the job is cancelled and reported as ended by that cause."""
        did = False
        for e, info in list(got.items()):
            known = sum(1 for r in j["requeues"] if r["element"] == e and r.get("ok"))
            cause = None
            if info.restarts > known:
                ends = self._slurm(env).endings([e]).get(e, [])
                for n in range(known, info.restarts):
                    cause = ends[n] if n < len(ends) else None
                    state = cause.state if cause else "unknown cause"
                    if cause is not None and not cause.final:
                        state = "launch failure"  # Slurm requeued (and held) a job it could not start: jobcomp says PENDING
                    _note_requeue(env, m, key, j, {"element": e, "state": state, "at": runs.now_iso(), "ok": True,
                                                   "by": "slurm", "attempt": n + 2,
                                                   "ended_at": cause.end if cause else ""},
                                  f"requeued by Slurm after {state} (attempt {n + 2})")
                did = True
            # over the budget: cancel Slurm's requeue and report the element as ended by its cause (also on
            # later passes, which see the CANCELLED of that cancel)
            if _requeues_of(j, e) > env.max_requeue and (not info.final or info.state == "CANCELLED"):
                if not info.final:
                    self._slurm(env).cancel([e])
                if cause is None or not cause.final:
                    last = [r["state"] for r in j["requeues"] if r["element"] == e][-1]
                    cause = JobInfo(e, last, end=info.end, raw_state=last)
                c = cause if cause.final else JobInfo(e, "CANCELLED", raw_state="CANCELLED")
                got[e] = replace(c, id=e, restarts=info.restarts, source=c.source or info.source,
                                 reason=f"requeued by Slurm {info.restarts}x, over SLURM_MAX_REQUEUE="
                                        f"{env.max_requeue}: cancelled")
                if self.watcher:
                    self.watcher.final[e] = got[e]
        return did

    def _requeue(self, env: SweepEnv, m: dict[str, Any], key: str, j: dict[str, Any], got: dict[str, JobInfo]) -> bool:
        did = False
        for e, info in got.items():
            if info.state in REQUEUEABLE and _requeues_of(j, e) < env.max_requeue:
                ok = self._slurm(env).requeue(e)
                _note_requeue(env, m, key, j, {"element": e, "state": info.state, "at": runs.now_iso(), "ok": ok,
                                               "by": "opsrg", "attempt": _requeues_of(j, e) + 2},
                              f"requeued after {info.state}" + ("" if ok else " (scontrol requeue failed)"))
                if self.watcher:
                    self.watcher.final.pop(e, None)
                did = did or ok
        return did

    def _update_record(self, env: SweepEnv, key: str, j: dict[str, Any], elems: list[str],
                       got: dict[str, JobInfo], down: str = "") -> None:
        tdir = str(_task_dir(env, key))
        states = [got[e].task_state() for e in elems if e in got]
        known = len(states) == len(elems)
        sources = sorted({i.source for i in got.values()})
        elements = {e: {**got[e].to_json(), "task_state": got[e].task_state()[0].value} for e in got}
        changes: dict[str, Any] = {"slurm": {**(supervisor.read_status(tdir).get("slurm") or {}),
                                             "elements": elements, "source": ",".join(sources),
                                             "requeues": j.get("requeues", []),
                                             "attempt": 1 + max((i.restarts for i in got.values()), default=0)},
                                   "evidence": f"scheduler state from {','.join(sources) or 'nobody'}"
                                   + (f"; scheduler unreachable ({down}): last known state kept" if down else "")}
        starts = [i.start for i in got.values() if i.start]
        if starts:
            changes["started_at"] = min(starts)
        if known and all(s.is_terminal for s, _ in states):
            bad = [(e, got[e]) for e in elems if got[e].task_state()[0] != TaskState.SUCCESS]
            if not bad:
                changes.update(state="success", exit_code=0, reason="")
            else:
                e, info = bad[0]
                ts, why = info.task_state()
                changes.update(state=ts.value, exit_code=info.exit_code,
                               reason=f"{e}: {why}" + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))
            ends = [i.end for i in got.values() if i.end]
            changes["ended_at"] = max(ends) if ends else supervisor.now_iso()
        elif any(s == TaskState.RUNNING or s.is_terminal for s, _ in states):
            changes["state"] = "running"
        supervisor.update_status(tdir, **changes)

    def _advance_runs(self, env: SweepEnv, m: dict[str, Any]) -> None:
        paths = env.paths
        for rid in m.get("todo", []):
            rm = runs.read(paths, rid)
            if rm is None or rm["state"] in FINAL:
                continue
            mine = [(k, j) for k, j in m["jobs"].items() if rid in j["runs"] and j["key"] in rm.get("tasks", [])]
            started = False
            for k, j in mine:
                rec = runs.read_json(_task_dir(env, k) / "status.json") or {}
                elems = rec.get("slurm", {}).get("elements", {})
                if j["kind"] == "shell" and len(j["runs"]) > 1:
                    e = f"{j['job_id']}_{j['runs'].index(rid)}"
                    el = elems.get(e)
                    st = el["task_state"] if el else "pending"
                    if st in supervisor.TERMINAL:
                        finish_run(paths, rid, st == "success", "" if st == "success" else
                                   f"{k} [{e}]: {JobInfo(**{x: el[x] for x in JobInfo.__dataclass_fields__ if x in el}).task_state()[1]}",
                                   exit_code=el.get("exit_code"))
                        break
                    started |= st == "running"
                    continue
                st = rec.get("state", "pending")
                if st in ("failed", "timed_out"):
                    self._cancel_jobs(env, m, rid, except_key=k)
                    runs.update(paths, rid, "failed", f"{k} [{j['job_id']}]: {rec.get('reason', st)}",
                                exit_code=rec.get("exit_code"))
                    break
                if st == "success" and (j.get("final_for") == rid or j["kind"] == "shell"):
                    finish_run(paths, rid, True)
                    break
                started |= st in ("running", "success")
            else:
                if started:
                    runs.update(paths, rid, "running")

    def _cancel_jobs(self, env: SweepEnv, m: dict[str, Any], rid: str, except_key: str = "") -> list[str]:
        rm = runs.read(env.paths, rid) or {}
        ids = []
        for k, j in m["jobs"].items():
            if rid in j["runs"] and k in rm.get("tasks", []) and k != except_key and not self._record_final(env, k):
                ids.append(f"{j['job_id']}_{j['runs'].index(rid)}" if j["kind"] == "shell" and len(j["runs"]) > 1
                           else j["job_id"])
        self._slurm(env).cancel(ids)
        return ids

    def cancel(self, env: SweepEnv, m: dict[str, Any], run_ids: list[str]) -> None:
        for rid in run_ids:
            rm = runs.read(env.paths, rid)
            if rm is None or rm["state"] in FINAL:
                continue
            ids = self._cancel_jobs(env, m, rid)
            ledger.append(env.paths, [ledger.entry(m["campaign"], rid, "-", i, "cancelled") for i in ids])
            settle_cancelled(env.paths, rid)

    def alive(self, env: SweepEnv, m: dict[str, Any], run_id: str) -> bool:
        rm = runs.read(env.paths, run_id)
        return rm is not None and rm["state"] not in FINAL


def backend_for(name: str) -> Backend:
    if name == "tmux":
        return TmuxBackend()
    if name == "slurm":
        return SlurmBackend()
    raise InputError(f"unknown sweep backend {name!r} (tmux or slurm)")


# ------------------------------------------------------------------ status rows
def status_rows(env: SweepEnv, m: dict[str, Any]) -> list[dict[str, Any]]:
    paths, out = env.paths, []
    launch = m.get("launch") or {}
    for r in sweep_of(m).rows:
        rm = runs.read_for(paths, r.run_id, m["campaign"]) or {}
        start, end = rm.get("started_at") or rm.get("submitted_at"), rm.get("completed_at")
        elapsed = None
        if start:
            elapsed = (supervisor.parse_iso(end) if end else time.time()) - supervisor.parse_iso(start)
        requeues = rm.get("requeues", [])
        reason = rm.get("reason", "")
        if requeues and not reason:  # a live run whose job the scheduler requeued (PREEMPTED, NODE_FAIL)
            q = requeues[-1]
            reason = f"{q['element']} requeued after {q['state']} ({len(requeues)}x)"
        if not rm and launch.get("state") in LAUNCH_CUT:
            reason = f"campaign {launch['state']}: {launch.get('reason', '')}"
        out.append({"run_id": r.run_id, "mode": r.mode, "state": rm.get("state", "not started"),
                    "step": step_reached(paths, r), "elapsed_secs": None if elapsed is None else round(elapsed, 1),
                    "job_ids": rm.get("job_ids", []), "exit_code": rm.get("exit_code"), "reason": reason,
                    "summary_ok": runs.summary_ok(paths, r.run_id), "attempt": rm.get("attempt"),
                    "requeues": requeues})
    return out


# ------------------------------------------------------------------ commands
def _bases(ctx) -> list[Path]:
    return [ctx.loaded.root, Path.cwd()]


def start(ctx, csv: str | None = None, backend: str | None = None, *, resume: bool = False,
          dry_run: bool = False, force: bool = False) -> dict[str, Any]:
    """sweep-start: validate, copy the CSV, write manifests, launch. Returns what was done (or planned).

    A row identical to a completed run in its folder is reused, not recomputed (``force``:
    recompute every row, setting existing folders aside); a different one is refused.

    The check of the workflow state and its commit happen under one lock, with the campaign
    published in between, and the launch follows: two starts at once cannot both launch, and a
    start killed at any point leaves a launch record that the monitor and doctor settle.
    """
    env = SweepEnv.from_context(ctx)
    paths = env.paths
    enforce = ctx.s.wf_fsm_enforce
    if resume:
        return _resume(ctx, env, backend, dry_run)
    backend = backend or ctx.s.sweep_backend
    be = backend_for(backend)
    csv = csv or str(ctx.loaded.local_path(ctx.s.sweep_csv))
    rows = load_rows(csv, _bases(ctx))
    sweep = Sweep(new_campaign_id(), rows, env.outputs, env.python, backend)
    idents, reused = check_reuse(env, sweep, force)
    todo = [r.run_id for r in sweep.ordered() if r.run_id not in reused]
    if dry_run:
        ctx.store.check("sweep-start", enforce=enforce)
        m = {"campaign": sweep.campaign + " (dry run)", "backend": backend, "env": env.to_json(),
             "rows": [r.to_json() for r in rows], "jobs": {}}
        fresh = frozenset(todo) if force else frozenset()  # the real start sets their folders aside
        return {**_dry_plan(env, m, be, todo, fresh), "reused": {k: u["identity"] for k, u in reused.items()}}
    be.preflight(env)
    m = save_launch(env, sweep, csv, backend, idents, reused, new_launch(todo), force)
    try:
        with ctx.store.claim("sweep-start", enforce=enforce, note=f"campaign {sweep.campaign}"):
            publish(env, m)
    except OpsError:
        discard(env, m)
        raise
    _launch(env, m, be, todo)
    if not todo:  # every row reused: the sweep ends now, not at the next monitor pass
        _move_fsm(ctx, env, m)
    return {"campaign": sweep.campaign, "backend": backend, "runs": todo,
            "reused": {k: u["identity"] for k, u in reused.items()}, "replaced": m.get("replaced", {}),
            "manifest": str(paths.sweep_manifest(sweep.campaign)), "csv_copy": m["csv_copy"],
            "jobs": {k: j["job_id"] for k, j in m.get("jobs", {}).items()}}


def _resume(ctx, env: SweepEnv, backend: str | None, dry_run: bool) -> dict[str, Any]:
    """sweep-start --resume: settle what is known, then launch the runs that are neither ok nor live."""
    paths = env.paths
    m = load_manifest(paths)
    be = backend_for(m["backend"])
    if backend and backend != m["backend"]:
        raise InputError(f"campaign {m['campaign']} ran on {m['backend']}; resume it there (got --backend {backend})")
    if dry_run:
        ctx.store.check("sweep-resume", enforce=ctx.s.wf_fsm_enforce)
        return _dry_plan(env, m, be, [r["run_id"] for r in m["rows"] if runs.summary_ok(paths, r["run_id"]) is not True])
    with ctx.store.claim("sweep-resume", enforce=ctx.s.wf_fsm_enforce, note=f"campaign {m['campaign']}"):
        settle_launch(env, m, be)
        be.refresh(env, m)
        reconcile_runs(paths, m)
        busy = be.busy(env, m)
        if busy:
            raise InputError(f"campaign {m['campaign']}: {busy}", hint="inv sweep-cancel, then inv sweep-start --resume")
        todo = [r["run_id"] for r in m["rows"] if runs.summary_ok(paths, r["run_id"]) is not True
                and not be.alive(env, m, r["run_id"])]
        m["resumes"] = m.get("resumes", []) + [{"at": runs.now_iso(), "runs": todo}]
        m["launch"] = new_launch(todo)
        write_manifest(env, m)
        # claimed under the lock: a second resume at the same moment finds them live
        _claim_runs(env, m, be, todo)
    if todo:
        _launch(env, m, be, todo, claimed=True)
    else:
        m["launch"].update(state="launched", done_at=runs.now_iso())
        write_manifest(env, m)
        _move_fsm(ctx, env, m)  # nothing to redo: the sweep ends now
    return {"campaign": m["campaign"], "backend": m["backend"], "resumed": todo,
            "skipped": [r["run_id"] for r in m["rows"] if r["run_id"] not in todo]}


def _move_fsm(ctx, env: SweepEnv, m: dict[str, Any]) -> tuple[bool, list[str], list[str]]:
    """The campaign's verdict; once every run is final, SWEEP_RUNNING moves to COMPLETED or FAILED."""
    from opsrg.core.fsm import State

    done, failed, live = verdict(env.paths, m)
    fsm_state = ctx.store.read().state
    if done and fsm_state == State.SWEEP_RUNNING:
        with contextlib.suppress(OpsError):  # somebody moved it meanwhile: theirs stands
            if failed:
                ctx.store.set(State.SWEEP_FAILED, "sweep-failed", expect=fsm_state,
                              note=f"campaign {m['campaign']}: failed runs: {', '.join(failed)}")
            else:
                ctx.store.set(State.SWEEP_COMPLETED, "sweep-completed", expect=fsm_state,
                              note=f"campaign {m['campaign']}: {len(m['rows'])} runs ok")
    return done, failed, live


def _dry_plan(env: SweepEnv, m: dict[str, Any], be: Backend, todo: list[str],
              fresh: frozenset[str] = frozenset()) -> dict[str, Any]:
    sweep = sweep_of(m)
    out: dict[str, Any] = {"campaign": m["campaign"], "backend": be.name, "dry_run": True, "runs": todo}
    if be.name == "tmux":
        out["jobs"] = [{"run_id": r.run_id, "after": r.deps, "command": row_command(sweep, r),
                        "timeout_secs": r.spec.get("timeout_secs") or env.run_timeout}
                       for r in sweep.ordered() if r.run_id in todo]
        return out
    try:
        max_array = Slurm(env.host).max_array_size()
    except (OpsError, OSError, ValueError):  # no scheduler reachable: plan with Slurm's default
        max_array = 1001
    jobs = be.plan(env, m, todo, max_array, fresh)
    out["max_array_size"] = max_array
    out["jobs"] = [{**j.to_json(), "script": be.script(env, m, j)} for j in jobs]
    return out


def monitor(ctx, campaign: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """One monitor pass: settle a launch cut short, advance the manifests, reconcile them with the
    summaries, then move the FSM when every run is final."""
    from opsrg.core import fsm
    env = SweepEnv.from_context(ctx)
    m = load_manifest(env.paths, campaign)
    be = backend_for(m["backend"])
    settled = settle_launch(env, m, be)
    be.refresh(env, m)
    reconcile_runs(env.paths, m)
    done, failed, live = _move_fsm(ctx, env, m)
    state = ctx.store.read().state
    nxt = "inv sweep-start --resume" if fsm.refusal("sweep-resume", state) is None else "inv sweep-start"
    return m, status_rows(env, m), {"done": done, "failed": failed, "running": live, "fsm": state.value,
                                    "scheduler_unreachable": getattr(be, "unreachable", ""),
                                    "launch": (m.get("launch") or {}).get("state", "launched"),
                                    "settled": settled, "next": nxt}


def cancel(ctx, run_id: str | None = None) -> list[str]:
    env = SweepEnv.from_context(ctx)
    m = load_manifest(env.paths)
    be = backend_for(m["backend"])
    ids = [r["run_id"] for r in m["rows"]]
    if run_id is not None:
        if run_id not in ids:
            raise InputError(f"no run {run_id!r} in campaign {m['campaign']} (runs: {', '.join(ids)})")
        be.cancel(env, m, [run_id])
        return [run_id]
    settle_launch(env, m, be)
    todo = sorted(set(m.get("todo", [])) | set((m.get("launch") or {}).get("runs", [])))
    alive = [r for r in todo if be.alive(env, m, r)]
    with ctx.transition("sweep-cancel"):
        be.cancel(env, m, todo)
    return [r for r in alive if (runs.read(env.paths, r) or {}).get("state") == "cancelled"]


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "drive":
        return drive(argv[1])
    print("usage: python -m opsrg.sweep_runner drive SWEEP_MANIFEST.json", file=sys.stderr)
    return 2

