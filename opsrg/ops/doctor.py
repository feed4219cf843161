"""`inv doctor`: reconcile what the records say with what is true, and repair it with --fix.

Each check yields findings with their evidence; without ``fix`` nothing is changed (a doctor
that looks must not alter what it looks at). Checks work on the local outputs folder; tasks
are probed through their host, so a remote pod is reconciled where it runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from opsrg.context import Context
from opsrg.rg.run import RunPaths

TMP_AGE_SECS = 300.0
# A dotfile that merely looks like a temp file (what doctor once took for one: a last suffix of six
# letters or digits, or ``.tmp``): ``.model.pickle``, ``.env.backup``, ``.foo.tmp``. Without opsrg's
# marker (opsrg.atomic.TMP_RE) it is a user's file: reported, never deleted.
LOOKALIKE_RE = re.compile(r"^\..+\.([A-Za-z0-9]{6}|tmp)$")


@dataclass
class Finding:
    kind: str
    subject: str
    evidence: str
    repair: str
    fixed: bool = False

    def line(self) -> str:
        state = "fixed" if self.fixed else "found"
        return f"[{state}] {self.kind}: {self.subject}: {self.evidence}" + (
            f"\n        -> {'did' if self.fixed else 'fix'}: {self.repair}" if self.repair else "")


def check_tasks(ctx: Context, fix: bool) -> Iterator[Finding]:
    """Tasks recorded pending/running whose supervisor is dead."""
    tasks = ctx.tasks
    for rec in tasks.list(check=False):
        if rec.state.is_terminal:
            continue
        probe = tasks.probe(rec.id)
        if probe["alive"] is not False:
            continue
        f = Finding("task", rec.id, f"recorded {rec.state} but {probe['evidence']}",
                    "record it failed (lost) with this evidence")
        if fix:
            f.fixed = tasks.status(rec.id).state.is_terminal
        yield f


def check_temp_files(root: Path, fix: bool) -> Iterator[Finding]:
    """Leftovers of opsrg's own writers killed mid-write, once TMP_AGE_SECS old (younger: maybe
    being written now). ``--fix`` deletes only what opsrg can prove it wrote: a regular file named
    with its temp marker (``.NAME.opsrg-XXXXXXXX.tmp``, opsrg.atomic) and a file inside one of its
    rsync folders (``.rsync-partial/``: a partial copy, or the temp file of a killed pass in
    ``.rsync-partial/.opsrg-tmp/``). A dotfile that only looks like a temp file is reported with no
    repair and never deleted; symlinks are never followed nor deleted."""
    import stat

    from opsrg.core.atomic import TMP_RE
    from opsrg.hosts.rsync import PARTIAL_DIR

    now = time.time()
    for dirpath, _, names in os.walk(root):
        in_partial = PARTIAL_DIR in Path(dirpath).relative_to(root).parts
        for n in names:
            if in_partial:
                what, ours = "an interrupted rsync pass (never a result; the next pass copies the file again)", True
            elif TMP_RE.match(n):
                what, ours = "an interrupted write (the file it was meant to replace is intact)", True
            elif LOOKALIKE_RE.match(n):
                what, ours = "", False
            else:
                continue
            path = Path(dirpath) / n
            try:
                st = path.lstat()
            except FileNotFoundError:  # its writer finished meanwhile
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            age = now - st.st_mtime
            if age < TMP_AGE_SECS:
                continue
            if not ours:
                yield Finding("lookalike", str(path), "named like a temp file but without opsrg's temp marker, "
                              "so not opsrg's: left alone (delete it yourself if it is a stray)", "")
                continue
            f = Finding("temp", str(path), f"{age:.0f}s old leftover of {what}", "delete it")
            if fix:
                path.unlink(missing_ok=True)
                f.fixed = True
            yield f


def check_locks(root: Path, fix: bool) -> Iterator[Finding]:
    """Locks are flock()s: the kernel frees them when the holder dies. Report ones held now."""
    for dirpath, _, names in os.walk(root):
        for n in names:
            if not n.endswith(".lock"):
                continue
            path = Path(dirpath) / n
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                yield Finding("lock", str(path), "held by a live process right now (a dead holder's "
                              "flock is released by the kernel, so this is not stale)", "")
            finally:
                os.close(fd)


def check_rg_runs(root: Path, fix: bool) -> Iterator[Finding]:
    """DONE/READY markers whose files are missing: resume would trust them."""
    for done in sorted(root.glob(f"*/{RunPaths.DONE_GLOB}")):
        m = RunPaths.DONE_RE.match(done.name)
        if not m:
            continue
        k, run = int(m.group(1)), RunPaths(done.parent)
        try:
            meta = json.loads(done.read_text())
        except ValueError:
            meta = None
        missing = [] if meta is not None else ["a readable marker"]
        mode = (meta or {}).get("mode", "fp")
        if mode == "fp":
            missing += [p.name for p in (run.unsym(k), run.sym(k)) if not p.exists()]
        if not missing:
            continue
        f = Finding("marker", f"{run.root.name}/{done.name}", f"step {k} marked done but missing {', '.join(missing)}",
                    f"remove the marker so `resume` recomputes step {k}")
        if fix:
            done.unlink(missing_ok=True)
            f.fixed = True
        yield f
    for ready in sorted(root.glob(f"*/{RunPaths.shard_glob()}/{RunPaths.READY_GLOB}")):
        part = ready.with_suffix(".npz")
        if part.exists():
            continue
        f = Finding("marker", str(ready.relative_to(root)), "shard marked READY but its partial histogram is "
                    "missing", "remove the marker so the shard is generated again")
        if fix:
            ready.unlink(missing_ok=True)
            f.fixed = True
        yield f


def check_sweep(ctx: Context, fix: bool, out: dict | None = None) -> Iterator[Finding]:
    """The latest sweep: manifests that lag their tasks or the scheduler, an FSM that lags its runs.

    With ``out`` (on a pod, for its client): the campaign's verdict goes there, and the workflow
    state, which is the client's, is left to the client."""
    from opsrg.core.errors import OpsError
    from opsrg.core.fsm import State
    from opsrg.sweeps import runs
    from opsrg.sweeps.campaign import SweepEnv, load_manifest, verdict
    from opsrg.sweeps.commands import backend_for, monitor
    from opsrg.sweeps.launch import launcher_gone, settle_launch
    from opsrg.sweeps.records import FINAL, LAUNCH_OPEN, LaunchState, RunState

    env = SweepEnv.from_context(ctx)
    try:
        m = load_manifest(env.paths)
    except OpsError:
        return
    camp = m.campaign
    be = backend_for(m.backend)
    launch = m.launch
    gone = launcher_gone(launch)
    launch_finding = None
    if gone:
        launch_finding = Finding("launch", camp, f"launch recorded {launch.get('state')} but {gone}",
                                 "settle it: runs it never started are failed, so `--resume` redoes them "
                                 "(one monitor pass)")
        if fix:
            settle_launch(env, m, be)
            launch_finding.fixed = m.launch.get("state") not in LAUNCH_OPEN
    for r in m.rows:
        rid, st = r["run_id"], runs.state_of(env.paths, r["run_id"])
        if st not in (RunState.FAILED, RunState.CANCELLED) or runs.summary_ok(env.paths, rid) is not True:
            continue
        f = Finding("manifest", f"{camp}/{rid}", f"recorded {st} but its summary.json is ok "
                    "(`--resume` would skip it, leaving the campaign failed)", "record it completed")
        if fix:
            f.fixed = runs.reconcile(env.paths, rid) is not None
        yield f
    _, _, unfinished = verdict(env.paths, m)
    lagging: list[Finding] = []
    try:
        lags = be.lagging(env, m, unfinished)
    except OpsError as e:
        yield Finding("scheduler", camp, f"cannot query {be.name}: {e}", "")
        lags = []
    for lag in lags:
        lagging.append(Finding("manifest", f"{camp}/{lag.run_id}", f"recorded unfinished but {lag.why}",
                               "advance the manifest (one monitor pass)"))
    yield from _dedupe(lagging)
    done, failed, live = verdict(env.paths, m)
    launched = launch.get("state") == LaunchState.LAUNCHED
    # on a pod (``out``) the workflow state is its client's: the client judges that part
    fsm_finding, others = fsm_findings(ctx.store.read().state, camp, done, failed, live, bool(lagging),
                                       launched) if out is None else (None, [])
    yield from others
    if launch_finding:
        yield launch_finding
    if fix and (lagging or fsm_finding):
        monitor(ctx, camp)
        for f in lagging:
            f.fixed = runs.state_of(env.paths, f.subject.split("/", 1)[1]) in FINAL
        if fsm_finding:
            fsm_finding.fixed = ctx.store.read().state != State.SWEEP_RUNNING
        done, failed, live = verdict(env.paths, m)  # what the fix left, for the client below
    if out is not None:  # for the client, who judges its own workflow state by it
        out.update(id=camp, done=done, failed=failed, live=live, launched=launched,
                   lagging=any(not f.fixed for f in lagging))
    if fsm_finding:
        yield fsm_finding


