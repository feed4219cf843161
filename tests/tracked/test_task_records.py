"""Pure logic of task records (no tmux)."""

from opsrg.tracked.records import RECENT_ENDED, TaskRecord, TaskState, recent


def _recs(states):
    return [TaskRecord(id=f"t{i}", state=TaskState(s)) for i, s in enumerate(states)]


def test_recent_keeps_every_live_task_and_the_newest_ended_ones_in_order():
    recs = _recs(["success", "running", "failed", "pending", "timed_out", "success"])
    assert [r.id for r in recent(recs, ended=2)] == ["t1", "t3", "t4", "t5"]
    assert [r.id for r in recent(recs, ended=0)] == ["t1", "t3"]
    assert recent(recs) == recs and RECENT_ENDED == 30


def test_the_task_list_help_names_the_number_it_keeps():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "opsrg" / "cli" / "tasks.py").read_text()
    assert re.search(rf"newest {RECENT_ENDED} that ended", text)
