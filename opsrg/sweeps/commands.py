"""The sweep commands: start (or resume), one monitor pass, status rows, cancel.

Each takes the command's Context and returns plain data for ``tasks.py`` to print. They hold a
:class:`~opsrg.sweeps.backend.Backend` chosen by name from the CSV's campaign and never ask which.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opsrg.core import fsm, gpus
from opsrg.core.clock import now_iso, parse_iso
from opsrg.core.errors import InputError, OpsError, StillRunning
from opsrg.core.fsm import State
from opsrg.sweeps import remote, runs
from opsrg.sweeps.backend import Backend
from opsrg.sweeps.campaign import (
    SweepEnv,
    check_reuse,
    csv_drift,
    discard,
    load_manifest,
    load_rows,
    publish,
    reconcile_runs,
    save_launch,
    step_reached,
    sweep_of,
    verdict,
    write_manifest,
)
from opsrg.sweeps.launch import claim_runs, launch_runs, new_launch, settle_launch
from opsrg.sweeps.plan import Sweep, new_campaign_id
from opsrg.sweeps.records import LAUNCH_CUT, Campaign, LaunchState, RunState
from opsrg.sweeps.slurm.backend import SlurmBackend
from opsrg.sweeps.slurm.watcher import backoff
from opsrg.sweeps.tmux import TmuxBackend

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (TmuxBackend, SlurmBackend)}


def backend_for(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise InputError(f"unknown sweep backend {name!r} ({' or '.join(BACKENDS)})") from None


def metric_names(ctx) -> list[str]:
    return [x for x in ctx.s.sweep_metrics.split(",") if x]


def status_rows(env: SweepEnv, m: Campaign, metrics: list[str] | None = None) -> list[dict[str, Any]]:
    paths, out = env.paths, []
    launch = m.launch
    for r in sweep_of(m).rows:
        rm = runs.read_for(paths, r.run_id, m.campaign)
        summary = runs.read_json(paths.summary(r.run_id))  # read once: its ok, and metrics from it
        elapsed, requeues, reason = None, [], ""
        if rm is not None:
            start, end = rm.started_at or rm.submitted_at, rm.completed_at
            if start:
                elapsed = (parse_iso(end) if end else time.time()) - parse_iso(start)
            requeues, reason = rm.requeues, rm.reason
        if requeues and not reason:  # a live run whose job the scheduler requeued (PREEMPTED, NODE_FAIL)
            q = requeues[-1]
            reason = f"{q['element']} requeued after {q['state']} ({len(requeues)}x)"
        if rm is None and launch.get("state") in LAUNCH_CUT:
            reason = f"campaign {launch['state']}: {launch.get('reason', '')}"
        out.append({"run_id": r.run_id, "mode": r.mode, "state": rm.state if rm else "not started",
                    "step": step_reached(paths, r), "elapsed_secs": None if elapsed is None else round(elapsed, 1),
                    "job_ids": rm.job_ids if rm else [], "exit_code": rm.exit_code if rm else None,
                    "reason": reason, "summary_ok": None if summary is None else bool(summary.get("ok")),
                    "attempt": rm.attempt if rm else None, "requeues": requeues,
                    "signal": rm.signal if rm else None, "timed_out": rm.timed_out if rm else False,
                    "log_tail": rm.log_tail if rm else [],
                    "metrics": runs.metrics(paths, r.run_id, metrics or [], summary)})
    return out


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
    if remote.is_remote(ctx):
        return _start_on_pod(ctx, csv, backend, resume=resume, dry_run=dry_run, force=force)
    env = SweepEnv.from_context(ctx)
    paths = env.paths
    enforce = ctx.s.wf_fsm_enforce
    if resume:
        return _resume(ctx, env, backend, dry_run)
    backend = backend or ctx.s.sweep_backend
    be = backend_for(backend)
    csv = csv or str(ctx.loaded.local_path(ctx.s.sweep_csv))
    rows = load_rows(csv, _bases(ctx), ctx.s.run_command)
    env.gpus = gpus.discover(env.host, ctx.s.pod_gpus) if be.shares_gpus else []
    _check_resources(rows, env.gpus, csv, be)
    if any(r.mode == "command" for r in rows):  # their identity includes the project's code
        env.code = env.code_state()
    sweep = Sweep(new_campaign_id(), rows, env.outputs, env.python, backend, repo=env.repo, code=env.code)
    idents, reused = check_reuse(env, sweep, force)
    todo = [r.run_id for r in sweep.ordered() if r.run_id not in reused]
    if dry_run:
        ctx.store.check("sweep-start", enforce=enforce)
        m = Campaign(campaign=sweep.campaign + " (dry run)", backend=backend, env=env.to_json(),
                     rows=[r.to_json() for r in rows])
        fresh = frozenset(todo) if force else frozenset()  # the real start sets their folders aside
        return {**_dry_plan(env, m, be, todo, fresh), "reused": {k: u["identity"] for k, u in reused.items()}}
    be.preflight(env)
    m = save_launch(env, sweep, csv, backend, new_launch(todo), idents, reused, force)
    try:
        with ctx.store.claim("sweep-start", enforce=enforce, note=f"campaign {sweep.campaign}"):
            publish(env, m)
    except OpsError:
        discard(env, m)
        raise
    launch_runs(env, m, be, todo)
    out = {"campaign": sweep.campaign, "backend": backend, "runs": todo,
           "reused": {k: u["identity"] for k, u in reused.items()}, "replaced": m.replaced,
           "manifest": str(paths.sweep_manifest(sweep.campaign)), "csv_copy": m.csv_copy,
           "jobs": {k: j["job_id"] for k, j in m.jobs.items()}}
    if not todo:  # every row reused: the sweep ends now, not at the next monitor pass
        out["verdict"] = _verdict_now(ctx, env, m)
    return out


def _verdict_now(ctx, env: SweepEnv, m: Campaign) -> dict[str, Any]:
    """A launch with nothing to run: the campaign's verdict, the workflow state moved by it (and
    for a client whose state is its own: opsrg.cli.pod)."""
    done, failed, _ = _move_fsm(ctx, env, m)
    return {"done": done, "failed": failed, "rows": len(m.rows)}


def write_grid(ctx, g, out: str | None = None, *, force: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    """sweep-grid: expand the grid ``g`` and write its CSV (default SWEEP_CSV), read back as
    sweep-start would read it before it replaces anything; refuses an existing file without ``force``."""
    from dataclasses import replace

    from opsrg.core.atomic import atomic_write_text
    from opsrg.sweeps.grid import ARG_FORM, KEY_FORM, expand, to_csv
    from opsrg.sweeps.rows import is_run_config, parse_text, resolve_config

    path = Path(out) if out else ctx.loaded.local_path(ctx.s.sweep_csv)
    if path.exists() and not force:
        raise InputError(f"{path} exists; not overwriting it", hint="pass --force, or --out a new file")
    if not g.form:  # key=value for an RG run config (opsrg's keys), --key=value for the user's own file
        cfg = resolve_config(g.config, _bases(ctx))
        g = replace(g, form=KEY_FORM if cfg is not None and is_run_config(cfg) else ARG_FORM)
    rows = expand(g)
    text = to_csv(rows)
    parse_text(text, str(path), [*_bases(ctx), path.resolve().parent], ctx.s.run_command)  # a bad grid writes nothing
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path, rows


def _check_resources(rows, gpus: list[str], csv: str, be: Backend) -> None:
    """Refuse, with file and line, a row asking what its backend cannot give: more GPUs than the
    pod has (it could never start), or per-job requests the backend has no place for."""
    bad = []
    if be.shares_gpus:
        have = f"{len(gpus)} ({','.join(gpus)})" if gpus else "none (set POD_GPUS, or run where nvidia-smi lists them)"
        bad += [f"{csv}:{r.line}: gpus: row {r.run_id} asks for {r.spec['gpus']} GPUs; the pod has {have}"
                for r in rows if r.spec.get("gpus") and r.spec["gpus"] > len(gpus)]
    if not be.per_job_requests:
        keys = ("cpus", "mem") if be.shares_gpus else ("gpus", "cpus", "mem")
        bad += [f"{csv}:{r.line}: {k}: row {r.run_id} asks for {k}, which the {be.name} backend does not request "
                f"per row (rows run on the pod as they are)" for r in rows for k in keys if k in r.spec]
    if bad:
        raise InputError("\n".join(bad), hint="drop those keys (or fix POD_GPUS), or run the campaign with "
                                              "--backend slurm; then run inv sweep-start")


def _resume(ctx, env: SweepEnv, backend: str | None, dry_run: bool) -> dict[str, Any]:
    """sweep-start --resume: settle what is known, then launch the runs that are neither ok nor live."""
    paths = env.paths
    m = load_manifest(paths)
    be = backend_for(m.backend)
    if backend and backend != m.backend:
        raise InputError(f"campaign {m.campaign} ran on {m.backend}; resume it there (got --backend {backend})")
    drift = csv_drift(m, _bases(ctx), ctx.s.run_command)
    if drift:
        drift += ("; --resume runs the campaign's own rows: to run the file as it is now, start a new campaign"
                  " with inv sweep-start (its completed rows that did not change are reused)")
    if dry_run:
        ctx.store.check("sweep-resume", enforce=ctx.s.wf_fsm_enforce)
        return {**_dry_plan(env, m, be, [rid for rid in m.run_ids if runs.summary_ok(paths, rid) is not True]),
                "csv_changed": drift}
    with ctx.store.claim("sweep-resume", enforce=ctx.s.wf_fsm_enforce, note=f"campaign {m.campaign}"):
        settle_launch(env, m, be)
        be.refresh(env, m)
        reconcile_runs(paths, m)
        busy = be.busy(env, m)
        if busy:
            raise InputError(f"campaign {m.campaign}: {busy}", hint="inv sweep-cancel, then inv sweep-start --resume")
        todo = [rid for rid in m.run_ids if runs.summary_ok(paths, rid) is not True and not be.alive(env, m, rid)]
        m.resumes = m.resumes + [{"at": now_iso(), "runs": todo}]
        m.launch = new_launch(todo)
        write_manifest(env, m)
        # claimed under the lock: a second resume at the same moment finds them live
        claim_runs(env, m, be, todo)
    if todo:
        launch_runs(env, m, be, todo, claimed=True)
    else:
        m.launch.update(state=LaunchState.LAUNCHED, done_at=now_iso())
        write_manifest(env, m)
    out = {"campaign": m.campaign, "backend": m.backend, "resumed": todo,
           "skipped": [rid for rid in m.run_ids if rid not in todo], "csv_changed": drift}
    if not todo:  # nothing to redo: the sweep ends now
        out["verdict"] = _verdict_now(ctx, env, m)
    return out


def _move_fsm(ctx, env: SweepEnv, m: Campaign) -> tuple[bool, list[str], list[str]]:
    """The campaign's verdict; once every run is final, SWEEP_RUNNING moves to COMPLETED or FAILED."""
    done, failed, live = verdict(env.paths, m)
    _settle_fsm(ctx, m.campaign, len(m.rows), done, failed)
    return done, failed, live