def fsm_findings(state, camp: str, done: bool, failed: list[str], live: list[str], lagging: bool,
                 launched: bool) -> tuple[Finding | None, list[Finding]]:
    """A workflow state that disagrees with the campaign's runs: (the one a monitor pass repairs,
    the ones to report). Pure."""
    from opsrg.core.fsm import State

    if state == State.SWEEP_RUNNING and done:
        return Finding("fsm", camp, f"state SWEEP_RUNNING but every run is final ({len(failed)} failed)",
                       "move the state (one monitor pass)"), []
    if state in (State.SWEEP_COMPLETED, State.SWEEP_FAILED) and not done and not lagging:
        return None, [Finding("fsm", camp, f"state {state.value} but runs are unfinished: {', '.join(live)}", "")]
    if state == State.SWEEP_COMPLETED and failed:
        return None, [Finding("fsm", camp, f"state SWEEP_COMPLETED but runs failed: {', '.join(failed)}", "")]
    if state not in (State.SWEEP_RUNNING, State.SWEEP_COMPLETED, State.SWEEP_FAILED) and live and launched:
        return None, [Finding("fsm", camp, f"state {state.value} but the campaign's runs are live: "
                              f"{', '.join(live)} (the state was reset while it ran)", "")]
    return None, []


def pod_side(ctx: Context, fix: bool) -> dict:
    """What doctor finds on a pod for its client (opsrg.cli.pod): every check but the tasks (the
    client reads those over SSH) and the workflow state (the client's), plus the campaign's
    verdict for the client to judge its state by."""
    campaign: dict = {}
    findings = list(check_sweep(ctx, fix, out=campaign))
    root = Path(ctx.outputs_dir)
    if root.exists():
        for name in ("temp files", "locks", "rg runs"):
            findings.extend(CHECKS[name](root, fix))
    return {"findings": [asdict(f) for f in findings], "campaign": campaign or None}


