"""The tmux sweep backend: a driver task runs the rows in order, each a tracked task.

The driver (``python -m opsrg.sweep_runner drive MANIFEST``, itself a tracked task) needs no
settings: everything comes from the launch snapshot in the sweep manifest. It starts each row when
its dependencies completed, waits for it, and records the run's end; ``refresh`` finishes what a
dead driver left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opsrg.core.atomic import atomic_write_text
from opsrg.core.errors import InputError, OpsError, TaskError
from opsrg.pods import localsync
from opsrg.rg.run import RunPaths
from opsrg.sweeps import provenance, runs, slots
from opsrg.sweeps.backend import Backend, Claim, Lag, PlannedJob
from opsrg.sweeps.campaign import (
    SweepEnv,
    as_launched,
    finish_run,
    settle_cancelled,
    sweep_of,
    write_manifest,
)
from opsrg.sweeps.plan import meta_plan, row_command
from opsrg.sweeps.records import Campaign, RunState, ending
from opsrg.sweeps.rows import SCRIPT_MODES
from opsrg.tracked import supervisor
from opsrg.tracked.manager import PROBE_EVERY
from opsrg.tracked.records import TaskState

DRIVER_PREFIX = "sweep-driver."


def _limit(row, env: SweepEnv) -> float | None:
    """A row's time limit in seconds: its own ``timeout_secs``, else RUN_TIMEOUT_SECS; None (no
    limit) when both are 0 or unset, as a training run of unknown length needs."""
    secs = row.spec.get("timeout_secs") or env.run_timeout
    return float(secs) if secs else None


class TmuxBackend(Backend):
    """A driver task runs the rows in order, each a tracked task in SWEEP_TMUX_SESSION."""

    name = "tmux"
    shares_gpus = True

    def start(self, env: SweepEnv, m: Campaign, todo: list[str], claim: Claim | None = None) -> None:
        paths = env.paths
        if claim is not None:
            claim({})
        # rows an earlier driver of this campaign started that still run (a resume after the driver
        # died): the new driver adopts them, waits for them and closes them, never starts them twice
        keep = set(todo)
        keep |= {rid for rid in m.todo if rid not in keep and runs.state_of(paths, rid) == RunState.RUNNING}
        m.todo = [rid for rid in m.run_ids if rid in keep]
        if not todo:  # every row reused: nothing to drive
            write_manifest(env, m)
            return
        driver = DRIVER_PREFIX + m.campaign
        m.driver_task = driver
        write_manifest(env, m)
        cmd = shlex.join([env.python, "-m", "opsrg.sweep_runner", "drive", str(paths.sweep_manifest(m.campaign))])
        env.tasks().run(driver, cmd, replace=True, cwd=env.outputs, env=env.run_env())

    def end_watch(self, env: SweepEnv, m: Campaign, running: list[str]) -> Callable[[], bool] | None:
        """The driver writes a run's manifest as it ends: their mtimes, and only a changed one read."""
        paths = env.paths

        def mtime(rid: str) -> int | None:
            try:
                return os.stat(paths.run_manifest(rid)).st_mtime_ns
            except OSError:
                return None

        seen = {rid: mtime(rid) for rid in running}

        def ended() -> bool:
            for rid, was in seen.items():
                now = mtime(rid)
                if now != was:
                    seen[rid] = now
                    st = runs.state_of(paths, rid)
                    if st is not None and st.is_final:
                        return True
            return False

        return ended

    def refresh(self, env: SweepEnv, m: Campaign) -> None:
        env = as_launched(env, m)
        paths, tasks = env.paths, env.tasks()
        driver = None
        try:
            driver = tasks.status(m.driver_task)
        except (TaskError, InputError):
            pass
        sweep = sweep_of(m)
        for rid in m.todo:
            rm = runs.read(paths, rid)
            if rm is None or rm.is_final:
                continue
            try:
                rec = tasks.status(rid)
            except TaskError:
                rec = None
            driver_done = driver is None or driver.state.is_terminal
            if rec is not None and rec.state.is_terminal and driver_done:
                # a live driver closes its rows itself (summary, meta.json, final sync); a dead one's here
                _close_for_driver(env, sweep, rid, rec)
            elif driver is not None and driver.state.is_terminal and rm.state == RunState.SUBMITTED:
                runs.update(paths, rid, RunState.FAILED, f"sweep driver ended ({driver.state}"
                            + (f": {driver.reason}" if driver.reason else "") + ") before this run finished")

    def cancel(self, env: SweepEnv, m: Campaign, run_ids: list[str]) -> None:
        env = as_launched(env, m)
        paths, tasks = env.paths, env.tasks()
        everything = set(run_ids) >= {r for r in m.todo}
        if everything and m.driver_task:  # first, so that it starts nothing more
            try:
                tasks.kill(m.driver_task)
            except (TaskError, InputError):
                pass
        if everything:  # rows that ended while nobody closed them (their driver dead): closed, not cancelled
            sweep = sweep_of(m)
            for rid in run_ids:
                rm = runs.read(paths, rid)
                try:
                    rec = tasks.status(rid)
                except (TaskError, InputError):
                    continue
                if rm is not None and not rm.is_final and rec.state.is_terminal:
                    _close_for_driver(env, sweep, rid, rec)
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

    def run_tasks(self, run_id: str) -> list[str]:
        return [run_id]

    def plan(self, env: SweepEnv, m: Campaign, todo: list[str],
             fresh: frozenset[str] = frozenset()) -> tuple[list[PlannedJob], dict[str, Any]]:
        """One tracked task per row, in dependency order (the driver starts each when its turn comes)."""
        sweep = sweep_of(m)
        return [PlannedJob(key=r.run_id, kind="row", runs=[r.run_id], after=list(r.deps),
                           script=row_command(sweep, r, books=False), timeout_secs=_limit(r, env))
                for r in sweep.ordered() if r.run_id in todo], {}

    def lagging(self, env: SweepEnv, m: Campaign, unfinished: list[str]) -> list[Lag]:
        """Runs whose task ended (or is dead) while their manifest says unfinished."""
        tasks, out = env.tasks(), []
        for rid in unfinished:
            try:
                rec = tasks.read(rid)
            except OpsError:
                continue
            probe = tasks.probe(rid) if not rec.state.is_terminal else {"alive": False, "evidence": ""}
            if rec.state.is_terminal or probe["alive"] is False:
                out.append(Lag(rid, f"its task is {rec.state}" if rec.state.is_terminal else probe["evidence"]))
        return out

    def launched(self, env: SweepEnv, m: Campaign) -> bool:
        if not m.launch.get("runs"):
            return True  # nothing to drive
        if not m.driver_task:
            return False
        try:  # its record exists: from here on the driver (or its lost record) decides
            env.tasks().read(m.driver_task)
            return True
        except (TaskError, InputError):
            return False

    def busy(self, env: SweepEnv, m: Campaign) -> str:
        if not m.driver_task:
            return ""
        try:
            drv = env.tasks().status(m.driver_task)
        except (TaskError, InputError):
            return ""
        return "" if drv.state.is_terminal else f"its driver task {drv.id} is still {drv.state}"


