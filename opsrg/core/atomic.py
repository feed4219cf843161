"""Atomic file writes: temp file in the same folder, fsync, rename.

Every writer of JSON, NPZ and marker files goes through here, so a reader never sees a torn
file: it sees the old content or the new one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Every temp file opsrg writes is named ``.NAME.opsrg-XXXXXXXX.tmp`` (X: [a-z0-9_]): the marker is
# opsrg's alone, so `inv doctor --fix` can tell a leftover of its own killed writer (deleted) from
# a user's file that merely looks like a temp file (``.model.pickle``, ``.foo.tmp``: never touched).
# Spelled once, here; opsrg/supervisor.py (stdlib-only, copied to pods alone) carries a copy of
# TMP_MARK, which tests/ops/test_doctor.py checks, as it checks every other writer's temp names.
TMP_MARK = ".opsrg-"
TMP_SUFFIX = ".tmp"
TMP_RE = re.compile(r"^\..+" + re.escape(TMP_MARK) + r"[a-z0-9_]{8}" + re.escape(TMP_SUFFIX) + "$")
# The same as an rsync exclude / fnmatch pattern (what is never a result, never fetched).
TMP_GLOB = ".*" + TMP_MARK + "?" * 8 + TMP_SUFFIX


def tmp_prefix(name: str) -> str:
    """The start of a temp file's name for ``name``: add 8 random characters and TMP_SUFFIX."""
    return f".{name}{TMP_MARK}"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_deferred = 0  # > 0: inside deferred_sync(), whose end makes every write durable at once
_deferred_lock = threading.Lock()


@contextlib.contextmanager
def deferred_sync() -> Iterator[None]:
    """Many atomic writes, made durable together: inside, a write is still atomic (temp file and
    rename: a reader sees the old or the new file) but not fsynced one by one; leaving the block
    syncs them all with one ``os.sync()``. For a launch that writes a thousand manifests, whose
    fsyncs otherwise take seconds. Process-wide: meant for the batch alone, from any of its threads.
    (``os.sync`` flushes the machine's other dirty pages too, a training job's included: one
    flush for the batch instead of a thousand small ones.)"""
    global _deferred
    with _deferred_lock:
        _deferred += 1
    try:
        yield
    finally:
        with _deferred_lock:
            _deferred -= 1
        os.sync()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path.name), suffix=TMP_SUFFIX, dir=path.parent)
    durable = not _deferred
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, compact: bool = False) -> None:
    """JSON, indented for people; ``compact`` for a big file rewritten often (a campaign's manifest
    with a thousand rows: the indenting encoder is pure Python, the compact one C, ten times faster)."""
    text = json.dumps(obj, sort_keys=True, default=str, **({"separators": (",", ":")} if compact else {"indent": 2}))
    atomic_write_text(path, text + "\n")


def atomic_save_npz(path: str | os.PathLike[str], **arrays: Any) -> None:
    """``numpy.savez`` through a temp file: a killed writer never leaves a torn NPZ."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], timeout: float = 30.0) -> Iterator[None]:
    """Hold the advisory lock ``<path>.lock`` (flock, shared with the stdlib supervisor)."""
    from filelock import FileLock

    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path), timeout=timeout):
        yield
