"""Sweep plan: validated CSV rows -> runs -> jobs. Pure: builds commands, runs nothing.

A run is one CSV row. On tmux it is one tracked task running the whole row (the RG ``fp``/``exp``
loop, or the row's shell command). On Slurm an RG run becomes, per step, an array of ``gen``
shards plus a ``merge`` job depending on it (``afterok``); the next step depends on the merge,
and an EXP run's first step on its FP run's last merge. Independent shell rows are packed into
arrays (split at the cluster's MaxArraySize). Every argument is shell-quoted here: no CSV text
ever reaches a shell unquoted.

Every run's commands are wrapped (:func:`wrap`): the first job of a run writes ``meta.json``
(``python -m opsrg.provenance begin``), the last one closes it. With ``RUN_OUT_MODE=local_sync``
(``Sweep.scratch`` set) a run writes to ``<scratch>/<run_id>`` instead of its durable folder; the
wrapper first fills the scratch folder from the durable one (a resumed run goes on from there),
and on Slurm mirrors it back every ``sync_every`` seconds and once more when the job ends.
"""

from __future__ import annotations

import json
import secrets
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from opsrg.core import layout
from opsrg.hosts.rsync import pass_sh
from opsrg.rg.run import RunPaths
from opsrg.sweeps import provenance
from opsrg.sweeps.rows import SCRIPT_MODES, SweepRow, order

# Spec keys that do not decide a run's result (left out of its identity).
NOT_IDENTITY = ("__path__", "timeout_secs", "after")
# Never copied into or out of scratch: the durable copy is the live one.
DURABLE_ONLY = (layout.RUN_MANIFEST, layout.META)


def new_campaign_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


@dataclass
class Sweep:
    campaign: str
    rows: list[SweepRow]
    outputs: str
    python: str = "python3"
    backend: str = "tmux"
    scratch: str = ""         # RUN_OUT_MODE=local_sync: the fast-disk root runs write under
    sync_every: int = 60      # local_sync on Slurm: seconds between mirror passes inside a job
    repo: str = ""            # the project's checkout on the pod: where command rows run
    code: dict[str, Any] = field(default_factory=dict)  # that checkout's code state (provenance.parse_code_state)
    env_file: str = ""        # RUN_ENV_FILE on the pod: Slurm jobs source it (tmux rows: their supervisor)

    def row(self, run_id: str) -> SweepRow:
        for r in self.rows:
            if r.run_id == run_id:
                return r
        raise KeyError(run_id)

    def run_dir(self, run_id: str) -> str:
        """The durable run folder: manifests, meta.json, and (after sync) every result."""
        return f"{self.outputs.rstrip('/')}/{run_id}"

    def out_dir(self, run_id: str) -> str:
        """Where the run writes: its durable folder, or its scratch folder with local_sync."""
        return f"{self.scratch.rstrip('/')}/{run_id}" if self.scratch else self.run_dir(run_id)

    def ordered(self) -> list[SweepRow]:
        return order(self.rows)


# ------------------------------------------------------------------ commands
def _rg_common(row: SweepRow, out: str) -> list[str]:
    s = row.spec
    argv = ["--samples", str(s["samples"]), "--seed", str(row.seed), "--out", out, "--bins", str(s["bins"]),
            "--zmax", repr(float(s["zmax"])), "--backend", s["backend"], "--method", s["method"],
            "--dtype", s["dtype"]]
    if s.get("batch_size"):
        argv += ["--batch-size", str(s["batch_size"])]
    return argv


def fp_histogram(sweep: Sweep, fp_run: str) -> str:
    """The final symmetrised histogram an EXP row reads from its FP run."""
    return f"{sweep.run_dir(fp_run)}/sym_z_hist_RG{sweep.row(fp_run).spec['steps']}.npz"


def _exp_args(sweep: Sweep, row: SweepRow) -> list[str]:
    return ["--fp", fp_histogram(sweep, row.spec["fp_run"]),
            "--shifts", ",".join(repr(float(x)) for x in row.spec["shifts"])]


def loop_argv(sweep: Sweep, row: SweepRow) -> list[str]:
    """The whole RG run in one process (also finalises a Slurm run: writes summary.json)."""
    mode = row.mode
    argv = [sweep.python, "-m", "opsrg.rg", mode, "--steps", str(row.spec["steps"])]
    if mode == "exp":
        argv += _exp_args(sweep, row)
    return argv + _rg_common(row, sweep.out_dir(row.run_id)) + ["--shards", str(row.spec["shards"])]


