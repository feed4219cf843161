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
_deferred_paths: list[Path] = []  # the files written meanwhile
_deferred_lock = threading.Lock()


@contextlib.contextmanager
def deferred_sync() -> Iterator[None]:
    """Many atomic writes, made durable together: inside, a write is still atomic (temp file and
    rename: a reader sees the old or the new file) but not fsynced; leaving the block flushes the
    file systems that hold the files written, each with one ``syncfs`` (``os.sync`` where there is
    none): one journal commit for a thousand manifests instead of a thousand, and no other file
    system's data. Process-wide: from any of the batch's threads."""
    global _deferred
    with _deferred_lock:
        _deferred += 1
    try:
        yield
    finally:
        with _deferred_lock:
            _deferred -= 1
            outermost, todo = _deferred == 0, list(_deferred_paths)
            if outermost:
                _deferred_paths.clear()
        if outermost:
            _sync_file_systems(todo)


def _sync_file_systems(paths: list[Path]) -> None:
    devices: dict[int, Path] = {}
    for path in paths:
        with contextlib.suppress(OSError):
            devices.setdefault(os.stat(path.parent).st_dev, path.parent)
    syncfs = _libc_syncfs()
    for folder in devices.values():
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue
        try:
            if syncfs is None or syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)


def _libc_syncfs():
    """Linux's syncfs(2) through ctypes (Python has no binding); None elsewhere."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temp file beside ``path`` (named as TMP_RE says), creating the folder if need be."""
    while True:
        tmp = os.path.join(path.parent, f"{tmp_prefix(path.name)}{os.urandom(4).hex()}{TMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file."""
    path = Path(path)
    fd, tmp = _create_temp(path)
    durable = not _deferred
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)
    else:
        with _deferred_lock:
            _deferred_paths.append(path)


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
    """Hold the advisory lock ``<path>.lock``: an flock, the same lock the stdlib supervisor takes.

    Plain ``fcntl`` rather than a locking library: a launch takes a thousand of these, and a
    library's bookkeeping cost five times the lock itself. Not re-entrant (a second hold of the
    same lock in one process waits for the first); released when the block ends or the process
    dies. Raises TimeoutError after ``timeout`` seconds.
    """
    import fcntl
    import time

    lock_path = f"{os.fspath(path)}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, pause = time.monotonic() + timeout, 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{lock_path}: still held by another process after {timeout:g}s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        yield
    finally:
        os.close(fd)  # releases the lock