def _settle_fsm(ctx, campaign: str, nrows: int, done: bool, failed: list[str]) -> None:
    fsm_state = ctx.store.read().state
    if done and fsm_state == State.SWEEP_RUNNING:
        with contextlib.suppress(OpsError):  # somebody moved it meanwhile: theirs stands
            if failed:
                ctx.store.set(State.SWEEP_FAILED, "sweep-failed", expect=fsm_state,
                              note=f"campaign {campaign}: failed runs: {', '.join(failed)}")
            else:
                ctx.store.set(State.SWEEP_COMPLETED, "sweep-completed", expect=fsm_state,
                              note=f"campaign {campaign}: {nrows} runs ok")


def _next(state: State) -> str:
    return "inv sweep-start --resume" if fsm.refusal("sweep-resume", state) is None else "inv sweep-start"


# ------------------------------------------------------------------ on a pod that is not this machine
def _start_on_pod(ctx, csv: str | None, backend: str | None, *, resume: bool, dry_run: bool,
                  force: bool) -> dict[str, Any]:
    """sweep-start on the pod (opsrg.sweeps.remote): the CSV is read here first, so a bad row is
    reported with its file and line before anything is sent; the workflow state moves here."""
    from opsrg.pods import tool

    command = "sweep-resume" if resume else "sweep-start"
    enforce = ctx.s.wf_fsm_enforce
    args: dict[str, Any] = {"backend": backend, "resume": resume, "dry_run": dry_run, "force": force}
    path = Path(csv) if csv else ctx.loaded.local_path(ctx.s.sweep_csv)
    if not resume:
        rows = load_rows(str(path), _bases(ctx), ctx.s.run_command)
        args["csv"] = remote.stage(ctx, path, rows)
    elif path.is_file():  # --resume compares the campaign's rows with the file as it is now
        remote.stage(ctx, path, [])
    if dry_run:
        ctx.store.check(command, enforce=enforce)
        return remote.call(ctx, "start", args)
    tool.ensure(ctx)  # before the lock: a first install takes a while
    with ctx.store.claim(command, enforce=enforce, note=f"on {ctx.host.name}"):
        out = remote.call(ctx, "start", args)
    v = out.pop("verdict", None)  # nothing to run: the sweep ends now
    if v is not None:
        _settle_fsm(ctx, out["campaign"], v["rows"], v["done"], v["failed"])
    return out


