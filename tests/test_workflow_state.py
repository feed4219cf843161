import itertools
import json
import multiprocessing as mp

import pytest

from opsrg.errors import ConfigError, IllegalStateError
from opsrg.fsm import State
from opsrg.workflow_state import StateStore


def test_missing_file_is_init(tmp_path):
    assert StateStore(tmp_path / "s.json").read().state == State.INIT


def test_transition_commits_target_and_history(tmp_path):
    st = StateStore(tmp_path / "s.json")
    with st.transition("pod-up"):
        pass
    ws = st.read()
    assert ws.state == State.POD_READY and ws.command == "pod-up"
    assert ws.history[-1]["from"] == "INIT" and ws.history[-1]["to"] == "POD_READY"


def test_illegal_command_fails_fast_and_does_nothing(tmp_path):
    st = StateStore(tmp_path / "s.json")
    ran = []
    with pytest.raises(IllegalStateError, match="not allowed in state INIT"):
        with st.transition("sweep-start"):
            ran.append(1)
    assert not ran and not (tmp_path / "s.json").exists()


def test_not_enforced_warns_and_proceeds(tmp_path, capsys):
    st = StateStore(tmp_path / "s.json")
    with st.transition("bootstrap", enforce=False):
        pass
    assert "warning" in capsys.readouterr().err
    assert st.read().state == State.BOOTSTRAPPED


def test_failed_body_leaves_state(tmp_path):
    st = StateStore(tmp_path / "s.json")
    with pytest.raises(RuntimeError):
        with st.transition("pod-up"):
            raise RuntimeError("boom")
    assert st.read().state == State.INIT


def test_compare_and_set_refuses_a_state_moved_meanwhile(tmp_path):
    st = StateStore(tmp_path / "s.json")
    with pytest.raises(IllegalStateError, match="changed from INIT to CHECKED_OUT"):
        with st.transition("pod-up"):
            st.set(State.CHECKED_OUT, "fsm-reset")
    assert st.read().state == State.CHECKED_OUT


def test_torn_or_garbage_file_is_a_clear_error(tmp_path):
    p = tmp_path / "s.json"
    p.write_text('{"state": "POD_RE')
    with pytest.raises(ConfigError, match="unreadable"):
        StateStore(p).read()
    p.write_text('{"state": "NOPE"}')
    with pytest.raises(ConfigError, match="fsm-reset"):
        StateStore(p).read()


def _writer(path, i, n):
    st = StateStore(path)
    states = list(State)
    for k in range(n):
        st.set(states[(i + k) % len(states)], f"writer-{i}")


def test_twenty_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "s.json"
    n = 10
    procs = [mp.Process(target=_writer, args=(path, i, n)) for i in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = json.loads(path.read_text())
    assert len(data["history"]) == 20 * n
    for i in range(20):
        assert sum(h["command"] == f"writer-{i}" for h in data["history"]) == n
    # every entry's "from" is the previous entry's "to": no update was lost in between
    for a, b in itertools.pairwise(data["history"]):
        assert b["from"] == a["to"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