def gen_argv(sweep: Sweep, row: SweepRow, step: int) -> list[str]:
    """One shard of one step; the shard index comes from ``$OPSRG_TASK`` (added by the caller)."""
    argv = [sweep.python, "-m", "opsrg.rg", "gen", "--mode", row.mode, "--step", str(step),
            "--ntasks", str(row.spec["shards"])]
    if row.mode == "exp":
        argv += _exp_args(sweep, row)
    return argv + _rg_common(row, sweep.out_dir(row.run_id))


def merge_argv(sweep: Sweep, row: SweepRow, step: int) -> list[str]:
    return [sweep.python, "-m", "opsrg.rg", "merge", "--step", str(step), "--ntasks", str(row.spec["shards"]),
            "--out", sweep.out_dir(row.run_id)]


def run_env(sweep: Sweep, row: SweepRow) -> dict[str, str]:
    return {"OPSRG_RUN_ID": row.run_id, "OPSRG_RUN_DIR": sweep.out_dir(row.run_id), "OPSRG_SEED": str(row.seed),
            "OPSRG_CAMPAIGN": sweep.campaign}


# ------------------------------------------------------------------ identity and provenance
def resolved_config(sweep: Sweep, row: SweepRow) -> dict[str, Any]:
    """What decides the row's result: its resolved spec, and for EXP the identity of its FP run."""
    out = {k: v for k, v in row.spec.items() if k not in NOT_IDENTITY}
    if row.mode == "command":  # the user's program: changed code is a different run
        out["code"] = provenance.code_key(sweep.code)
    if row.spec.get("fp_run"):
        out["fp_identity"] = row_identity(sweep, sweep.row(row.spec["fp_run"]))
    return out


def row_identity(sweep: Sweep, row: SweepRow) -> str:
    return provenance.identity(resolved_config(sweep, row), row.seed)


@lru_cache(maxsize=256)
def _config_sha256(path: str) -> str | None:
    try:
        return provenance.file_sha256(path)
    except OSError:
        return None


def meta_plan(sweep: Sweep, row: SweepRow) -> dict[str, Any]:
    """What ``python -m opsrg.provenance begin`` records besides what it finds on its machine."""
    cfg = row.spec.get("__path__")
    return {"run_id": row.run_id, "campaign": sweep.campaign, "seed": row.seed, "config": resolved_config(sweep, row),
            "overrides": row.overrides, "config_file": cfg, "config_sha256": _config_sha256(cfg) if cfg else None,
            "backend": sweep.backend, "identity": row_identity(sweep, row), "out_dir": sweep.out_dir(row.run_id),
            "out_mode": "local_sync" if sweep.scratch else "direct",
            **({"project": sweep.code} if row.mode == "command" else {})}


def wrap(sweep: Sweep, row: SweepRow, cmds: str, *, begin: bool | str = True, end: bool = True,
         books: bool = False) -> str:
    """Bash around a run's commands: exports, scratch fill and mirroring (local_sync), meta.json.

    ``begin``: write meta.json first (a string: only in the array element with that index);
    ``end``: close it with the run's summary. ``books`` (a script row on Slurm): instead of both,
    one ``opsrg.provenance books`` after the commands and the final sync keeps all of the row's
    books, in the durable run folder (bash notes the start). ``cmds`` leave their status in ``$?``.
    """
    rd, od, py = sweep.run_dir(row.run_id), sweep.out_dir(row.run_id), shlex.quote(sweep.python)
    out = [_exports(run_env(sweep, row)).rstrip("\n"), f"mkdir -p {shlex.quote(rd)} {shlex.quote(od)} || exit 1"]
    if sweep.env_file and sweep.backend == "slurm":
        f = shlex.quote(sweep.env_file)
        out.append(f"if [ -f {f} ]; then set -a; . {f} || exit 1; set +a; fi")
    if sweep.scratch:
        out.append(pass_sh(rd, od, "--update", *(f"--exclude={x}" for x in DURABLE_ONLY))
                   + f" || {{ echo {shlex.quote(f'could not fill {od} from {rd}')} >&2; exit 1; }}")
    if books:
        out.append(STARTED_SH)
    elif begin:
        b = f"{py} -m opsrg.provenance begin {shlex.quote(rd)} {shlex.quote(json.dumps(meta_plan(sweep, row)))}"
        out.append(b if begin is True else f'if [ "${{SLURM_ARRAY_TASK_ID:-}}" = {begin} ]; then {b}; fi')
    slurm_sync = sweep.scratch and sweep.backend == "slurm"
    if slurm_sync:
        out.append(f"( while sleep {int(sweep.sync_every)}; do {pass_sh(od, rd)}; done ) & opsrg_syncer=$!")
    out += [cmds.rstrip("\n"), "rc=$?"]
    if slurm_sync:
        failed = shlex.quote(f"final sync {od} -> {rd} failed")
        out += ['kill "$opsrg_syncer" 2>/dev/null; wait "$opsrg_syncer" 2>/dev/null',
                f"{pass_sh(od, rd)} || {{ echo {failed} >&2; [ $rc -eq 0 ] && rc=1; }}"]
    if books:
        call = shlex.join([sweep.python, "-m", "opsrg.provenance", "books", rd, json.dumps(meta_plan(sweep, row)),
                           rd, row.mode])
        out.append(f'{call} "$rc" "$opsrg_started"; rc=$?')
    elif end:
        out.append(f"{py} -m opsrg.provenance end {shlex.quote(rd)} {shlex.quote(od + '/summary.json')} \"$rc\"")
    return "\n".join(out + ["exit $rc"]) + "\n"