def _stop_sync(env: SweepEnv, run_id: str) -> None:
    """Ask a run's sync loop, if it has one, for its last pass (it ends by itself)."""
    stop = localsync.stop_path(env.outputs, run_id)
    if not Path(stop).exists() and Path(env.tasks().paths(localsync.task_id(run_id)).root).is_dir():
        atomic_write_text(stop, "stop\n")


def close_books(sweep, row, rec) -> tuple[bool, str, int | None]:
    """The books of a row whose task ended (its script keeps none: :func:`row_command` with
    ``books=False``): summary.json of a shell or command row, then meta.json's end. Returns
    (ok so far, reason, the run's exit code). Done by the driver, or by a monitor pass for the rows
    of a driver that died."""
    ok, reason, exit_code = rec.state == TaskState.SUCCESS, _task_reason(rec), rec.exit_code
    if exit_code is None:  # killed: no verdict of the command's own
        return ok, reason, exit_code
    od = sweep.out_dir(row.run_id)
    with contextlib.suppress(OSError, ValueError):
        if row.mode in SCRIPT_MODES:  # an RG run writes its own summary
            exit_code, why = runs.write_summary(od, row.mode, exit_code)
            if why:
                ok, reason = False, f"task {row.run_id} exit code {exit_code}: {why}"
        provenance.end(sweep.run_dir(row.run_id), f"{od}/{RunPaths.SUMMARY}", exit_code)
    return ok, reason, exit_code


