"""The atomic writer and the lock every record's writers share (real files, real processes)."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest

from opsrg.core import atomic
from opsrg.core.atomic import TMP_RE, atomic_write_json, deferred_sync, locked


def test_a_write_replaces_the_file_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "new" / "folder" / "m.json"  # folders made on the way
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_a_failed_write_removes_its_temp_file(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def replace(src, dst):
        seen.append(os.path.basename(src))
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_json(tmp_path / "m.json", {"a": 1})
    monkeypatch.setattr(os, "replace", real)
    assert list(tmp_path.iterdir()) == []
    assert TMP_RE.match(seen[0]), seen  # the name doctor --fix recognises as opsrg's own


def test_deferred_writes_are_flushed_once_at_the_end(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(atomic, "_sync_file_systems", lambda paths: calls.append(sorted(p.name for p in paths)))
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("no fsync inside a deferred batch"))
    with deferred_sync():
        with deferred_sync():  # nested: only the outermost block flushes
            atomic_write_json(tmp_path / "a.json", {})
        atomic_write_json(tmp_path / "b.json", {})
        assert calls == []
    assert calls == [["a.json", "b.json"]]
    monkeypatch.undo()
    atomic._sync_file_systems([tmp_path / "a.json"])  # the real flush runs (syncfs, or os.sync)


def _hold(path: str, ready, seconds: float) -> None:
    with locked(path):
        ready.set()
        time.sleep(seconds)


def test_the_lock_excludes_another_process_and_times_out_naming_the_lock(tmp_path):
    target = str(tmp_path / "m.json")
    ready = multiprocessing.Event()
    p = multiprocessing.Process(target=_hold, args=(target, ready, 1.5))
    p.start()
    try:
        assert ready.wait(10)
        with pytest.raises(TimeoutError, match=r"m\.json\.lock"):
            with locked(target, timeout=0.2):
                pass
        t0 = time.monotonic()
        with locked(target, timeout=10):  # granted once the other process lets go
            assert not p.is_alive() or time.monotonic() - t0 > 0.5
    finally:
        p.join(10)


def test_the_lock_is_released_when_its_holder_dies(tmp_path):
    target = str(tmp_path / "m.json")
    ready = multiprocessing.Event()
    p = multiprocessing.Process(target=_hold, args=(target, ready, 60))
    p.start()
    assert ready.wait(10)
    p.kill()
    p.join(10)
    with locked(target, timeout=5):
        pass