STARTED_SH = "opsrg_started=$(date -u +%Y-%m-%dT%H:%M:%S.%3N+00:00)"


def _exports(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def shell_body(sweep: Sweep, row: SweepRow, books: bool = True) -> str:
    """Bash for a shell row: run its command in the run folder, then write summary.json.

    ``books``: the script keeps opsrg's books itself (meta.json, summary.json), as a Slurm job
    must; the tmux driver keeps them in its own process instead (three Python starts a row fewer)."""
    od = shlex.quote(sweep.out_dir(row.run_id))
    run = f"cd {od} || exit 1\nbash -c {shlex.quote(row.spec['command'])}\n"
    return wrap(sweep, row, run, begin=False, end=False, books=books)


# How many GPUs a row sees: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists; 1 with
# none, so that `torchrun --nproc_per_node={gpus}` still runs (on the CPU).
GPUS_SH = ('if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then OPSRG_GPUS=$(printf %s "$CUDA_VISIBLE_DEVICES" | tr , "\\n" '
           '| grep -c .); elif command -v nvidia-smi >/dev/null 2>&1; then OPSRG_GPUS=$(nvidia-smi -L 2>/dev/null '
           '| grep -c "^GPU"); fi; [ "${OPSRG_GPUS:-0}" -gt 0 ] 2>/dev/null || OPSRG_GPUS=1; export OPSRG_GPUS')


def command_words(sweep: Sweep, row: SweepRow) -> list[str]:
    """A command row's program as bash words: the template's words with its fields filled in,
    every piece quoted; ``{overrides}`` becomes the row's arguments, one word each, and
    ``{gpus}`` the count the row sees when it starts."""
    import string

    from opsrg.sweeps.rows import template_words

    values = {"config": row.config, "seed": str(row.seed), "run_id": row.run_id,
              "run_dir": sweep.out_dir(row.run_id), "repo": sweep.repo}
    out: list[str] = []
    for w in template_words(row.spec["command"]):
        if w == "{overrides}":
            out += [shlex.quote(a) for a in row.spec.get("args", [])]
            continue
        pieces = []
        for literal, name, _spec, _conv in string.Formatter().parse(w):
            if literal:
                pieces.append(shlex.quote(literal))
            if name == "gpus":
                pieces.append('"$OPSRG_GPUS"')
            elif name is not None:
                pieces.append(shlex.quote(values[name]))
        out.append("".join(pieces) or "''")
    return out


def command_body(sweep: Sweep, row: SweepRow, books: bool = True) -> str:
    """Bash for a command row: the user's program in their checkout, the project's venv first on
    PATH; then its books as :func:`wrap` keeps them (summary.json: the program's own, if it wrote
    one; ``books`` as for :func:`shell_body`)."""
    od, repo = shlex.quote(sweep.out_dir(row.run_id)), shlex.quote(sweep.repo or sweep.out_dir(row.run_id))
    lines = [f"cd {repo} || exit 1",
             'if [ -d .venv/bin ]; then PATH="$PWD/.venv/bin:$PATH"; export VIRTUAL_ENV="$PWD/.venv"; fi',
             GPUS_SH,
             f"rm -f {od}/{RunPaths.SUMMARY}  # this attempt's verdict, not an earlier one's",
             " ".join(command_words(sweep, row))]
    return wrap(sweep, row, "\n".join(lines) + "\n", begin=False, end=False, books=books)


def script_body(sweep: Sweep, row: SweepRow, books: bool = True) -> str:
    """The one script of a shell or command row."""
    return shell_body(sweep, row, books) if row.mode == "shell" else command_body(sweep, row, books)


def row_command(sweep: Sweep, row: SweepRow, books: bool = True) -> str:
    """What a tmux row runs (bash); ``books=False``: without meta.json and summary.json, which the
    driver then writes (:func:`opsrg.sweeps.tmux.drive`)."""
    if row.mode in SCRIPT_MODES:
        return script_body(sweep, row, books)
    return wrap(sweep, row, shlex.join(loop_argv(sweep, row)), begin=books, end=books)


# ------------------------------------------------------------------ Slurm jobs
@dataclass
class Job:
    """One scheduler submission: a single job or an array (``tasks`` = its element indices)."""

    key: str                       # unique in the campaign; also the task id of its record
    kind: str                      # gen | merge | shell
    body: str                      # bash; $SLURM_ARRAY_TASK_ID selects the element of an array
    runs: list[str]                # run ids it belongs to (one per element for packed shell rows)
    deps: list[str] = field(default_factory=list)   # keys of jobs (or KEY#i: element i) it waits for (afterok)
    tasks: list[int] | None = None                  # array element indices; None: not an array
    timeout_secs: int | None = None
    final_for: str = ""            # run id whose summary this job writes
    resources: dict[str, Any] = field(default_factory=dict)  # the row's gpus, cpus, mem: its sbatch requests

    def run_of(self, element: int | None) -> str:
        if len(self.runs) == 1 or element is None:
            return self.runs[0]
        return self.runs[element]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "runs": self.runs, "deps": self.deps, "tasks": self.tasks,
                "timeout_secs": self.timeout_secs, "final_for": self.final_for, "resources": self.resources}


