"""Every task of opsrg's command line: `opsrg --list` (or `inv --list` in a project with a
``tasks.py``) shows them, `opsrg TASK --help` their options.

Each task is a thin wrapper over the package. Heavy imports live inside the tasks so that quick
commands (`opsrg fsm-status`) start fast. Errors from the package carry their exit code; they are
turned into a message and an exit status here, in one place.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shlex
import sys
from pathlib import Path

from invoke import Collection, Exit, task

from opsrg.core.ui import hint, prog

PROG = prog()


def _ctx():
    from opsrg.context import Context

    ctx = Context.load()
    if ctx.loaded.env_file is None:  # never another project's settings, nor state scattered here
        from opsrg.core.errors import ConfigError
        from opsrg.core.settings import DEFAULT_ENV_NAME, ENV_FILE_VAR

        raise ConfigError(f"no {DEFAULT_ENV_NAME} in {Path.cwd()} or any folder above it",
                          hint=f"run `{PROG} init --script YOUR_SCRIPT` in your project's folder, or set "
                               f"{ENV_FILE_VAR} to a settings file")
    return ctx


@contextlib.contextmanager
def _step(command: str, resume: str | None = None):
    """A pod step: the FSM transition of ``command``, whose host failure ends with how to resume it."""
    from opsrg.pods import lifecycle as pod

    ctx = _ctx()
    with ctx.transition(command), pod.resume_hint(resume or f"{PROG} {command}"):
        yield ctx


def ops(fn):
    """Map opsrg errors to a one-paragraph message on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from opsrg.core.errors import OpsError

        if any(v in ("--help", "-h") for v in [*args[1:], *kwargs.values()]):
            # Invoke hands `--help` to a positional argument as its value: show the help instead.
            import os

            os.execvp(sys.argv[0], [sys.argv[0], "--help", fn.__name__.replace("_", "-")])
        import inspect

        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
        for name, param in list(inspect.signature(fn).parameters.items())[1:]:
            if param.default is inspect.Parameter.empty and bound.arguments.get(name) is None:
                flag = name.replace("_", "-")
                print(f"error: missing required option --{flag} (see: {PROG} {fn.__name__.replace('_', '-')} --help)",
                      file=sys.stderr)
                raise Exit(code=2)
        try:
            return fn(*args, **kwargs)
        except OpsError as e:
            print(hint(f"error: {e}"), file=sys.stderr)
            raise Exit(code=e.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise Exit(code=130) from None
        except OSError as e:  # a full disk, a folder that cannot be written: one line, not a traceback
            line = _os_error_line(e)
            if line is None:  # no file named: a bug, not the user's disk; keep the traceback
                raise
            print(f"error: {line}", file=sys.stderr)
            raise Exit(code=2) from None

    return wrapper


def _os_error_line(e: OSError) -> str | None:
    """``disk full at PATH`` (ENOSPC, EDQUOT), or ``STRERROR at PATH`` for another OSError that names a file;
    None for one that names none. A full disk fails in write(), which names no file: then the path is the
    one the innermost writer on the traceback was writing (its ``path``), if any."""
    import errno
    import os

    path = e.filename
    if path is None:
        tb, names = e.__traceback__, ("path", "filename", "dst", "target")
        while tb is not None:
            for name in names:
                v = tb.tb_frame.f_locals.get(name)
                if isinstance(v, (str, os.PathLike)) and str(v):
                    path = v
            tb = tb.tb_next
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" at {os.fsdecode(path)}" if path is not None else ""
        return f"disk full{where} ({e.strerror or e}): free space there, then run the command again"
    if e.filename is None:
        return None
    other = f" -> {os.fsdecode(e.filename2)}" if e.filename2 is not None else ""
    return f"{e.strerror or e} at {os.fsdecode(e.filename)}{other}"


def _number(option: str, value, *, zero_ok: bool = False) -> float | None:
    """The value of a numeric ``--OPTION`` (None when not given): a finite number > 0 (>= 0 with
    ``zero_ok``), else InputError naming the option. ``10s``, ``nan`` and ``inf`` are refused."""
    import math

    from opsrg.core.errors import InputError

    if value is None:
        return None
    want = "a number >= 0" if zero_ok else "a positive number"
    try:
        x = float(str(value).strip())
    except ValueError:
        raise InputError(f"--{option} must be {want}, got {value!r}") from None
    if not math.isfinite(x) or x < 0 or (x == 0 and not zero_ok):
        raise InputError(f"--{option} must be {want}, got {value!r}")
    return x


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# ------------------------------------------------------------------ settings
@task(help={"json": "print machine-readable JSON"})
@ops
def config_show(c, json=False):
    """Print the resolved settings (secrets masked) and where each value came from, and the
    variables runs get from this shell (RUN_ENV_PASS; secrets masked)."""
    from opsrg.core import runenv

    ctx = _ctx()
    values, sources = ctx.loaded.masked(), ctx.loaded.sources
    passed = runenv.masked(ctx.run_env(), runenv.patterns(ctx.s.run_env_secrets))
    if json:
        _print_json({"env_file": str(ctx.loaded.env_file), "settings": {
            k: {"value": v, "source": str(sources[k])} for k, v in values.items()}, "run_env": passed})
        return
    from opsrg.core.ui import table

    print(f"settings file: {ctx.loaded.env_file or '(none: defaults and environment)'}")
    table(["key", "value", "source"], [[k, "" if v is None else str(v), str(sources[k])] for k, v in values.items()])
    if passed:
        table(["variable runs get (RUN_ENV_PASS)", "value"], [[k, v] for k, v in passed.items()])


@task(help={"script": "your program, relative to this folder (e.g. train.py)",
            "config": "a config file it takes as its first argument (default: none)",
            "tasks_py": "also write a tasks.py, so that `inv` has every task too",
            "force": "overwrite files that exist"})
@ops
def init(c, script, config="", tasks_py=False, force=False):
    """Write this project's starter workflow.env (the local pod, RUN_COMMAND for SCRIPT) and a sweep CSV."""
    from pathlib import Path

    from opsrg.ops.init import init as write

    for p in write(Path.cwd(), script, config, tasks_py=tasks_py, force=force):
        print(f"wrote {p}")
    print(f"next: {PROG} pod-up && {PROG} bootstrap && {PROG} checkout && {PROG} sweep-start")


# ------------------------------------------------------------------ FSM
@task(help={"json": "print machine-readable JSON"})
@ops
def fsm_status(c, json=False):
    """Show the workflow state and the commands allowed in it."""
    from opsrg.core import fsm

    ctx = _ctx()
    ws = ctx.store.read()
    allowed = fsm.next_commands(ws.state)
    if json:
        _print_json({"state": ws.state.value, "updated_at": ws.updated_at, "command": ws.command,
                     "state_file": str(ctx.state_file), "transitions_allowed": allowed})
        return
    print(f"state: {ws.state.value}" + (f" (since {ws.updated_at}, by '{ws.command}')" if ws.updated_at else ""))
    print(f"state file: {ctx.state_file}")
    print(f"next: {', '.join(allowed) or '(none)'}")


@task(help={"json": "print machine-readable JSON", "last": "only the newest N transitions"})
@ops
def fsm_history(c, json=False, last=None):
    """Show the recorded state transitions, oldest first (--last N: the newest N)."""
    n = _number("last", last)
    if n is not None and not n.is_integer():
        from opsrg.core.errors import InputError

        raise InputError(f"--last must be a whole number, got {last!r}")
    n = None if n is None else int(n)
    history = _ctx().store.history(last=n)
    if json:
        _print_json(history)
        return
    from opsrg.core.ui import table

    table(["at", "from", "to", "command", "user@host"],
          [[h.get("at", ""), h.get("from", ""), h.get("to", ""), h.get("command", ""),
            f"{h.get('user', '')}@{h.get('host', '')}"] for h in history])


@task(positional=["state"], help={"state": "the state to set, e.g. CHECKED_OUT"})
@ops
def fsm_reset(c, state):
    """Force the workflow state (recorded in the history as 'fsm-reset')."""
    from opsrg.core import fsm

    ctx = _ctx()
    target = fsm.parse_state(state)
    ws = ctx.store.set(target, "fsm-reset")
    print(f"state: {ws.state.value}")


@task(positional=["command"], help={"command": "a command name, e.g. sweep-start"})
@ops
def fsm_check(c, command):
    """Exit 0 when COMMAND may run now; else exit 2 with the message the command would give."""
    from opsrg.core import fsm

    state = _ctx().store.read().state
    fsm.check(command, state)
    print(f"'{command}' may run in state {state.value}")


# ------------------------------------------------------------------ pod lifecycle
@task
@ops
def pod_up(c):
    """Make the pod ready (local: folders; ssh: it answers; lium: rent it). INIT -> POD_READY."""
    from opsrg.pods import lifecycle as pod

    with _step("pod-up") as ctx:
        print(pod.up(ctx))


@task(help={"json": "print machine-readable JSON"})
@ops
def pod_status(c, json=False):
    """Reachability, uptime, disk, GPUs, tmux sessions and workflow state (unreachable is not failure)."""
    from opsrg.pods import lifecycle as pod

    info = pod.status(_ctx())
    if json:
        _print_json(info)
        return
    for k, v in info.items():
        print(f"{k}: {v}")


@task
@ops
def pod_down(c):
    """Forget the pod (lium: give it back with `lium rm`); files on ssh/local pods stay. -> INIT."""
    from opsrg.pods import lifecycle as pod

    with _step("pod-down") as ctx:
        print(pod.down(ctx))


@task
@ops
def bootstrap(c):
    """Check/install prerequisites, run BOOTSTRAP_SCRIPT, copy workflow.env. POD_READY -> BOOTSTRAPPED."""
    from opsrg.pods import lifecycle as pod

    with _step("bootstrap") as ctx:
        print(pod.bootstrap(ctx))


@task
@ops
def checkout(c):
    """Clone/update REPO_URL at CHECKOUT_BRANCH or CHECKOUT_PR on the pod, build its venv. -> CHECKED_OUT."""
    from opsrg.pods import lifecycle as pod

    with _step("checkout") as ctx:
        print(pod.checkout(ctx))


@task(help={"dry_run": "list what would be sent, send nothing", "src": "folder to send (default: project root)",
            "delete": "also delete files on the pod that are gone locally"})
@ops
def push(c, dry_run=False, src=None, delete=False):
    """rsync the local working tree to OPS_REMOTE_REPO on the pod (resumable)."""
    from opsrg.pods import transfer

    with _step("push", f"{PROG} push" + (f" --src {src}" if src else "")) as ctx:
        print(transfer.push(ctx, src=src, dry_run=dry_run, delete=delete))


@task(help={"dry_run": "list what would be fetched, fetch nothing"})
@ops
def pull(c, dry_run=False):
    """rsync the pod's outputs folder to LOCAL_ARTIFACTS_DIR (resumable)."""
    from opsrg.pods import transfer

    with _step("pull") as ctx:
        print(transfer.pull(ctx, dry_run=dry_run))


@task(positional=["run_id"], help={"run_id": "the run folder under OPS_REMOTE_OUTPUTS_DIR"})
@ops
def fetch_run(c, run_id):
    """Fetch one run to LOCAL_ARTIFACTS_DIR/RUN_ID, verified by sha256; FETCHED.json marks it complete."""
    from opsrg.pods import transfer

    with _step("fetch-run", f"{PROG} fetch-run {run_id}") as ctx:
        print(transfer.fetch_run(ctx, run_id).describe())


# ------------------------------------------------------------------ tracked tasks
@task(positional=[], help={
    "id": "task id: [A-Za-z0-9._-], no '..'",
    "cmd": "the command, run by bash",
    "timeout_secs": "kill the task (TERM, then KILL) after this many seconds",
    "replace": "start again over a finished task of the same id (the old folder is kept aside)",
    "cwd": "working directory of the command (default: the pod's checkout, OPS_REMOTE_REPO, else the task folder)",
    "json": "print the record as JSON",
})
@ops
def task_run(c, id, cmd, timeout_secs=None, replace=False, cwd=None, json=False):
    """Start CMD as a tracked task in tmux and return at once: in the pod's checkout, with its
    .venv/bin first on PATH (as sweep rows run)."""
    timeout = _number("timeout-secs", timeout_secs)
    ctx = _ctx()
    with ctx.transition("task-run"):
        rec = ctx.tasks.run(id, cmd, timeout_secs=timeout, replace=replace, cwd=cwd,
                            workdir=ctx.pod_path(ctx.s.ops_remote_repo), env=ctx.run_env(),
                            env_file=ctx.run_env_file)
    if json:
        _print_json(rec.to_json())
    else:
        print(f"started task {id} ({rec.state}); logs: {ctx.tasks.paths(id).log}")
        print(f"  {PROG} task-wait --id {id}    {PROG} task-logs --id {id} --follow")


@task(positional=[], help={"id": "task id", "json": "print machine-readable JSON"})
@ops
def task_status(c, id, json=False):
    """Show one task's record (a dead supervisor is detected and recorded as lost)."""
    from opsrg.tracked.records import describe

    rec = _ctx().tasks.status(id)
    if json:
        _print_json(rec.to_json())
    else:
        print(describe(rec))


@task(positional=[], help={"id": "task id", "timeout_secs": "stop waiting after this many seconds (exit 124)",
            "quiet": "print nothing while waiting"})
@ops
def task_wait(c, id, timeout_secs=None, quiet=False):
    """Wait for a task to end: exit 0 success, 1 failed, 124 timed out (or the wait timed out)."""
    from opsrg.tracked.records import EXIT_CODES, WAIT_TIMEOUT_EXIT, describe

    tasks = _ctx().tasks
    rec, waited_out = tasks.wait(id, _number("timeout-secs", timeout_secs))
    if waited_out:
        print(f"still {rec.state} after waiting {timeout_secs}s: {describe(rec)}", file=sys.stderr)
        raise Exit(code=WAIT_TIMEOUT_EXIT)
    if not quiet:
        print(describe(rec), flush=True)  # before the hints on stderr, in a terminal that shows both
    if EXIT_CODES[rec.state]:
        import shlex

        tail = tasks.tail(id, 5)
        if tail:
            print("its log ends:\n" + "\n".join(f"  {ln}" for ln in tail), file=sys.stderr)
        print(f"to run it again: {PROG} task-run --id {id} --replace --cmd {shlex.quote(rec.command)}"
              + (f" --timeout-secs {rec.timeout_secs:g}" if rec.timeout_secs else ""), file=sys.stderr)
        raise Exit(code=EXIT_CODES[rec.state])


@task(help={"json": "print machine-readable JSON (every task)",
            "all": "show every task (default: live ones and the newest 30 that ended)"})
@ops
def task_list(c, json=False, all=False):
    """List tracked tasks with state, exit code, duration and reason (live ones and the newest that ended)."""
    recs = _ctx().tasks.list(on_error=lambda e: print(f"warning: {e}", file=sys.stderr))
    if json:
        _print_json([r.to_json() for r in recs])
        return
    from opsrg.core.ui import table
    from opsrg.tracked.records import recent

    shown = recs if all else recent(recs)
    table(["id", "state", "exit", "elapsed", "started", "reason"],
          [[r.id, r.state.value, "" if r.exit_code is None else str(r.exit_code),
            "" if r.elapsed is None else f"{r.elapsed:.1f}s", r.started_at[:19], r.reason] for r in shown])
    if len(shown) < len(recs):
        print(f"{len(recs) - len(shown)} older ended tasks not shown: {PROG} task-list --all")


@task(positional=[], help={"id": "task id", "follow": "keep printing until the task ends (Ctrl-C stops looking only)"})
@ops
def task_logs(c, id, follow=False):
    """Print a task's stdout.log (stdout and stderr together)."""
    for chunk in _ctx().tasks.logs(id, follow=follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()


@task(positional=[], help={"id": "task id"})
@ops
def task_attach(c, id):
    """Attach your terminal to the task's tmux window (detach with C-b d)."""
    import os

    argv = _ctx().tasks.attach_argv(id)
    os.execvp(argv[0], argv)


@task(positional=[], help={"id": "task id"})
@ops
def task_kill(c, id):
    """Stop a task's whole process tree; it is recorded as failed (killed by task-kill)."""
    from opsrg.tracked.records import describe

    print(describe(_ctx().tasks.kill(id)))


# ------------------------------------------------------------------ sweeps
@task(help={"force": "overwrite an existing file"})
@ops
def sweep_csv_template(c, force=False):
    """Write a starter sweep CSV at SWEEP_CSV (refuses to overwrite without --force)."""
    from opsrg.core.errors import InputError
    from opsrg.sweeps.rows import TEMPLATE

    ctx = _ctx()
    path = ctx.loaded.local_path(ctx.s.sweep_csv)
    if path.exists() and not force:
        raise InputError(f"{path} exists; not overwriting it", hint="pass --force, or set SWEEP_CSV to a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEMPLATE, encoding="utf-8")
    print(f"wrote {path}")


@task(iterable=["axis", "extra"], help={
    "spec": "a grid spec (TOML: config, seeds, run_id, form, extra, [axes]) instead of the options below",
    "config": "the file every row runs with (your own config, or a run config TOML)",
    "axis": "NAME=V1,V2,...: one axis of the product (repeat it: --axis lr=1e-3,3e-3 --axis batch_size=32,64)",
    "seeds": "seeds of every point, e.g. 1-3,7 (default 1)",
    "id": "run id template over the axes and {seed} (default: every axis, then s{seed})",
    "form": "how a value becomes an override: --{key}={value} (default) or {key}={value} for RG rows",
    "extra": "a word put on every row (repeatable), e.g. --extra=--max_iters=200",
    "out": "the CSV to write (default SWEEP_CSV)",
    "force": "overwrite an existing CSV",
    "json": "print the rows as JSON"})
@ops
def sweep_grid(c, spec=None, config=None, axis=None, seeds="1", id="", form="", extra=None, out=None, force=False,
               json=False):
    """Write a sweep CSV from a grid: the product of named axes and seeds (the CSV stays the record)."""
    from opsrg.core.errors import InputError
    from opsrg.sweeps import commands, grid

    ctx = _ctx()
    if spec:
        g = grid.from_toml(ctx.loaded.local_path(spec) if not Path(spec).is_file() else Path(spec))
    else:
        if not config or not axis:
            raise InputError("sweep-grid needs --config and at least one --axis (or --spec FILE)",
                             hint=f"e.g. {PROG} sweep-grid --config config/train_small.py --axis lr=1e-3,3e-3 --seeds 1-2")
        g = grid.Grid(config=config, axes=dict(grid.parse_axis(a) for a in axis), seeds=grid.parse_seeds(seeds),
                      run_id=id, form=form, extra=list(extra or []))
    path, rows = commands.write_grid(ctx, g, out, force=force)
    if json:
        _print_json({"csv": str(path), "rows": rows})
        return
    print(f"wrote {path}: {len(rows)} rows ({' x '.join(str(len(v)) for v in g.axes.values())} points x "
          f"{len(g.seeds)} seeds)")
    print(f"  {PROG} sweep-start --dry-run" + ("" if out is None else f" --csv {path}"))


@task(help={"csv": "sweep CSV (default SWEEP_CSV)", "backend": "tmux or slurm (default SWEEP_BACKEND)",
            "resume": "rerun the failed, lost and missing runs of the last campaign",
            "dry_run": "print the plan (jobs, dependencies, scripts); write and submit nothing",
            "force": "recompute rows whose folder already holds a completed run (kept under _replaced/)",
            "json": "print machine-readable JSON"})
@ops
def sweep_start(c, csv=None, backend=None, resume=False, dry_run=False, force=False, json=False):
    """Validate the CSV and start a campaign (from CHECKED_OUT, SWEEP_COMPLETED or SWEEP_FAILED), or
    --resume the last one (from SWEEP_FAILED): -> SWEEP_RUNNING."""
    from opsrg.sweeps import commands

    out = commands.start(_ctx(), csv, backend, resume=resume, dry_run=dry_run, force=force)
    if out.get("csv_changed") and not json:
        print(hint(f"note: {out['csv_changed']}"), file=sys.stderr)
    if json:
        _print_json(out)
    elif dry_run:
        print(f"dry run ({out['backend']}): {len(out['jobs'])} jobs for runs {', '.join(out['runs'])}")
        for j in out["jobs"]:
            print(f"--- {j['key']} after {', '.join(j['after']) or '-'}")
            print(j["script"])
    elif resume:
        print(f"campaign {out['campaign']} resumed: {', '.join(out['resumed']) or 'nothing to redo'}")
    else:
        print(f"campaign {out['campaign']} started on {out['backend']}: {len(out['runs'])} runs"
              + (f", {len(out['reused'])} reused (identical completed runs): {', '.join(out['reused'])}"
                 if out["reused"] else ""))
        print(f"  {PROG} sweep-status    {PROG} sweep-monitor --wait")


def _exit(r) -> str:
    """The exit column: the status, or how it ended without one (timeout, a signal)."""
    if r.get("timed_out"):
        return "timeout"
    if r.get("signal"):
        return f"SIG{r['signal']}"
    return "" if r["exit_code"] is None else str(r["exit_code"])


def _metric(v) -> str:
    return "" if v is None else f"{v:.4g}"


def _sweep_table(rows):
    from opsrg.core.ui import table

    names = list(rows[0].get("metrics", {})) if rows else []
    table(["run", "state", "step", "elapsed", "jobs", "exit", *names, "reason", "ok"],
          [[r["run_id"], r["state"], r["step"], "" if r["elapsed_secs"] is None else f"{r['elapsed_secs']:.0f}s",
            " ".join(r["job_ids"][:4]) + (" ..." if len(r["job_ids"]) > 4 else ""),
            _exit(r),
            *(_metric(r["metrics"].get(n)) for n in names), r["reason"][:60],
            {True: "yes", False: "no", None: ""}[r["summary_ok"]]] for r in rows])


def _sweep_exit(verdict):
    if verdict["done"] and verdict["failed"]:
        nxt = hint(verdict.get("next", "inv sweep-start --resume"))
        what = "rerun only those with" if nxt.endswith("--resume") else "start the sweep again with"
        print(f"failed runs: {', '.join(verdict['failed'])}; after fixing the cause, {what}: {nxt}", file=sys.stderr)
        raise Exit(code=1)


@task(help={"json": "print machine-readable JSON", "watch": "refresh the table until every run is final",
            "campaign": "campaign id (default: the last one)"})
@ops
def sweep_status(c, json=False, watch=False, campaign=None):
    """One row per run (state, step, elapsed, jobs, exit/reason, summary ok); runs the monitor once."""
    from opsrg.sweeps import commands

    for m, rows, verdict in commands.follow(_ctx(), campaign, wait=watch, every=2.0):
        if json:
            _print_json({"campaign": m.campaign, "backend": m.backend, "runs": rows, **verdict})
            continue
        if watch:
            print("\033[2J\033[H", end="")
        print(f"campaign {m.campaign} ({m.backend}), workflow state {verdict['fsm']}")
        _sweep_table(rows)
        sys.stdout.flush()  # each frame whole, also through a pipe (tee, less)
    _sweep_exit(verdict)


@task(help={"campaign": "campaign id (default: the last one)",
            "metric": "rank by this metric (default: the first of SWEEP_METRICS)",
            "goal": "min or max (default SWEEP_METRIC_GOAL)",
            "png": "where to write the plot (default LOCAL_ARTIFACTS_DIR/<campaign>-report.png)",
            "json": "print machine-readable JSON"})
@ops
def sweep_report(c, campaign=None, metric=None, goal=None, png=None, json=False):
    """The campaign's runs ranked by a metric, with the parameters they sweep; a PNG of the metric
    against each parameter."""
    from opsrg.core.errors import InputError
    from opsrg.sweeps import commands, report

    ctx = _ctx()
    names = commands.metric_names(ctx)
    metric = metric or (names[0] if names else None)
    if not metric:
        raise InputError("no metric to rank the runs by",
                         hint="set SWEEP_METRICS (e.g. val_loss,acc) in workflow.env, or pass --metric NAME")
    goal = goal or ctx.s.sweep_metric_goal
    if goal not in ("min", "max"):
        raise InputError(f"--goal {goal!r}: min or max")
    m, rows, _ = commands.monitor(ctx, campaign, [metric, *(n for n in names if n != metric)])
    ranked = report.rank(m.rows, rows, metric, goal)
    path = Path(png) if png else ctx.artifacts_dir / f"{m.campaign}-report.png"
    drawn, why = None, ""
    try:
        from opsrg.ops.report import plot

        drawn = plot(ranked, metric, path, f"campaign {m.campaign}: {metric} ({goal})")
        why = "" if drawn else "no plot: no parameter varies, or no run reports the metric"
    except ImportError:
        why = "no plot: matplotlib is not installed (pip install 'opsrg[rg]')"
    if json:
        _print_json({"campaign": m.campaign, "metric": metric, "goal": goal, "runs": ranked,
                     "png": str(drawn) if drawn else None, "note": why})
        return
    from opsrg.core.ui import table

    params = list(ranked[0]["params"]) if ranked else []
    mets = list(ranked[0]["metrics"]) if ranked else []
    print(f"campaign {m.campaign}: runs by {metric} ({goal})")
    table(["#", "run", "state", *params, *mets],
          [[str(i), x["run_id"], x["state"], *("(default)" if x["params"][k] is None else str(x["params"][k])
                                                for k in params),
            *(_metric(x["metrics"].get(k)) for k in mets)] for i, x in enumerate(ranked, 1)])
    print(f"plot: {drawn}" if drawn else why)


@task(help={"wait": "keep polling (backed off) until every run is final; exit 1 if any failed",
            "timeout_secs": "with --wait: give up after this many seconds (exit 124)",
            "campaign": "campaign id (default: the last one)"})
@ops
def sweep_monitor(c, wait=False, timeout_secs=None, campaign=None):
    """Advance run manifests from tasks, the scheduler and marker files; move the FSM at the end."""
    from opsrg.sweeps import commands

    limit = _number("timeout-secs", timeout_secs)
    for last in commands.follow(_ctx(), campaign, wait=wait, timeout=limit):
        verdict = last[2]
        if verdict.get("settled"):
            print(verdict["settled"], file=sys.stderr, flush=True)
        if verdict.get("scheduler_unreachable"):
            print(f"scheduler unreachable ({verdict['scheduler_unreachable']}): runs keep their last known "
                  "state; polling on", file=sys.stderr, flush=True)
    m, rows, verdict = last
    print(f"campaign {m.campaign}: {len(rows) - len(verdict['failed']) - len(verdict['running'])} completed, "
          f"{len(verdict['failed'])} failed/cancelled, {len(verdict['running'])} unfinished; "
          f"workflow state {verdict['fsm']}")
    if verdict["failed"]:
        print(f"failed: {', '.join(verdict['failed'])}")
    _sweep_exit(verdict)


@task(help={"campaign": "campaign id (default: the last one)",
            "detached": "build the view and print how to attach to it, without attaching",
            "json": "with --detached: print what was built as JSON"})
@ops
def sweep_attach(c, campaign=None, detached=False, json=False):
    """A live view of the sweep in tmux on its pod (tmuxp): sweep-status --watch, and the log of each
    running run; on opsrg's own tmux socket, through ssh -t on a remote pod. Detach: Ctrl-b d."""
    from opsrg.ops import dashboard

    built = dashboard.build(_ctx(), campaign)
    if detached or not sys.stdin.isatty():
        if json:
            _print_json(built)
            return
        print(f"view {built['session']} of campaign {built['campaign']} ({len(built['runs'])} running runs) "
              f"on tmux socket {built['socket']}; attach with:\n  {shlex.join(built['attach'])}")
        return
    dashboard.attach(built["attach"])


@task(help={"run": "cancel only this run (default: the whole sweep)"})
@ops
def sweep_cancel(c, run=None):
    """Cancel the sweep or one run (scancel / stop the tmux task); runs marked cancelled, outputs kept."""
    from opsrg.sweeps import commands

    done = commands.cancel(_ctx(), run)
    print(f"cancelled: {', '.join(done) or 'nothing was running'}")


@task(help={"verify": "check every row against the run manifests and the scheduler"})
@ops
def slurm_ledger(c, verify=False):
    """Print the Slurm job ledger (docs/slurm_job_list.md under the outputs folder)."""
    from opsrg.sweeps.runs import SweepPaths
    from opsrg.sweeps.slurm import ledger

    ctx = _ctx()
    paths = SweepPaths(ctx.outputs_dir)
    if not verify:
        print(paths.ledger.read_text(encoding="utf-8") if paths.ledger.exists() else f"{paths.ledger}: no ledger yet")
        return
    from opsrg.sweeps.slurm.cli import Slurm, base_of

    def known(ids):
        infos = Slurm(ctx.host).query([base_of(i) for i in ids])
        return {i for i in ids if i in infos or any(base_of(j) == i for j in infos)}

    problems = ledger.verify(paths, known)
    for p in problems:
        print(p)
    print(f"{len(ledger.read_entries(paths))} ledger rows, {len(problems)} problems")
    if problems:
        raise Exit(code=1)


# ------------------------------------------------------------------ doctor
@task(help={"fix": "repair what is found (mark lost, remove stale markers and temp files)",
            "json": "print machine-readable JSON"})
@ops
def doctor(c, fix=False, json=False):
    """Reconcile records with reality: dead tasks, torn writes, markers without files. Exit 1 if unresolved."""
    from opsrg.ops import doctor as dr

    findings = dr.run(_ctx(), fix=fix)
    if json:
        _print_json(dr.as_json(findings))
    else:
        for f in findings:
            print(f.line())
        left = [f for f in findings if not f.fixed and f.repair]
        print(f"{len(findings)} finding(s), {sum(f.fixed for f in findings)} fixed, {len(left)} left"
              + (f"; run `{PROG} doctor --fix` to repair them" if left and not fix else ""))
    if any(not f.fixed and f.repair for f in findings):
        raise Exit(code=1)


# ------------------------------------------------------------------ artifacts
@task(help={"json": "print machine-readable JSON"})
@ops
def artifacts_ls(c, json=False):
    """List the runs in the outputs folder: state, size, identity, age, live writer."""
    from opsrg.ops import artifacts

    runs = artifacts.list_runs(_ctx())
    if json:
        _print_json(artifacts.as_json(runs))
        return
    from opsrg.core.ui import human_size, table

    table(["run", "state", "size", "identity", "age (days)", "live task"],
          [[r.run_id, r.state, human_size(r.size_bytes), r.identity or "", f"{r.age_days:.2f}",
            r.live_task or ""] for r in runs])


@task(positional=[], help={"ttl_days": "remove runs untouched for this many days",
                           "dry_run": "list what would be removed, remove nothing"})
@ops
def artifacts_gc(c, ttl_days, dry_run=False):
    """Remove expired runs; never an incomplete run that a live task still writes."""
    from opsrg.core.ui import human_size
    from opsrg.ops import artifacts

    ttl = _number("ttl-days", ttl_days, zero_ok=True)
    removed, kept = artifacts.gc(_ctx(), ttl, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for r in removed:
        print(f"{verb} {r.run_id} ({r.state}, {human_size(r.size_bytes)}, {r.age_days:.1f} days)")
    for r, why in kept:
        print(f"kept {r.run_id}: {why}")
    print(f"{len(removed)} run(s) {verb}, {len(kept)} kept")


# `inv` finds this in a project's tasks.py (`from opsrg.cli.tasks import ns`); `opsrg` serves it itself
ns = Collection.from_module(sys.modules[__name__])
