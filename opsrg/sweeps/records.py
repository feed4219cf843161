"""The typed states of a sweep's records, read tolerantly from what is on disk.

Both are ``(str, Enum)``: a state compares equal to the string the manifests hold, and writes as
that string, so files of earlier opsrg versions read unchanged and new files read the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from opsrg.core.enums import StateEnum


class RunState(StateEnum):
    """A run's state in its ``run_manifest.json``; it only moves forward (see :attr:`rank`)."""

    SUBMITTED = "submitted"
    RUNNING = "running"
    SYNCED = "synced"        # its summary reached the durable folder
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


    @property
    def is_final(self) -> bool:
        return self in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED)

    @property
    def rank(self) -> int:
        """Order of progress: an update never moves a run to a lower rank (final states share the top)."""
        return {RunState.SUBMITTED: 0, RunState.RUNNING: 1, RunState.SYNCED: 2}.get(self, 3)


class LaunchState(StateEnum):
    """How far the command that started or resumed a campaign got (``launch`` in the sweep manifest).

    ``pending``: its files are written, the workflow state not yet committed; ``launching``:
    committed, run manifests and driver or jobs being created; ``launched``. A launch whose process
    died on the way is settled by the next monitor pass or doctor: ``aborted`` (nothing was
    started) or ``interrupted`` (the runs it had not started are failed, so ``--resume`` redoes them).
    """

    PENDING = "pending"
    LAUNCHING = "launching"
    LAUNCHED = "launched"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"


    @property
    def is_open(self) -> bool:
        return self in (LaunchState.PENDING, LaunchState.LAUNCHING)

    @property
    def is_cut(self) -> bool:
        return self in (LaunchState.ABORTED, LaunchState.INTERRUPTED)


FINAL = tuple(s for s in RunState if s.is_final)


def ending(task_state: str, exit_code: int | None, signal: int | None = None) -> dict[str, Any]:
    """How a run's process ended, the same from a tmux task and a Slurm job: the program's exit
    status, or the signal that ended it (a negative status, Python's way of saying so, or the
    scheduler's ``0:15``), and whether its time limit did."""
    if exit_code is not None and exit_code < 0:
        exit_code, signal = None, -exit_code
    timed_out = task_state == "timed_out"
    if (signal or timed_out) and not exit_code:  # a 0 next to a signal, or a limit's kill, is no status of its own
        exit_code = None
    return {"exit_code": exit_code, "signal": signal or None, "timed_out": timed_out}
LAUNCH_OPEN = tuple(s for s in LaunchState if s.is_open)
LAUNCH_CUT = tuple(s for s in LaunchState if s.is_cut)


def _fields_of(cls: type, data: dict[str, Any], nullable: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The keyword arguments of ``cls`` in ``data``, and ``extra``: the keys it does not know.

    A null where the field has a default other than None (an older writer) takes the default.
    """
    names = {f.name for f in fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names and (v is not None or k in nullable)}
    return {**known, "extra": {k: v for k, v in data.items() if k not in names}}


def _as_json(record: Any) -> dict[str, Any]:
    d = {f.name: getattr(record, f.name) for f in fields(record) if f.name != "extra"}
    return {**d, **record.extra}


@dataclass
class RunManifest:
    """A run's ``run_manifest.json``, typed.

    Read tolerantly: a missing field takes its default (manifests of earlier opsrg versions lack
    some), a field this version does not know is kept in ``extra`` and written back unchanged.
    """

    run_id: str
    campaign: str = ""
    backend: str = ""
    state: RunState = RunState.SUBMITTED
    attempt: int = 1
    submitted_at: str = ""
    started_at: str = ""
    completed_at: str = ""
    reason: str = ""
    exit_code: int | None = None   # the program's own exit status; None when a signal ended it
    signal: int | None = None      # the signal that ended it (a time limit, a cancel, the kernel's OOM kill)
    timed_out: bool = False        # it ran past its time limit (RUN_TIMEOUT_SECS, timeout_secs, SLURM_TIME)
    summary_ok: bool | None = None
    log_tail: list[str] = field(default_factory=list)  # a failed run's last log lines
    job_ids: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)  # the pod's GPUs the run holds while it runs (tmux)
    requeues: list[dict[str, Any]] = field(default_factory=list)
    identity: str | None = None
    row: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    previous: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunManifest:
        """ValueError when ``data`` is no run manifest (no run id, or a state that is none)."""
        if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
            raise ValueError("not a run manifest (no run_id)")
        kw = _fields_of(cls, data, frozenset({"exit_code", "signal", "summary_ok", "identity"}))
        return cls(**{**kw, "state": RunState(data.get("state", RunState.SUBMITTED))})

    def to_json(self) -> dict[str, Any]:
        return {**_as_json(self), "state": self.state.value}


@dataclass
class Campaign:
    """A campaign's sweep manifest (``_manifests/<campaign>.json``), typed.

    ``env`` is the launch snapshot (opsrg.sweeps.campaign.SweepEnv as JSON), ``rows`` the CSV rows
    as validated, ``jobs`` the Slurm submissions by key, ``todo`` the runs started so far, ``launch``
    the launch record (:class:`LaunchState` in ``state``). Read tolerantly, as :class:`RunManifest`.
    """

    campaign: str
    backend: str
    env: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = ""
    source_csv: str = ""
    csv_copy: str = ""
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    todo: list[str] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    identities: dict[str, str] = field(default_factory=dict)
    reused: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    launch: dict[str, Any] = field(default_factory=dict)
    driver_task: str = ""
    replaced: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_ids(self) -> list[str]:
        return [r["run_id"] for r in self.rows]

    @property
    def rows_by_id(self) -> dict[str, dict[str, Any]]:
        return {r["run_id"]: r for r in self.rows}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Campaign:
        """ValueError when ``data`` is no sweep manifest."""
        if not isinstance(data, dict) or not isinstance(data.get("campaign"), str) or "backend" not in data:
            raise ValueError("not a sweep manifest (no campaign or backend)")
        return cls(**_fields_of(cls, data))

    def to_json(self) -> dict[str, Any]:
        return _as_json(self)
