"""Slurm: render sbatch scripts, submit, query, cancel; parse sacct -P / squeue / scontrol / jobcomp.

Queries are batched (one call for every job of a sweep) and fall back in order: ``sacct -P``
(never ``--json``: 22.05 reports exit code 0 for failed jobs there), then ``scontrol show job -o``
for jobs sacct does not know (no accounting, or not recorded yet), then the ``jobcomp/filetxt``
file for jobs scontrol has forgotten (after MinJobAge). Each answer records its source.
"""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsrg.core.errors import ConfigError, HostError, InputError, SlurmError
from opsrg.hosts.base import Host
from opsrg.tracked.records import TaskState

TEMPLATE_DIR = Path(__file__).resolve().parents[3] / "sweeps" / "templates"
DEFAULT_TEMPLATE = """#!/bin/bash
#SBATCH --job-name=${job_name}
#SBATCH --output=${log}
#SBATCH --error=${log}
${directives}
# opsrg campaign ${campaign}, job ${key}
set -uo pipefail
export TMPDIR="$${TMPDIR:-/tmp}/opsrg-$${SLURM_JOB_ID:-0}"
mkdir -p "$$TMPDIR"
trap 'rc=$$?; rm -rf "$$TMPDIR"; ${on_exit}' EXIT
${body}"""

# Scheduler state -> task state. Final states are cached by the watcher.
PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
                  "SUSPENDED", "STOPPED", "SIGNALING", "RESV_DEL_HOLD"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT"}
STATE_MAP = {
    "COMPLETED": (TaskState.SUCCESS, ""),
    "FAILED": (TaskState.FAILED, "non-zero exit"),
    "TIMEOUT": (TaskState.TIMED_OUT, "time limit reached"),
    "CANCELLED": (TaskState.FAILED, "cancelled"),
    "OUT_OF_MEMORY": (TaskState.FAILED, "out of memory"),
    "NODE_FAIL": (TaskState.FAILED, "node failure"),
    "PREEMPTED": (TaskState.FAILED, "preempted"),
    "BOOT_FAIL": (TaskState.FAILED, "node boot failure"),
    "DEADLINE": (TaskState.FAILED, "deadline reached"),
    "SPECIAL_EXIT": (TaskState.FAILED, "special exit"),
}


@dataclass
class JobInfo:
    """One job or array element as the scheduler reports it."""

    id: str                  # "12" or "12_3"
    state: str               # normalised: FAILED, CANCELLED, ...
    exit_code: int | None = None
    signal: int | None = None
    start: str = ""
    end: str = ""
    reason: str = ""
    raw_state: str = ""
    source: str = ""
    restarts: int = 0        # times the scheduler requeued it (scontrol's Restarts)

    @property
    def final(self) -> bool:
        return self.state in STATE_MAP

    def task_state(self) -> tuple[TaskState, str]:
        return map_state(self.state, self.reason, self.exit_code, self.raw_state)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "exit_code": self.exit_code, "signal": self.signal,
                "start": self.start, "end": self.end, "reason": self.reason, "raw_state": self.raw_state,
                "source": self.source, "restarts": self.restarts}


def map_state(state: str, reason: str = "", exit_code: int | None = None, raw: str = "") -> tuple[TaskState, str]:
    """The task state for a scheduler state, with a human reason."""
    st = normalise_state(state)
    if st in PENDING_STATES:
        return TaskState.PENDING, f"{st}" + (f" ({reason})" if reason and reason != "None" else "")
    if st in RUNNING_STATES:
        return TaskState.RUNNING, st
    if st in STATE_MAP:
        ts, why = STATE_MAP[st]
        head = raw if st == "CANCELLED" and raw and normalise_state(raw) == st else st
        bits = [why] if why and why != "cancelled" else []
        if exit_code not in (None, 0) and st != "COMPLETED":
            bits.append(f"exit code {exit_code}")
        if reason and reason not in ("None", "NonZeroExitCode"):
            bits.append(reason)
        return ts, head + (": " + ", ".join(bits) if bits else "")
    return TaskState.RUNNING, f"unknown scheduler state {state!r}"