def _dry_plan(env: SweepEnv, m: Campaign, be: Backend, todo: list[str],
              fresh: frozenset[str] = frozenset()) -> dict[str, Any]:
    """What a launch of ``todo`` would start, in the one shape of :class:`~opsrg.sweeps.backend.PlannedJob`."""
    jobs, extra = be.plan(env, m, todo, fresh)
    return {"campaign": m.campaign, "backend": be.name, "dry_run": True, "runs": todo, **extra,
            "jobs": [j.to_json() for j in jobs]}


Pass = tuple[Campaign, list[dict[str, Any]], dict[str, Any]]  # one monitor pass: the campaign, its rows, the verdict


def monitor(ctx, campaign: str | None = None, metrics: list[str] | None = None) -> Pass:
    """One monitor pass: settle a launch cut short, advance the manifests, reconcile them with the
    summaries, then move the FSM when every run is final. Rows carry ``metrics`` (default
    SWEEP_METRICS)."""
    if remote.is_remote(ctx):
        m, rows, v = remote.monitor_answer(remote.call(ctx, "monitor", {"campaign": campaign, "metrics": metrics}))
        _settle_fsm(ctx, m.campaign, len(m.rows), v["done"], v["failed"])
        state = ctx.store.read().state
        return m, rows, {**v, "fsm": state.value, "next": _next(state)}
    env = SweepEnv.from_context(ctx)
    m = load_manifest(env.paths, campaign)
    be = backend_for(m.backend)
    settled = settle_launch(env, m, be)
    be.refresh(env, m)
    reconcile_runs(env.paths, m)
    done, failed, live = _move_fsm(ctx, env, m)
    state = ctx.store.read().state
    nxt = _next(state)
    return m, status_rows(env, m, metrics if metrics is not None else metric_names(ctx)), {
        "done": done, "failed": failed, "running": live, "fsm": state.value,
        "wake_at": None if done else be.wake_at(env, m), "scheduler_unreachable": be.unreachable,
        "launch": m.launch.get("state", "launched"), "settled": settled, "next": nxt}


