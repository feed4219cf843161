"""The Slurm sweep backend: sbatch scripts per job, arrays of RG shards with afterok merges.

A launch submits every job held and releases them in one call once all are recorded; a refresh
asks the scheduler once for every unfinished job (opsrg.sweeps.slurm.watcher), falls back to the
run's marker files when no scheduler source knows a job, requeues what was preempted or lost
with its node (opsrg.sweeps.slurm.requeue), and advances the run manifests.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from opsrg.core.atomic import atomic_write_bytes, atomic_write_text, deferred_sync
from opsrg.core.clock import now_iso, parse_iso
from opsrg.core.errors import OpsError
from opsrg.rg.run import RunPaths
from opsrg.sweeps import runs
from opsrg.sweeps.backend import Backend, Claim, Lag, PlannedJob
from opsrg.sweeps.campaign import (
    SweepEnv,
    finish_run,
    log_ends,
    progress,
    settle_cancelled,
    sweep_of,
    write_manifest,
)
from opsrg.sweeps.plan import Job, RunProgress, array_spec, dep_job_id, plan_slurm
from opsrg.sweeps.records import Campaign, RunState, ending
from opsrg.sweeps.runs import SweepPaths
from opsrg.sweeps.slurm import ledger
from opsrg.sweeps.slurm.cli import (
    JobInfo,
    Slurm,
    base_of,
    check_log_path,
    limit_secs,
    load_template,
    render,
    time_directive,
)
from opsrg.sweeps.slurm.requeue import RequeuePolicy
from opsrg.sweeps.slurm.watcher import Watcher, expected_elements
from opsrg.tracked import supervisor
from opsrg.tracked.records import TaskState, read_tail


def _status(env: SweepEnv, key: str) -> dict[str, Any] | None:
    """The record of job ``key`` as its status.json holds it (None: missing or unreadable)."""
    return runs.read_json(Path(env.tasks().paths(key).status))


def _log(task_dir: str, job: Job) -> str:
    """Where a job's output goes: one log per array element (``%a``), else one."""
    return f"{task_dir}/stdout-%a.log" if job.tasks is not None else f"{task_dir}/stdout.log"


def _step_of(key: str) -> int | None:
    mt = re.search(r"\.RG(\d+)\.", key)
    return int(mt.group(1)) if mt else None


def _runs_of(j: dict[str, Any], elem: str) -> list[str]:
    """The runs a job element works for: its own row in a packed shell array, else the job's runs."""
    if j.get("kind") == "shell" and "_" in elem and len(j["runs"]) > 1:
        return [j["runs"][int(elem.split("_")[1])]]
    return list(j["runs"])


def _note_requeue(env: SweepEnv, m: Campaign, key: str, j: dict[str, Any], q: dict[str, Any],
                  status: str) -> None:
    """Record a requeue on the job (launch manifest), in the ledger and on the run manifests of its runs."""
    j["requeues"].append(q)
    rids = _runs_of(j, q["element"])
    ledger.append(env.paths, [ledger.entry(m.campaign, rid, key, q["element"], status) for rid in rids])
    for rid in rids:
        runs.append(env.paths, rid, "requeues", {**q, "job": key})


def _record_jobs(paths: SweepPaths, per_run: dict[str, dict[str, list[str]]]) -> None:
    """Add the submitted job ids and task keys to the run manifests of a resume (each write locked
    and atomic, made durable together)."""
    with deferred_sync():
        for rid, known in per_run.items():
            runs.update(paths, rid, None, **known)


