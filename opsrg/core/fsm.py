"""The workflow state machine: states, and one table of which command runs where.

Pure logic, no I/O: :mod:`opsrg.workflow_state` persists it. Nothing else in the product
hard-codes a transition; commands ask :func:`check` and apply :func:`target_of`.
"""

from __future__ import annotations

from dataclasses import dataclass

from opsrg.core.enums import StateEnum
from opsrg.core.errors import IllegalStateError


class State(StateEnum):
    INIT = "INIT"
    POD_READY = "POD_READY"
    BOOTSTRAPPED = "BOOTSTRAPPED"
    CHECKED_OUT = "CHECKED_OUT"
    SWEEP_RUNNING = "SWEEP_RUNNING"
    SWEEP_COMPLETED = "SWEEP_COMPLETED"
    SWEEP_FAILED = "SWEEP_FAILED"



ALL = frozenset(State)
HAS_POD = ALL - {State.INIT}
HAS_CHECKOUT = frozenset(
    {State.CHECKED_OUT, State.SWEEP_RUNNING, State.SWEEP_COMPLETED, State.SWEEP_FAILED}
)


@dataclass(frozen=True)
class Rule:
    """Where a command may run, and the state it leaves behind on success (None: unchanged).

    An ``event`` is what opsrg itself records (a resume, a sweep's end), not a command a user
    types: it is never offered as one."""

    allowed: frozenset[State]
    target: State | None
    next_step: str = ""
    event: bool = False


# The one table. Read-only commands are listed too, so `fsm-check` answers for every command.
TABLE: dict[str, Rule] = {
    "pod-up": Rule(frozenset({State.INIT, State.POD_READY}), State.POD_READY),
    "pod-down": Rule(ALL, State.INIT),
    "pod-status": Rule(ALL, None),
    "bootstrap": Rule(frozenset({State.POD_READY, State.BOOTSTRAPPED}), State.BOOTSTRAPPED, "inv pod-up"),
    "checkout": Rule(
        frozenset({State.BOOTSTRAPPED, State.CHECKED_OUT, State.SWEEP_COMPLETED, State.SWEEP_FAILED}),
        State.CHECKED_OUT,
        "inv bootstrap",
    ),
    "push": Rule(ALL - {State.INIT, State.POD_READY}, None, "inv bootstrap"),
    "pull": Rule(HAS_POD, None, "inv pod-up"),
    "fetch-run": Rule(HAS_POD, None, "inv pod-up"),
    # a new campaign after a completed or a failed one: the checkout is still in place
    "sweep-start": Rule(frozenset({State.CHECKED_OUT, State.SWEEP_COMPLETED, State.SWEEP_FAILED}),
                        State.SWEEP_RUNNING, "inv checkout"),
    # sweep-start --resume, and the monitor's verdict once every run is final
    "sweep-resume": Rule(frozenset({State.SWEEP_FAILED, State.SWEEP_RUNNING}), State.SWEEP_RUNNING, event=True),
    "sweep-completed": Rule(frozenset({State.SWEEP_RUNNING}), State.SWEEP_COMPLETED, event=True),
    "sweep-failed": Rule(frozenset({State.SWEEP_RUNNING}), State.SWEEP_FAILED, event=True),
    "sweep-cancel": Rule(frozenset({State.SWEEP_RUNNING}), State.SWEEP_FAILED),
    "sweep-status": Rule(ALL, None),
    "sweep-monitor": Rule(ALL, None),  # it records the sweep's end (an event) once every run is final
    "sweep-csv-template": Rule(ALL, None),
    "sweep-grid": Rule(ALL, None),
    "sweep-report": Rule(ALL, None),
    "sweep-attach": Rule(ALL, None),
    "slurm-ledger": Rule(ALL, None),
    "doctor": Rule(ALL, None),
    "artifacts-ls": Rule(ALL, None),
    "artifacts-gc": Rule(ALL, None),
    "task-run": Rule(HAS_POD, None, "inv pod-up"),
    "task-kill": Rule(ALL, None),
    "task-status": Rule(ALL, None),
    "task-wait": Rule(ALL, None),
    "task-list": Rule(ALL, None),
    "task-logs": Rule(ALL, None),
    "task-attach": Rule(ALL, None),
    "fsm-status": Rule(ALL, None),
    "fsm-history": Rule(ALL, None),
    "fsm-check": Rule(ALL, None),
    "fsm-reset": Rule(ALL, None),
    "config-show": Rule(ALL, None),
    "init": Rule(ALL, None),  # writes a project's starter files; reads no state
}


def parse_state(name: str) -> State:
    try:
        return State(name.strip().upper())
    except ValueError:
        known = ", ".join(s.value for s in State)
        raise IllegalStateError(f"unknown state {name!r}; known states: {known}") from None


COMMANDS = tuple(sorted(c for c, r in TABLE.items() if not r.event))


def rule_for(command: str) -> Rule:
    try:
        return TABLE[command]
    except KeyError:
        raise IllegalStateError(f"unknown command {command!r}; known: {', '.join(COMMANDS)}") from None


def next_commands(current: State) -> list[str]:
    """The commands a user may type in ``current`` that move the workflow on."""
    return [c for c in COMMANDS if current in TABLE[c].allowed and TABLE[c].target is not None]


def _ordered(states: frozenset[State]) -> list[str]:
    order = list(State)
    return [s.value for s in sorted(states, key=order.index)]


def refusal(command: str, current: State) -> str | None:
    """The message that refuses ``command`` in ``current``, or None when it may run."""
    rule = rule_for(command)
    if current in rule.allowed:
        return None
    msg = (
        f"'{command}' is not allowed in state {current.value}; "
        f"allowed in: {', '.join(_ordered(rule.allowed))}"
    )
    if rule.next_step:
        msg += f" (usually reached with: {rule.next_step})"
    return msg


def check(command: str, current: State) -> None:
    """Raise IllegalStateError when ``command`` may not run in ``current``."""
    msg = refusal(command, current)
    if msg is not None:
        raise IllegalStateError(msg)


def target_of(command: str, current: State) -> State:
    """The state after ``command`` succeeds in ``current``."""
    rule = rule_for(command)
    return rule.target if rule.target is not None else current