def normalise_state(state: str) -> str:
    """``CANCELLED by 0`` / ``CANCELLED+`` -> ``CANCELLED``."""
    s = (state or "").strip().split(" ")[0].rstrip("+").upper()
    return s


def parse_exit(text: str) -> tuple[int | None, int | None]:
    """``3:0`` -> (3, 0)."""
    m = re.fullmatch(r"\s*(\d+):(\d+)\s*", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def expand_ids(job_id: str) -> list[str]:
    """``12_[0-3%2]`` / ``12_[1,4-5]`` -> element ids; anything else as is."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id.strip())
    if not m:
        return [job_id.strip()]
    base, spec = m.group(1), m.group(2).split("%")[0]
    out = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out += [f"{base}_{i}" for i in range(int(a), int(b) + 1)]
        elif part:
            out.append(f"{base}_{int(part)}")
    return out


def _clean(v: str) -> str:
    return "" if v in ("Unknown", "None", "N/A", "(null)") else v


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Lines of ``sacct -X -P -n -o JobID,State,ExitCode,Start,End,Reason``."""
    out: dict[str, JobInfo] = {}
    for line in text.splitlines():
        f = line.split("|")
        if len(f) < 3 or not f[0] or "." in f[0]:
            continue
        code, sig = parse_exit(f[2])
        for jid in expand_ids(f[0]):
            out[jid] = JobInfo(jid, normalise_state(f[1]), code, sig, _clean(f[3]) if len(f) > 3 else "",
                               _clean(f[4]) if len(f) > 4 else "", _clean(f[5]) if len(f) > 5 else "",
                               f[1], "sacct")
    return out


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Lines of ``squeue -h -r -t all -o '%i|%T|%r|%S|%e'`` (no exit codes: squeue has none)."""
    out: dict[str, JobInfo] = {}
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) < 2 or not f[0]:
            continue
        for jid in expand_ids(f[0]):
            out[jid] = JobInfo(jid, normalise_state(f[1]), None, None, _clean(f[3]) if len(f) > 3 else "",
                               _clean(f[4]) if len(f) > 4 else "", _clean(f[2]) if len(f) > 2 else "", f[1],
                               "squeue")
    return out


_KV = re.compile(r"(\w[\w/:]*)=(\S*)")


def _records(text: str, source: str) -> dict[str, JobInfo]:
    out: dict[str, JobInfo] = {}
    for line in text.splitlines():
        kv = dict(_KV.findall(line))
        if "JobId" not in kv or "JobState" not in kv:
            continue
        code, sig = parse_exit(kv.get("ExitCode", ""))
        if kv.get("ArrayJobId") and _clean(kv.get("ArrayTaskId", "")):
            ids = expand_ids(f"{kv['ArrayJobId']}_[{kv['ArrayTaskId']}]")
        else:
            ids = [kv["JobId"]]
        restarts = int(kv["Restarts"]) if kv.get("Restarts", "").isdigit() else 0
        for jid in ids:
            out[jid] = JobInfo(jid, normalise_state(kv["JobState"]), code, sig, _clean(kv.get("StartTime", "")),
                               _clean(kv.get("EndTime", "")), _clean(kv.get("Reason", "")), kv["JobState"], source,
                               restarts)
    return out


def parse_scontrol(text: str) -> dict[str, JobInfo]:
    """``scontrol show job -o`` output (one job per line)."""
    return _records(text, "scontrol")


def parse_jobcomp(text: str) -> dict[str, JobInfo]:
    """The ``jobcomp/filetxt`` file: one ``Key=Value`` line per finished job (last line wins)."""
    return _records(text, "jobcomp")


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config``: ``Key = Value`` lines."""
    out = {}
    for line in text.splitlines():
        if " = " in line:
            k, v = line.split(" = ", 1)
            out[k.strip()] = v.strip()
    return out


def parse_conf_file(text: str) -> dict[str, str]:
    """slurm.conf itself: ``Key=Value`` lines (comments dropped); used while slurmctld is down."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line and " " not in line.split("=", 1)[0]:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), v.strip().split()[0] if v.strip() else "")
    return out


def _last_line(text: str) -> str:
    lines = [x.strip() for x in (text or "").splitlines() if x.strip()]
    return lines[-1][:300] if lines else ""


def base_of(job_id: str) -> str:
    return job_id.split("_", 1)[0]


def slurm_secs(text: str) -> int | None:
    """Seconds of a Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``); None for what is none (empty, ``UNLIMITED``) or unreadable."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", (text or "").strip())
    if not m:
        return None
    d, a, b, c = (int(x) if x else None for x in m.groups())
    if d is not None:  # D-HH[:MM[:SS]]
        return d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:  # HH:MM:SS
        return a * 3600 + b * 60 + c
    if b is not None:  # MM:SS
        return a * 60 + b
    return a * 60      # MM