def _close_for_driver(env: SweepEnv, sweep, rid: str, rec, say=lambda text: None) -> None:
    """What the driver does when a row ended (and a monitor pass for a driver that died): its
    books, its logs into the run's logs/, its final sync (local_sync), its verdict."""
    ok, reason, exit_code = close_books(sweep, sweep.row(rid), rec)
    tasks = env.tasks()
    tail = tasks.tail(rid)
    with contextlib.suppress(OSError):  # the logs stay in the task's folder regardless
        supervisor.keep_logs(tasks.paths(rid).root, str(RunPaths(Path(sweep.run_dir(rid))).logs))
    if env.local_sync:  # the outputs reach the durable folder before the run is marked synced
        try:
            say(env.final_sync(rid))
        except OpsError as e:
            ok, reason = False, reason or str(e)
    finish_run(env.paths, rid, ok, reason, log_tail=tail, **ending(rec.state.value, exit_code))


def _task_reason(rec) -> str:
    if rec.state == TaskState.SUCCESS:
        return ""
    return f"task {rec.id} {rec.state}" + (f" ({rec.reason})" if rec.reason else "") + \
        (f" [evidence: {rec.evidence}]" if rec.evidence else "")


def drive(manifest_path: str) -> int:
    """The tmux driver: run the sweep's rows, up to SWEEP_MAX_PARALLEL at once on disjoint GPUs,
    each when its dependencies completed, continuing past failures."""
    m = Campaign.from_json(json.loads(Path(manifest_path).read_text()))
    env = SweepEnv.from_json(m.env)
    d = _Driver(env, m, sweep_of(m))
    d.adopt()
    while d.waiting or d.running:
        d.collect()
        d.launch()
        if d.waiting or d.running:
            time.sleep(POLL)
    failed = d.failed
    print(f"[sweep] {m.campaign}: {len(d.todo) - len(failed)} ok, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


POLL = 0.05      # seconds between looks at the running rows' records (a file read each)


class _Driver:
    """The driver's books: rows waiting (in order), rows running with the GPUs they hold."""

    def __init__(self, env: SweepEnv, m: Campaign, sweep) -> None:
        self.env, self.m, self.sweep = env, m, sweep
        self.paths, self.tasks = env.paths, env.tasks()
        self.todo = set(m.todo)
        self.waiting = [r for r in sweep.ordered() if r.run_id in self.todo]
        self.running: dict[str, tuple[Any, float]] = {}  # run id -> (row, when last probed)
        self.slots = slots.Slots(env.gpus)
        self.limit = max(1, env.max_parallel)
        self.failed: list[str] = []
        self.deps_done: set[str] = set()  # rows whose dependencies all completed (checked once)

    def adopt(self) -> None:
        """Rows already final are counted; rows an earlier driver started and that still run are
        waited on, holding the GPUs they were given."""
        for row in list(self.waiting):
            rid = row.run_id
            st = runs.state_of(self.paths, rid)
            if st is not None and st.is_final:
                self.waiting.remove(row)
                self.failed += [rid] if st != RunState.COMPLETED else []
            elif st == RunState.RUNNING:
                rm = runs.read(self.paths, rid)
                self.slots.hold(rid, rm.gpus if rm else [])
                self.running[rid] = (row, 0.0)
                self.waiting.remove(row)
                print(f"[sweep] {rid}: adopted (started by an earlier driver)", flush=True)

    def collect(self) -> None:
        """Close the rows whose task ended: books, logs, final sync, verdict; free their GPUs."""
        now = time.monotonic()
        for rid, (row, probed) in list(self.running.items()):
            try:
                if now - probed >= PROBE_EVERY:
                    rec = self.tasks.status(rid)
                    self.running[rid] = (row, now)
                else:
                    rec = self.tasks.read(rid)
            except TaskError as e:  # its record is gone or unreadable: no end will ever show
                del self.running[rid]
                self.slots.release(rid)
                finish_run(self.paths, rid, False, f"its task record cannot be read ({e})")
                self.failed.append(rid)
                print(f"[sweep] {rid}: failed, its task record cannot be read ({e})", flush=True)
                continue
            except (OpsError, OSError) as e:  # the liveness probe itself failed: look again later
                self.running[rid] = (row, now)
                print(f"[sweep] {rid}: could not probe its task ({e}); looking again", flush=True)
                continue
            if not rec.state.is_terminal:
                continue
            del self.running[rid]
            self.slots.release(rid)
            self._close(row, rec)

    def _close(self, row, rec) -> None:
        rid = row.run_id
        _close_for_driver(self.env, self.sweep, rid, rec, say=lambda text: print(f"[sweep] {text}", flush=True))
        final = runs.state_of(self.paths, rid)
        print(f"[sweep] {rid}: {final} ({rec.state}{', ' + rec.reason if rec.reason else ''})", flush=True)
        if final != RunState.COMPLETED:
            self.failed.append(rid)

    def _deps_failed(self, row) -> list[str]:
        """Its dependencies that ended without completing (asked once they all ended; a dependency
        without a manifest, not part of this campaign, counts as done)."""
        return [d for d in row.deps if (runs.state_of(self.paths, d) or RunState.COMPLETED) != RunState.COMPLETED
                and not runs.summary_ok(self.paths, d)]

    def launch(self) -> None:
        """Start, in order, the waiting rows whose dependencies are done, while there is room and
        enough free GPUs (a row that must wait for GPUs lets a smaller one behind it start)."""
        busy = {r.run_id for r in self.waiting} | set(self.running)
        still: list = []
        for i, row in enumerate(self.waiting):
            if len(self.running) >= self.limit:
                still += self.waiting[i:]
                break
            rid = row.run_id
            if any(d in busy for d in row.deps):  # a dependency of this campaign has not ended yet
                still.append(row)
                continue
            if rid not in self.deps_done:
                bad = self._deps_failed(row)
                if bad:
                    runs.update(self.paths, rid, RunState.FAILED, f"dependency {', '.join(bad)} did not complete")
                    self.failed.append(rid)
                    print(f"[sweep] {rid}: skipped, dependency {', '.join(bad)} did not complete", flush=True)
                    continue
                self.deps_done.add(rid)
            # more than the pod has is refused when the campaign starts (commands._check_resources)
            n = slots.wanted(row.spec.get("gpus"), len(self.slots.gpus), self.limit)
            ids = self.slots.take(rid, n) if self.slots.gpus else []
            if ids is None:  # not enough GPUs free yet
                still.append(row)
                continue
            if self._start(row, ids):
                self.running[rid] = (row, time.monotonic())
            else:
                self.slots.release(rid)
                self.failed.append(rid)
        self.waiting = still

    def _start(self, row, gpus: list[str]) -> bool:
        env, sweep, rid = self.env, self.sweep, row.run_id
        Path(sweep.run_dir(rid)).mkdir(parents=True, exist_ok=True)
        run_env = {**env.run_env(), **slots.gpu_env(gpus, bool(env.gpus))}
        if env.wandb:
            run_env.update(slots.wandb_env(self.m.campaign, rid, sweep.run_dir(rid), row.notes))
        try:
            if env.local_sync:
                env.start_sync(rid)
            # the driver keeps the run's books (meta.json, summary.json) in its own process: a row's
            # script is then its command alone, three Python starts fewer per row
            provenance.begin(sweep.run_dir(rid), meta_plan(sweep, row))
            self.tasks.run(rid, row_command(sweep, row, books=False), timeout_secs=_limit(row, env), replace=True,
                           cwd=sweep.run_dir(rid), env=run_env, env_file=env.env_file)
        except (TaskError, OpsError, OSError, SystemExit) as e:  # SystemExit: begin found another identity
            runs.update(self.paths, rid, RunState.FAILED, f"could not start: {e}")
            return False
        runs.update(self.paths, rid, RunState.RUNNING, gpus=gpus)
        print(f"[sweep] {rid}: started" + (f" on GPUs {','.join(gpus)}" if gpus else ""), flush=True)
        return True


def main(argv: list[str]) -> int:
    """``python -m opsrg.sweep_runner drive MANIFEST`` (the entry point in opsrg/sweep_runner.py)."""
    if len(argv) == 2 and argv[0] == "drive":
        return drive(argv[1])
    print("usage: python -m opsrg.sweep_runner drive SWEEP_MANIFEST.json", file=sys.stderr)
    return 2