def _from_pod(ctx: Context, fix: bool) -> list[Finding]:
    from opsrg.core.fsm import State
    from opsrg.sweeps import commands, remote

    answer = remote.call(ctx, "doctor", {"fix": fix})
    findings = [Finding(**f) for f in answer["findings"]]
    c = answer["campaign"]
    if c is None:
        return findings
    fsm_finding, others = fsm_findings(ctx.store.read().state, c["id"], c["done"], c["failed"], c["live"],
                                       c["lagging"], c["launched"])
    findings += others
    if fsm_finding:
        if fix:
            commands.monitor(ctx, c["id"])
            fsm_finding.fixed = ctx.store.read().state != State.SWEEP_RUNNING
        findings.append(fsm_finding)
    return findings


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        if f.subject not in seen:
            seen.add(f.subject)
            out.append(f)
    return out


CHECKS: dict[str, Callable[..., Iterator[Finding]]] = {
    "tasks": check_tasks,
    "temp files": check_temp_files,
    "locks": check_locks,
    "rg runs": check_rg_runs,
}


def run(ctx: Context, fix: bool = False) -> list[Finding]:
    from opsrg.sweeps import remote

    findings: list[Finding] = list(check_tasks(ctx, fix))
    if remote.is_remote(ctx):  # the sweeps and the outputs are the pod's: checked there
        return findings + _from_pod(ctx, fix)
    findings.extend(check_sweep(ctx, fix))
    if Path(ctx.outputs_dir).exists():
        root = Path(ctx.outputs_dir)
        for name in ("temp files", "locks", "rg runs"):
            findings.extend(CHECKS[name](root, fix))
    return findings


def as_json(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]