def limit_secs(timeout_secs: int | None, default: str) -> int | None:
    """The limit a job gets (:func:`time_directive`: whole minutes), in seconds."""
    return max(1, -(-int(timeout_secs) // 60)) * 60 if timeout_secs else slurm_secs(default)


def time_directive(timeout_secs: int | None, default: str) -> str:
    """Slurm's ``--time`` for a timeout in seconds (whole minutes, at least 1), else the default."""
    if not timeout_secs:
        return default
    minutes = max(1, -(-int(timeout_secs) // 60))
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


@dataclass
class SlurmOptions:
    partition: str = ""
    account: str = ""
    time: str = "01:00:00"
    cpus_per_task: int = 1
    mem: str = ""
    gres: str = ""
    array_parallelism: int = 4

    def for_job(self, resources: dict) -> SlurmOptions:
        """These options with a row's own requests: ``gpus`` -> ``--gres=gpu:N``, ``cpus``, ``mem``."""
        from dataclasses import replace

        changes: dict = {}
        if "gpus" in resources:
            changes["gres"] = f"gpu:{resources['gpus']}" if resources["gpus"] else ""
        if "cpus" in resources:
            changes["cpus_per_task"] = resources["cpus"]
        if "mem" in resources:
            changes["mem"] = resources["mem"]
        return replace(self, **changes) if changes else self

    def directives(self, time: str, array: str = "") -> list[str]:
        d = []
        for flag, v in (("partition", self.partition), ("account", self.account), ("time", time),
                        ("cpus-per-task", str(self.cpus_per_task)), ("mem", self.mem), ("gres", self.gres),
                        ("array", array)):
            if v:
                why = _unsafe_why(str(v))
                if why:
                    raise ConfigError(f"SLURM_{flag.upper().replace('-', '_')}={v!r}: contains {why}, which an "
                                      f"'#SBATCH --{flag}=' line cannot hold (sbatch parses it itself, unquoted)")
                d.append(f"#SBATCH --{flag}={v}")
        return d


# sbatch reads ``#SBATCH`` lines itself, not through a shell, so their values cannot be shell-quoted:
# a directive ends at whitespace, ``"`` groups, ``\`` escapes and ``#`` starts a comment there, and a
# newline would end the line (the rest would run as bash). Such a value is refused, never mangled.
DIRECTIVE_UNSAFE = re.compile(r"""[\s"'\\#\x00-\x1f\x7f]""")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _unsafe_why(value: str) -> str:
    m = DIRECTIVE_UNSAFE.search(value)
    if not m:
        return ""
    c = m.group()
    return {" ": "a space", "\n": "a newline", "\t": "a tab"}.get(c, f"the character {c!r}")


def check_log_path(log: str) -> str:
    """The log path of ``#SBATCH --output=/--error=``, or InputError naming what sbatch cannot take.

    Its folder may hold no ``%`` either: Slurm replaces ``%j``, ``%a``... anywhere in the path (only
    the file name carries opsrg's own ``%a``)."""
    why = _unsafe_why(log)
    if not why and "%" in log.rsplit("/", 1)[0]:
        why = "the character '%' (Slurm would expand it as a file name pattern)"
    if why or not log:
        raise InputError(
            f"Slurm log path {log!r} cannot be written into an '#SBATCH --output=' line: it contains "
            f"{why or 'nothing'}; sbatch parses these lines itself, so they cannot be quoted",
            hint="use an OPS_REMOTE_OUTPUTS_DIR without spaces, quotes, '\\', '#', '%' or control characters")
    return log


def end_marker_command(ended_dir: str) -> str:
    """What the script's EXIT trap runs (inside its single quotes; ``$rc``: the script's status):
    the element's end marker, an empty file ``<index>.<restart>``. Only a sign that it ended, for
    a waiting monitor to look now: how it ended (a signal leaves no status here) is the scheduler's."""
    d = re.sub(r'([\\$`"])', r"\\\1", ended_dir)  # a double-quoted word when the trap runs
    return (f'mkdir -p "{d}" 2>/dev/null && : > "{d}/${{SLURM_ARRAY_TASK_ID:-0}}.${{SLURM_RESTART_COUNT:-0}}" '
            '2>/dev/null; exit $rc')


def render(template: str, *, key: str, campaign: str, log: str, directives: list[str], body: str,
           ended_dir: str = "") -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:64]
    check_log_path(log)
    for what, v in (("campaign id", campaign), ("job key", key)):
        if CONTROL.search(v):  # a newline would end the comment line they go into
            raise InputError(f"Slurm script: {what} {v!r} contains a control character (a newline ends the "
                             "'# opsrg campaign' comment and the rest would run)")
    for d in directives:
        if "\n" in d or "\r" in d:
            raise InputError(f"Slurm script: directive {d!r} contains a newline")
    # a template of the user's own without ${on_exit} leaves no markers: ends are then seen by polling
    on_exit = end_marker_command(ended_dir) if ended_dir else "exit $rc"
    return string.Template(template).substitute(job_name=name, log=log, directives="\n".join(directives),
                                                campaign=campaign, key=key, body=body, on_exit=on_exit)


def load_template(name: str = "job.sbatch") -> str:
    p = TEMPLATE_DIR / name
    return p.read_text(encoding="utf-8") if p.is_file() else DEFAULT_TEMPLATE


@dataclass
class Slurm:
    """The scheduler of one host: every call goes through ``host.run``."""

    host: Host
    env: dict[str, str] = field(default_factory=dict)
    _config: dict[str, str] | None = None
    unreachable: str = ""  # why slurmctld did not answer the last query ("" when it did)

    def _run(self, argv: list[str], check: bool = True, timeout: float = 60):
        try:
            r = self.host.run(argv, check=False, timeout=timeout, env=self.env or None)
        except HostError as e:
            raise SlurmError(f"{shlex.join(argv)}: no answer within {timeout:g}s ({e}); sbatch keeps retrying "
                             "while slurmctld refuses jobs, e.g. at MaxJobCount (see its log)") from None
        if check and not r.ok:
            raise SlurmError(f"{shlex.join(argv)} failed with exit {r.exited}: {r.stderr.strip()[-800:]}", result=r)
        return r

    def config(self) -> dict[str, str]:
        """``scontrol show config``; while slurmctld is down, the keys of slurm.conf itself (not cached)."""
        if self._config is None:
            r = None if self.unreachable else self._run(["scontrol", "show", "config"], check=False)
            if r is not None and r.ok:
                self._config = parse_config(r.stdout)
            else:
                if r is not None:
                    self.unreachable = _last_line(r.stderr) or f"scontrol show config: exit {r.exited}"
                f = self._run(["sh", "-c", 'cat "${SLURM_CONF:-/etc/slurm/slurm.conf}"'], check=False)
                if not f.ok:
                    raise SlurmError(f"slurmctld unreachable ({self.unreachable}) and slurm.conf unreadable: "
                                     f"{f.stderr.strip()[-400:]}")
                return parse_conf_file(f.stdout)
        return self._config

    def max_array_size(self) -> int:
        return int(self.config().get("MaxArraySize", "1001"))

    def accounting(self) -> bool:
        return "none" not in self.config().get("AccountingStorageType", "none")

    def jobcomp_file(self) -> str:
        c = self.config()
        return c.get("JobCompLoc", "") if "filetxt" in c.get("JobCompType", "") else ""

    def submit(self, script: str, deps: Iterable[str] = (), *, hold: bool = False) -> str:
        """Submit one script; ``hold``: the job waits for :meth:`release` (so it is recorded before it runs)."""
        argv = ["sbatch", "--parsable"] + (["--hold"] if hold else [])
        deps = [d for d in deps if d]
        if deps:
            argv += [f"--dependency=afterok:{':'.join(deps)}", "--kill-on-invalid-dep=yes"]
        out = self._run(argv + [script]).stdout.strip()
        job_id = out.split(";")[0].strip()
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed {out!r}, expected a job id")
        return job_id

    def release(self, job_ids: Iterable[str], check: bool = True) -> None:
        """Let held jobs run: one scontrol call for all of them."""
        ids = sorted(set(job_ids), key=lambda x: (len(x), x))
        if ids:
            self._run(["scontrol", "release", ",".join(ids)], check=check)

    def cancel(self, job_ids: Iterable[str]) -> None:
        ids = sorted(set(job_ids))
        if ids:
            self._run(["scancel", *ids], check=False)

    def requeue(self, job_id: str) -> bool:
        return self._run(["scontrol", "requeue", job_id], check=False).ok

    def endings(self, job_ids: Iterable[str]) -> dict[str, list[JobInfo]]:
        """Every ending the scheduler recorded for these jobs/elements, oldest first.

        A job the scheduler requeued by itself (``JobRequeue``: a batch job on a failed node) ended
        once per run; scontrol then shows only ``PENDING``/``Restarts=N``. The jobcomp file keeps a
        line per ending; with accounting, ``sacct -D`` does.
        """
        ids = set(job_ids)
        out: dict[str, list[JobInfo]] = {}
        path = self.jobcomp_file()
        if path:
            for line in (self.host.read_text(path) or "").splitlines():
                for jid, info in parse_jobcomp(line).items():
                    if jid in ids:
                        out.setdefault(jid, []).append(info)
        if not out and self.accounting():
            r = self._run(["sacct", "-D", "-X", "-P", "-n", "-o", "JobID,State,ExitCode,Start,End,Reason",
                           "-j", ",".join(sorted({base_of(i) for i in ids}))], check=False)
            for line in r.stdout.splitlines() if r.ok else []:
                for jid, info in parse_sacct(line).items():
                    if jid in ids:
                        out.setdefault(jid, []).append(info)
        return out

    def query(self, base_ids: Iterable[str]) -> dict[str, JobInfo]:
        """Every job/element of these jobs, from the first source that knows it."""
        bases = sorted(set(base_ids))
        if not bases:
            return {}
        found: dict[str, JobInfo] = {}
        r = self._run(["sacct", "-X", "-P", "-n", "-o", "JobID,State,ExitCode,Start,End,Reason",
                       "-j", ",".join(bases)], check=False)
        if r.ok:
            found.update(parse_sacct(r.stdout))
        # Active jobs are best seen by slurmctld itself (sacct can lag or be absent).
        r = self._run(["scontrol", "show", "job", "-o"], check=False)
        self.unreachable = "" if r.ok else (_last_line(r.stderr) or f"scontrol show job: exit {r.exited}")
        if r.ok:
            for jid, info in parse_scontrol(r.stdout).items():
                if base_of(jid) in bases:
                    prev = found.get(jid)
                    if prev is None or not prev.final:
                        found[jid] = info
        missing = [b for b in bases if not any(base_of(j) == b for j in found)]
        path = self.jobcomp_file()
        if missing and path:
            text = self.host.read_text(path) or ""
            for jid, info in parse_jobcomp(text).items():
                if base_of(jid) in missing:
                    found[jid] = info
        return {j: i for j, i in found.items() if base_of(j) in bases}