def cancel(ctx, run_id: str | None = None) -> list[str]:
    if remote.is_remote(ctx):
        if run_id is not None:
            return remote.call(ctx, "cancel", {"run_id": run_id})
        with ctx.transition("sweep-cancel"):
            return remote.call(ctx, "cancel", {"run_id": None})
    env = SweepEnv.from_context(ctx)
    m = load_manifest(env.paths)
    be = backend_for(m.backend)
    ids = m.run_ids
    if run_id is not None:
        if run_id not in ids:
            raise InputError(f"no run {run_id!r} in campaign {m.campaign} (runs: {', '.join(ids)})")
        be.cancel(env, m, [run_id])
        return [run_id]
    settle_launch(env, m, be)
    todo = sorted(set(m.todo) | set(m.launch.get("runs", [])))
    alive = [r for r in todo if be.alive(env, m, r)]
    with ctx.transition("sweep-cancel"):
        be.cancel(env, m, todo)
    return [r for r in alive if runs.state_of(env.paths, r) == RunState.CANCELLED]


def follow(ctx, campaign: str | None = None, *, wait: bool = True, every: float | None = None,
           timeout: float | None = None, sleep=None) -> Iterator[Pass]:
    """Monitor passes until every run is final (only one without ``wait``), yielding each.

    Between passes it sleeps ``every`` seconds, or, when ``every`` is None, a backed-off delay
    that starts short again whenever a run moved (opsrg.sweeps.slurm.watcher.backoff), cut short
    at the next time limit the backend says is due (``wake_at``: a Slurm TIMEOUT) and then once a
    second for a while. Where the pod is this machine, that sleep also ends within 0.2 s of the
    files the backend watches announcing an end (``Backend.end_watch``: tmux's run manifests,
    Slurm's end markers). ``sleep``: a stand-in for
    those waits (tests). Past ``timeout`` seconds it raises :class:`StillRunning`.
    """
    t0, seen, env = time.monotonic(), None, None
    delays = backoff(slow=10.0, cap=30.0)
    while True:
        m, rows, v = monitor(ctx, campaign)
        yield m, rows, v
        if not wait or v["done"]:
            return
        now = [(r["state"], r["step"]) for r in rows]
        if now != seen:  # progress: poll soon again
            seen, delays = now, backoff(slow=10.0, cap=30.0)
            next(delays)
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise StillRunning(f"still running after {timeout:g}s: {', '.join(v['running'])}",
                               hint="inv sweep-status")
        delay = every if every is not None else _due(next(delays), v.get("wake_at"))
        if sleep is not None:
            sleep(delay)
        elif every is None and not remote.is_remote(ctx) and (
                watch := backend_for(m.backend).end_watch(env := env or SweepEnv.from_context(ctx), m, v["running"])):
            _nap(delay, watch)
        else:
            time.sleep(delay)


def _due(delay: float, wake_at: float | None) -> float:
    """``delay``, cut short at an end due (``wake_at``), then once a second for two minutes after it.
    (Each look is one scheduler query and a pass over the campaign's records: at 200 elements ending
    one after another, polls twice a second took CPU from the jobs themselves, 1.06x the floor.)"""
    if not wake_at:
        return delay
    left = wake_at - time.time()
    if left > 0:
        return min(delay, left + 1.0)
    return min(delay, 1.0) if left > -TIMEOUT_WATCH else delay


NAP_STEP = 0.2
TIMEOUT_WATCH = 120.0  # seconds after a job's limit during which the monitor polls each second
# (Slurm ends an over-limit job within its KillWait, 30 s by default, of the limit)


def _nap(delay: float, ended) -> None:
    end = time.monotonic() + delay
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(NAP_STEP, left))
        if ended():
            return