RESOURCES = ("gpus", "cpus", "mem")


def resources_of(row: SweepRow) -> dict[str, Any]:
    """What a row asks of the scheduler for each of its jobs (``gpus``, ``cpus``, ``mem``)."""
    return {k: row.spec[k] for k in RESOURCES if k in row.spec}


def split_array(indices: list[int], max_array_size: int) -> list[list[int]]:
    """Chunks of element indices that each fit under MaxArraySize (indices must be < it)."""
    if max_array_size < 1:
        raise ValueError("MaxArraySize must be >= 1")
    chunks: dict[int, list[int]] = {}
    for i in indices:
        chunks.setdefault(i // max_array_size, []).append(i)
    return [chunks[k] for k in sorted(chunks)]


def array_spec(tasks: list[int], parallelism: int) -> str:
    """``--array`` value: compressed ranges of element indices, throttled."""
    parts, s = [], sorted(tasks)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        parts.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(parts) + (f"%{parallelism}" if parallelism else "")


@dataclass
class RunProgress:
    """What already exists on disk for a run (for --resume): summary ok, DONE steps, READY shards."""

    ok: bool = False
    done_steps: set[int] = field(default_factory=set)
    ready: dict[int, set[int]] = field(default_factory=dict)


def plan_slurm(sweep: Sweep, *, max_array_size: int, progress: dict[str, RunProgress] | None = None,
               only: set[str] | None = None) -> list[Job]:
    """Jobs for every run not yet ok (``only``: just these runs), in submission order."""
    progress = progress or {}
    last: dict[str, str] = {}      # run id -> key of the job that ends it

    def wanted(row: SweepRow) -> bool:
        return not progress.get(row.run_id, RunProgress()).ok and (only is None or row.run_id in only)

    # Shell and command rows without dependencies go first, packed into arrays; a dependent waits for its pack.
    packable = [r for r in sweep.ordered() if r.mode in SCRIPT_MODES and not r.deps and wanted(r)]
    jobs: list[Job] = _pack_shell(sweep, packable, max_array_size) if packable else []
    for j in jobs:
        for i, rid in enumerate(j.runs):  # a dependent waits for its row's element, not the whole array
            last[rid] = element_dep(j.key, i) if len(j.runs) > 1 else j.key
    for row in sweep.ordered():
        prog = progress.get(row.run_id, RunProgress())
        if not wanted(row) or row.run_id in last:
            continue
        dep_keys = list(dict.fromkeys(last[d] for d in row.deps if d in last))
        timeout = row.spec.get("timeout_secs")
        if row.mode in SCRIPT_MODES:
            jobs.append(Job(f"{row.run_id}.run", "shell", script_body(sweep, row), [row.run_id], dep_keys,
                            None, timeout, final_for=row.run_id, resources=resources_of(row)))
            last[row.run_id] = jobs[-1].key
            continue
        steps, shards = row.spec["steps"], row.spec["shards"]
        prev = dep_keys
        first = True   # the run's first job writes meta.json (in one element of an array)
        for k in range(1, steps + 1):
            if k in prog.done_steps:
                continue
            missing = [i for i in range(shards) if i not in prog.ready.get(k, set())]
            gen_keys = []
            cmd = "OPSRG_TASK=$((OPSRG_TASK_OFFSET + SLURM_ARRAY_TASK_ID))\n" + \
                shlex.join(gen_argv(sweep, row, k)) + ' --task "$OPSRG_TASK"'
            for c, chunk in enumerate(split_array(missing, max_array_size)):
                off = (chunk[0] // max_array_size) * max_array_size
                key = f"{row.run_id}.RG{k}.gen" + (f"{c}" if c else "")
                body = wrap(sweep, row, cmd, begin=str(chunk[0] - off) if first else False, end=False)
                jobs.append(Job(key, "gen", f"OPSRG_TASK_OFFSET={off}\n" + body, [row.run_id], list(prev),
                                [i - off for i in chunk], timeout, resources=resources_of(row)))
                gen_keys.append(key)
                first = False
            final = k == steps
            mcmd = shlex.join(merge_argv(sweep, row, k)) + ("\n" + shlex.join(loop_argv(sweep, row)) if final else "")
            jobs.append(Job(f"{row.run_id}.RG{k}.merge", "merge", wrap(sweep, row, mcmd, begin=first, end=final),
                            [row.run_id], gen_keys or list(prev), None, timeout, final_for=row.run_id if final else "",
                            resources=resources_of(row)))
            first = False
            prev = [jobs[-1].key]
        if not prev or prev == dep_keys:  # every step done but no ok summary: finalise only
            jobs.append(Job(f"{row.run_id}.final", "merge", wrap(sweep, row, shlex.join(loop_argv(sweep, row))),
                            [row.run_id], dep_keys, None, timeout, final_for=row.run_id, resources=resources_of(row)))
            prev = [jobs[-1].key]
        last[row.run_id] = prev[0]
    return jobs


def element_dep(key: str, element: int) -> str:
    """A dependency on one element of the array ``key`` (``afterok:JOBID_ELEMENT`` when submitted)."""
    return f"{key}#{element}"


def dep_job_id(dep: str, ids: dict[str, str]) -> str | None:
    """The Slurm id a dependency names, given the ids of the jobs submitted so far (None: not submitted)."""
    key, _, element = dep.partition("#")
    return None if key not in ids else ids[key] + (f"_{element}" if element else "")


def _pack_shell(sweep: Sweep, rows: list[SweepRow], max_array_size: int) -> list[Job]:
    """Independent shell and command rows as arrays: element i runs row i of its chunk (a ``case`` on
    the index). Rows with different time limits or resources go into different arrays."""
    out = []
    by_request: dict[Any, list[SweepRow]] = {}
    for r in rows:
        by_request.setdefault((r.spec.get("timeout_secs"), tuple(sorted(resources_of(r).items()))), []).append(r)
    for (timeout, request), group in by_request.items():
        for chunk in split_array(list(range(len(group))), max_array_size):
            members = [group[i] for i in chunk]
            lines = ['case "$SLURM_ARRAY_TASK_ID" in']
            for i, r in enumerate(members):
                lines.append(f"{i})")
                # Not indented: a quoted value (a multi-line command, a path) spans lines verbatim.
                lines.append(script_body(sweep, r).rstrip("\n"))
                lines.append("  ;;")
            lines += ['*) echo "no row for array index $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac"]
            key = f"shell.{members[0].run_id}" + (f".x{len(members)}" if len(members) > 1 else "")
            out.append(Job(key, "shell", "\n".join(lines) + "\n", [r.run_id for r in members], [],
                           list(range(len(members))), timeout, resources=dict(request)))
    return out
