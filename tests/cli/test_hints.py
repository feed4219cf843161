"""Every hint names a command that exists: the FSM's commands are the command line's tasks, and
every `inv TASK` written anywhere in the package is a task."""

from __future__ import annotations

import ast
import re

from opsrg.cli.tasks import ns
from opsrg.core import fsm

from support import REPO

TASKS = set(ns.task_names)
HINT = re.compile(r"\binv ([a-z][a-z0-9-]*)")


def test_the_fsm_knows_every_task_and_offers_only_tasks():
    assert set(fsm.COMMANDS) == TASKS
    for state in fsm.State:
        assert set(fsm.next_commands(state)) <= TASKS
    for name, rule in fsm.TABLE.items():
        assert rule.event == (name not in TASKS), name
        for cmd in HINT.findall(rule.next_step):
            assert cmd in TASKS, f"{name}: next step names {cmd!r}"


def test_every_inv_hint_in_the_package_names_a_task():
    found, bad = 0, []
    for path in sorted((REPO / "opsrg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for cmd in HINT.findall(node.value):
                    found += 1
                    if cmd not in TASKS:
                        bad.append(f"{path.relative_to(REPO)}:{node.lineno}: inv {cmd}")
    assert found > 20 and not bad, "\n".join(bad)


def test_a_new_campaign_may_follow_a_completed_or_a_failed_one():
    for state in (fsm.State.SWEEP_COMPLETED, fsm.State.SWEEP_FAILED, fsm.State.CHECKED_OUT):
        assert fsm.refusal("sweep-start", state) is None
        assert "sweep-start" in fsm.next_commands(state)
