import itertools
import json
import multiprocessing as mp

import pytest

from opsrg.core.errors import ConfigError, IllegalStateError
from opsrg.core.fsm import State
from opsrg.core.workflow_state import StateStore


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
    history = StateStore(path).history()  # the append-only log beside the state file
    assert len(history) == 20 * n and json.loads(path.read_text())["transitions"] == 20 * n
    for i in range(20):
        assert sum(h["command"] == f"writer-{i}" for h in history) == n
    # every entry's "from" is the previous entry's "to": no update was lost in between
    for a, b in itertools.pairwise(history):
        assert b["from"] == a["to"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_history_lives_in_an_append_only_log_and_the_state_file_stays_small(tmp_path):
    st = StateStore(tmp_path / "s.json")
    for i in range(300):
        st.set(State.POD_READY if i % 2 else State.INIT, f"c{i}")
    assert (tmp_path / "s.json").stat().st_size < 400
    assert [h["command"] for h in st.history(last=3)] == ["c297", "c298", "c299"]
    assert len(st.history()) == 300 and st.read().transitions == 300


def test_an_inline_history_of_an_older_file_is_read_then_migrated_on_the_first_write(tmp_path):
    p = tmp_path / "s.json"
    old = [{"from": "INIT", "to": "POD_READY", "command": f"old{i}", "at": "2026-01-01T00:00:00+00:00"}
           for i in range(5)]
    p.write_text(json.dumps({"state": "POD_READY", "updated_at": "x", "command": "old4", "history": old}))
    st = StateStore(p)
    assert [h["command"] for h in st.history()] == [f"old{i}" for i in range(5)]
    assert st.read().state == State.POD_READY
    st.set(State.BOOTSTRAPPED, "bootstrap")
    assert "history" not in json.loads(p.read_text())
    assert [h["command"] for h in st.history()] == [f"old{i}" for i in range(5)] + ["bootstrap"]
    assert [h["command"] for h in st.history(last=2)] == ["old4", "bootstrap"]


def test_a_torn_last_line_of_the_log_is_skipped(tmp_path):
    st = StateStore(tmp_path / "s.json")
    st.set(State.POD_READY, "pod-up")
    with open(st.log_path, "a") as fh:
        fh.write('{"from": "POD_READY", "to"')  # a writer killed inside its append
    assert [h["command"] for h in st.history()] == ["pod-up"]
    st.set(State.BOOTSTRAPPED, "bootstrap")
    assert [h["command"] for h in st.history()][-1] == "bootstrap"