def _listing(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def _unrecorded_end(env: SweepEnv, key: str, j: dict[str, Any], rec: dict[str, Any]) -> float | None:
    """When an element of job ``key`` left the end marker of its current attempt that its record
    does not show final yet (the earliest such marker's time), or None."""
    folder = env.tasks().paths(key).ended
    marks = _listing(folder)
    if not marks:
        return None
    elements = (rec.get("slurm") or {}).get("elements") or {}
    by_index = dict(zip([str(i) for i in (j.get("tasks") or [0])], expected_elements(j["job_id"], j.get("tasks")),
                        strict=False))
    when = []
    for mark in marks:
        index, _, restart = mark.partition(".")
        if index not in by_index or not restart.isdigit():
            continue
        info = elements.get(by_index[index]) or {}
        if int(restart) >= int(info.get("restarts") or 0) and info.get("task_state") not in supervisor.TERMINAL:
            with contextlib.suppress(OSError):
                when.append(os.stat(os.path.join(folder, mark)).st_mtime)
    return min(when) if when else None


def _meta_of_killed(env: SweepEnv, m: Campaign, rid: str, how: dict[str, Any]) -> None:
    """A script row keeps its books after its command: one killed first (its time limit, scancel,
    the OOM killer) left no meta.json. What can be recorded from here is, marked as such."""
    from opsrg.core import layout
    from opsrg.sweeps import provenance
    from opsrg.sweeps.plan import meta_plan
    from opsrg.sweeps.rows import SCRIPT_MODES

    sweep = sweep_of(m)
    rd = Path(sweep.run_dir(rid))
    if (rd / layout.META).exists() or sweep.row(rid).mode not in SCRIPT_MODES:
        return
    with contextlib.suppress(OSError, ValueError, SystemExit):
        meta = provenance.planned(meta_plan(sweep, sweep.row(rid)))
        meta.update(recorded_by="the monitor: the job ended before it could", started_at=None, ended_at=now_iso(),
                    ok=False, **how)
        provenance.write_meta(rd, meta)


class SlurmBackend(Backend):
    """sbatch scripts per job; arrays of RG shards with afterok merges; one batched query per refresh."""

    name = "slurm"
    per_job_requests = True

    def __init__(self, slurm: Slurm | None = None) -> None:
        self.slurm = slurm
        self.watcher: Watcher | None = None
        self.unreachable = ""  # why slurmctld did not answer the last refresh: states are kept meanwhile

    def _slurm(self, env: SweepEnv) -> Slurm:
        if self.slurm is None:
            self.slurm = Slurm(env.host, env=env.run_env())  # sbatch hands them to the jobs (--export=ALL)
        if self.watcher is None:
            self.watcher = Watcher(self.slurm.query)
        return self.slurm

    def jobs(self, env: SweepEnv, m: Campaign, todo: list[str], max_array: int,
             fresh: frozenset[str] = frozenset()) -> list[Job]:
        """The submissions for ``todo``: steps already DONE and READY shards are not redone."""
        sweep = sweep_of(m)
        prog = {r.run_id: RunProgress() if r.run_id in fresh else progress(env.paths, r) for r in sweep.rows}
        for rid in todo:
            prog[rid].ok = False
        return plan_slurm(sweep, max_array_size=max_array, progress=prog, only=set(todo))

    def script(self, env: SweepEnv, m: Campaign, job: Job, template: str | None = None) -> str:
        tp = env.tasks().paths(job.key)
        tdir = tp.root
        arr = array_spec(job.tasks, env.slurm.array_parallelism) if job.tasks is not None else ""
        return render(template or load_template(), key=job.key, campaign=m.campaign, log=_log(tdir, job),
                      directives=env.slurm.for_job(job.resources).directives(
                          time_directive(job.timeout_secs, env.slurm.time), arr),
                      body=job.body, ended_dir=tp.ended)

    def plan(self, env: SweepEnv, m: Campaign, todo: list[str],
             fresh: frozenset[str] = frozenset()) -> tuple[list[PlannedJob], dict[str, Any]]:
        try:
            max_array = Slurm(env.host).max_array_size()
        except (OpsError, OSError, ValueError):  # no scheduler reachable: plan with Slurm's default
            max_array = 1001
        template = load_template()
        return [PlannedJob(key=j.key, kind=j.kind, runs=list(j.runs), after=list(j.deps),
                           script=self.script(env, m, j, template), timeout_secs=j.timeout_secs, array=j.tasks)
                for j in self.jobs(env, m, todo, max_array, fresh)], {"max_array_size": max_array}

    def start(self, env: SweepEnv, m: Campaign, todo: list[str], claim: Claim | None = None) -> None:
        sl = self._slurm(env)
        paths, tasks = env.paths, env.tasks()
        jobs = self.jobs(env, m, todo, sl.max_array_size())
        sdir = paths.scripts(m.campaign)
        sdir.mkdir(parents=True, exist_ok=True)
        attempt = len(m.resumes) + 1
        launch = m.launch
        launch.setdefault("jobs", [])
        per_run: dict[str, dict[str, list[str]]] = {rid: {"job_ids": [], "tasks": []} for rid in todo}
        m.todo = sorted(set(m.todo) | set(todo))
        ids: dict[str, str] = {}
        template = load_template()
        for job in jobs:
            script = sdir / f"{job.key}.a{attempt}.sbatch"
            atomic_write_text(script, self.script(env, m, job, template), mode=0o755)
            # held until every job is recorded: a launch killed midway leaves no job running unrecorded
            jid = sl.submit(str(script), [i for i in (dep_job_id(d, ids) for d in job.deps) if i], hold=True)
            ids[job.key] = jid
            tasks.register(job.key, runner="slurm", command=str(script), log=_log(tasks.paths(job.key).root, job),
                           timeout_secs=job.timeout_secs, campaign=m.campaign, launch=launch["at"],
                           slurm={"job_id": jid, "array": job.tasks, "elements": {}, "source": "", "attempts": []})
            launch["jobs"].append(jid)
            m.jobs[job.key] = {**job.to_json(), "job_id": jid, "script": str(script), "attempt": attempt,
                                  "submitted_at": now_iso(), "requeues": []}
            write_manifest(env, m)
            entries = []
            for i, rid in enumerate(job.runs if job.kind == "shell" and job.tasks is not None else job.runs[:1]):
                jref = f"{jid}_{i}" if len(job.runs) > 1 else jid
                per_run[rid]["job_ids"].append(jref)
                per_run[rid]["tasks"].append(job.key)
                entries.append(ledger.entry(m.campaign, rid, job.key, jref, "submitted"))
            ledger.append(paths, entries)  # the durable record, one append per submission
        if claim is not None:  # the jobs are held: the manifests are written once, with their job ids
            claim(per_run)
        else:
            _record_jobs(paths, per_run)
        launch["releasing"] = True  # from here on the launch counts as done (see launched)
        write_manifest(env, m)
        sl.release(launch["jobs"])

    def run_tasks(self, run_id: str) -> list[str]:
        return []  # filled in once its jobs are submitted

    def preflight(self, env: SweepEnv) -> None:
        # the job logs go into #SBATCH lines, which cannot be quoted: refuse a bad path before anything is written
        check_log_path(f"{env.tasks().paths('x').root}/stdout-%a.log")

    def launched(self, env: SweepEnv, m: Campaign) -> bool:
        launch = m.launch
        if not launch.get("runs"):
            return True
        if not launch.get("releasing"):
            return False
        with contextlib.suppress(OpsError):  # it may have died inside the release: release again
            self._slurm(env).release(launch.get("jobs", []), check=False)
        return True

    def abandon(self, env: SweepEnv, m: Campaign) -> None:
        """Cancel the held jobs of a launch cut short (none of them ever ran)."""
        launch = m.launch
        ids = set(launch.get("jobs", []))
        mine = []  # this launch's records, also one written just before its job reached the manifest
        for st in (Path(env.outputs) / "_tasks").glob("*/status.json"):
            rec = runs.read_json(st) or {}
            if rec.get("campaign") == m.campaign and rec.get("launch") == launch.get("at"):
                mine.append(st.parent)
                ids.add(str((rec.get("slurm") or {}).get("job_id", "")))
        self._slurm(env).cancel(i for i in ids if i)
        for tdir in mine:
            with contextlib.suppress(OSError, ValueError):
                supervisor.update_status(str(tdir), state="failed", ended_at=now_iso(),
                                         reason="cancelled: the launch was cut short before releasing it")

    # ---------------------------------------------------------- observe
    def refresh(self, env: SweepEnv, m: Campaign) -> None:
        self._slurm(env)
        live = {k: j for k, j in m.jobs.items() if not self._record_final(env, k)}
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
            requeued = self.requeue_ended(env, m, key, j, got)
            changed |= requeued
            if not requeued:
                self._update_record(env, key, j, elems, got, self.unreachable)
        if changed:
            write_manifest(env, m)
        self._advance_runs(env, m)

    def wake_at(self, env: SweepEnv, m: Campaign) -> float | None:
        """The earliest of: an end marker whose element's record is not final yet (the scheduler may
        still be finishing it: the monitor then polls each second for a while), and the time limit
        of a running job (its TIMEOUT comes from the scheduler alone)."""
        due = []
        for key, j in m.jobs.items():
            rec = _status(env, key)
            if rec and rec.get("state") not in supervisor.TERMINAL and (t := _unrecorded_end(env, key, j, rec)):
                due.append(t)
            if not rec or rec.get("state") != "running" or not rec.get("started_at"):
                continue
            limit = limit_secs(j.get("timeout_secs"), env.slurm.time)
            try:
                if limit:
                    due.append(parse_iso(rec["started_at"]) + limit)
            except ValueError:
                continue
        return min(due) if due else None

    def end_watch(self, env: SweepEnv, m: Campaign, running: list[str]) -> Callable[[], bool] | None:
        """New end markers in the folders of the jobs that work for ``running`` runs (a listing each,
        no scheduler call)."""
        live = set(running)
        dirs = [env.tasks().paths(k).ended for k, j in m.jobs.items() if live.intersection(j["runs"])]
        seen = {d: _listing(d) for d in dirs}

        def ended() -> bool:
            return any(_listing(d) - was for d, was in seen.items())

        return ended if dirs else None

    def _record_final(self, env: SweepEnv, key: str) -> bool:
        rec = _status(env, key)
        return rec is not None and rec.get("state") in supervisor.TERMINAL

    def _from_markers(self, env: SweepEnv, m: Campaign, j: dict[str, Any], elem: str) -> JobInfo | None:
        """Evidence when no scheduler source knows the job: READY/DONE markers and summary.json."""
        rid = _runs_of(j, elem)[0]
        rp = RunPaths(env.paths.run_dir(rid))
        k = _step_of(j["key"])
        ok = False
        if j.get("final_for") or j["kind"] == "shell":
            ok = runs.summary_ok(env.paths, rid) is True
        elif j["kind"] == "merge" and k:
            ok = rp.done(k).exists()
        elif j["kind"] == "gen" and k:
            i = int(elem.split("_")[1]) if "_" in elem else 0
            ok = rp.done(k).exists() or rp.ready(k, i).exists()
        if ok:
            return JobInfo(elem, "COMPLETED", 0, 0, source="markers", raw_state="COMPLETED (marker files)")
        return None

    def _slurm_requeues(self, env: SweepEnv, m: Campaign, key: str, j: dict[str, Any],
                        got: dict[str, JobInfo]) -> bool:
        """Requeues the scheduler did by itself (with ``JobRequeue=1``, Slurm's default, a batch job on
        a failed node is requeued, never seen ending ``NODE_FAIL``): each is recorded with its cause;
        past SLURM_MAX_REQUEUE the job is cancelled and reported as ended by that cause."""
        did, policy = False, RequeuePolicy(env.max_requeue)
        for e, info in list(got.items()):
            cause = None
            unseen = policy.unseen(j, e, info.restarts)
            if unseen:
                ends = self._slurm(env).endings([e]).get(e, [])
                for n in unseen:
                    cause = ends[n] if n < len(ends) else None
                    state = cause.state if cause else "unknown cause"
                    if cause is not None and not cause.final:
                        state = "launch failure"  # Slurm requeued (and held) a job it could not start: jobcomp says PENDING
                    _note_requeue(env, m, key, j, policy.entry(j, e, state, by="slurm", ok=True, at=now_iso(),
                                                               attempt=n + 2, ended_at=cause.end if cause else ""),
                                  f"requeued by Slurm after {state} (attempt {n + 2})")
                did = True
            # over the budget: cancel Slurm's requeue and report the element as ended by its cause (also on
            # later passes, which see the CANCELLED of that cancel)
            if policy.over_budget(j, e) and (not info.final or info.state == "CANCELLED"):
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

    def requeue_ended(self, env: SweepEnv, m: Campaign, key: str, j: dict[str, Any],
                      got: dict[str, JobInfo]) -> bool:
        """Requeue the elements of job ``key`` that ended PREEMPTED or NODE_FAIL, within SLURM_MAX_REQUEUE
        (:class:`~opsrg.sweeps.slurm.requeue.RequeuePolicy`); returns whether any was requeued."""
        did, policy = False, RequeuePolicy(env.max_requeue)
        for e, info in got.items():
            if policy.should_requeue(j, e, info.state):
                ok = self._slurm(env).requeue(e)
                _note_requeue(env, m, key, j, policy.entry(j, e, info.state, by="opsrg", ok=ok, at=now_iso()),
                              f"requeued after {info.state}" + ("" if ok else " (scontrol requeue failed)"))
                if self.watcher:
                    self.watcher.final.pop(e, None)
                did = did or ok
        return did

    def _update_record(self, env: SweepEnv, key: str, j: dict[str, Any], elems: list[str],
                       got: dict[str, JobInfo], down: str = "") -> None:
        tdir = env.tasks().paths(key).root
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
            changes["ended_at"] = max(ends) if ends else now_iso()
        elif any(s == TaskState.RUNNING or s.is_terminal for s, _ in states):
            changes["state"] = "running"
        supervisor.update_status(tdir, **changes)

    def _advance_runs(self, env: SweepEnv, m: Campaign) -> None:
        paths = env.paths
        for rid in m.todo:
            rm = runs.read(paths, rid)
            if rm is None or rm.is_final:
                continue
            mine = [(k, j) for k, j in m.jobs.items() if rid in j["runs"] and j["key"] in rm.tasks]
            started = False
            for k, j in mine:
                rec = _status(env, k) or {}
                elems = rec.get("slurm", {}).get("elements", {})
                if j["kind"] == "shell" and len(j["runs"]) > 1:
                    e = f"{j['job_id']}_{j['runs'].index(rid)}"
                    el = elems.get(e)
                    st = el["task_state"] if el else "pending"
                    if st in supervisor.TERMINAL:
                        tail = self._keep_log(env, m, k, j, rid)
                        how = ending(st, el.get("exit_code"), el.get("signal"))
                        if st != "success":
                            _meta_of_killed(env, m, rid, how)
                        finish_run(paths, rid, st == "success", "" if st == "success" else
                                   f"{k} [{e}]: {JobInfo(**{x: el[x] for x in JobInfo.__dataclass_fields__ if x in el}).task_state()[1]}",
                                   log_tail=tail, **how)
                        break
                    started |= st == "running"
                    continue
                st = rec.get("state", "pending")
                if st in ("failed", "timed_out"):
                    self._cancel_jobs(env, m, rid, except_key=k)
                    tail = self._keep_log(env, m, k, j, rid)
                    el = elems.get(j["job_id"]) or next(iter(elems.values()), {})
                    how = ending(st, rec.get("exit_code"), el.get("signal"))
                    _meta_of_killed(env, m, rid, how)
                    runs.update(paths, rid, RunState.FAILED, f"{k} [{j['job_id']}]: {rec.get('reason', st)}"
                                + log_ends(tail), log_tail=tail, **how)
                    break
                if st == "success" and (j.get("final_for") == rid or j["kind"] == "shell"):
                    self._keep_log(env, m, k, j, rid)
                    finish_run(paths, rid, True)
                    break
                started |= st in ("running", "success")
            else:
                if started:
                    runs.update(paths, rid, RunState.RUNNING)

    @staticmethod
    def _keep_log(env: SweepEnv, m: Campaign, key: str, j: dict[str, Any], rid: str) -> list[str]:
        """A shell or command row's job log, copied into the run's logs/ (so fetch-run brings it
        home); returns its last lines. An RG run's many job logs stay in their task folders."""
        if j["kind"] != "shell":
            return []
        log = _log(env.tasks().paths(key).root, Job(key, j["kind"], "", j["runs"], tasks=j.get("tasks")))
        if "%a" in log:
            log = log.replace("%a", str(j["runs"].index(rid)))
        dest = RunPaths(env.paths.run_dir(rid)).logs
        with contextlib.suppress(OSError):
            dest.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dest / f"slurm-{key}.log", Path(log).read_bytes())
        return read_tail(log)

    def _cancel_jobs(self, env: SweepEnv, m: Campaign, rid: str, except_key: str = "") -> list[str]:
        rm = runs.read(env.paths, rid)
        tasks = rm.tasks if rm else []
        ids = []
        for k, j in m.jobs.items():
            if rid in j["runs"] and k in tasks and k != except_key and not self._record_final(env, k):
                ids.append(f"{j['job_id']}_{j['runs'].index(rid)}" if j["kind"] == "shell" and len(j["runs"]) > 1
                           else j["job_id"])
        self._slurm(env).cancel(ids)
        return ids

    def cancel(self, env: SweepEnv, m: Campaign, run_ids: list[str]) -> None:
        for rid in run_ids:
            rm = runs.read(env.paths, rid)
            if rm is None or rm.is_final:
                continue
            ids = self._cancel_jobs(env, m, rid)
            ledger.append(env.paths, [ledger.entry(m.campaign, rid, "-", i, "cancelled") for i in ids])
            settle_cancelled(env.paths, rid)

    def lagging(self, env: SweepEnv, m: Campaign, unfinished: list[str]) -> list[Lag]:
        """Runs whose jobs the scheduler reports all ended while their manifest says unfinished."""
        jobs = [j for j in m.jobs.values() if set(j.get("runs", [])) & set(unfinished)]
        infos = Slurm(env.host).query(j["job_id"] for j in jobs)  # OpsError: the scheduler did not answer
        out = []
        for j in jobs:
            elems = [i for jid, i in infos.items() if base_of(jid) == str(j["job_id"]).split("_")[0]]
            if elems and all(i.final for i in elems):
                states = ", ".join(sorted({i.state for i in elems}))
                out += [Lag(rid, f"job {j['job_id']} ({j['key']}) is {states} per {elems[0].source}")
                        for rid in sorted(set(j["runs"]) & set(unfinished))]
        return out
