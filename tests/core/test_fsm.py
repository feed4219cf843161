import pytest

from opsrg.core import fsm
from opsrg.core.errors import IllegalStateError
from opsrg.core.fsm import State


def test_happy_path_walks_every_state():
    s = State.INIT
    for cmd, expected in [("pod-up", State.POD_READY), ("bootstrap", State.BOOTSTRAPPED),
                          ("checkout", State.CHECKED_OUT), ("sweep-start", State.SWEEP_RUNNING),
                          ("sweep-completed", State.SWEEP_COMPLETED)]:
        fsm.check(cmd, s)
        s = fsm.target_of(cmd, s)
        assert s == expected


def test_failed_sweep_can_resume_or_start_a_new_campaign_but_not_complete():
    fsm.check("sweep-resume", State.SWEEP_FAILED)
    assert fsm.target_of("sweep-resume", State.SWEEP_FAILED) == State.SWEEP_RUNNING
    fsm.check("sweep-start", State.SWEEP_FAILED)
    assert fsm.target_of("sweep-start", State.SWEEP_FAILED) == State.SWEEP_RUNNING
    with pytest.raises(IllegalStateError):
        fsm.check("sweep-completed", State.SWEEP_FAILED)


def test_refusal_names_state_and_allowed_states():
    msg = fsm.refusal("sweep-start", State.INIT)
    assert "INIT" in msg and "CHECKED_OUT" in msg and "SWEEP_COMPLETED" in msg
    assert "inv checkout" in msg


def test_read_only_commands_allowed_everywhere_and_keep_state():
    for s in State:
        for cmd in ("fsm-status", "task-status", "task-list", "pod-status"):
            fsm.check(cmd, s)
            assert fsm.target_of(cmd, s) == s


def test_every_target_is_a_state_and_every_rule_allows_something():
    for cmd, rule in fsm.TABLE.items():
        assert rule.allowed, cmd
        assert rule.target is None or isinstance(rule.target, State)


@pytest.mark.parametrize("bad", ["nope", "", "SWEEP"])
def test_unknown_state_and_command(bad):
    with pytest.raises(IllegalStateError, match="known"):
        fsm.parse_state(bad)
    with pytest.raises(IllegalStateError, match="unknown command"):
        fsm.check(bad or "x", State.INIT)


def test_parse_state_is_case_insensitive():
    assert fsm.parse_state("checked_out") == State.CHECKED_OUT
