"""The rsync options of every transfer opsrg makes, on this machine or to a pod.

A pass is resumable and shows a file under its own name only once it is complete: an interrupted
pass keeps what it copied in ``.rsync-partial/`` next to the file (the next pass goes on from it),
never a truncated file under the real name; a pass killed outright leaves its temp file in
``.rsync-partial/.opsrg-tmp/`` (:data:`TEMP_DIR`).
"""

from __future__ import annotations

import contextlib
import os
import shlex

from opsrg.core.atomic import TMP_GLOB

PARTIAL_DIR = ".rsync-partial"
# Where every rsync opsrg runs writes its temp files (``--temp-dir``, relative to the destination
# root, which must hold it before rsync starts: ``mkdir -p DST/TEMP_DIR``). A pass killed with
# SIGKILL then leaves its temp file there, inside opsrg's own folder, never as ``.NAME.XXXXXX``
# next to the real file (where it could not be told from a user's ``.model.pickle``). It is a
# folder *inside* the partial folder, not the partial folder itself: rsync removes the partial
# folder once it used the last partial copy there, and with it a temp folder of the same name,
# failing every later file of the pass (rsync 3.5, code 23).
TEMP_DIR = f"{PARTIAL_DIR}/.opsrg-tmp"
# ``--partial-dir`` (not ``--partial``): a killed pass leaves its partial copy in the partial
# folder, where the next pass resumes from it, not under the file's own name.
RSYNC_SAFE = (f"--partial-dir={PARTIAL_DIR}", f"--temp-dir={TEMP_DIR}")
# Never results, so never mirrored nor fetched (rsync exclude patterns; each matches a file or
# folder name): rsync's partial folder (with its temp folder), temp files of opsrg's atomic
# writes (``.NAME.opsrg-XXXXXXXX.tmp``, opsrg/core/atomic.py), lock files. Nothing else: a user's
# dotfile (``.model.pickle``, ``.foo.tmp``) is a result like any other file.
NOT_RESULTS = (PARTIAL_DIR, TMP_GLOB, "*.lock")
EXCLUDES = tuple(f"--exclude={x}" for x in NOT_RESULTS)
# One mirror pass (run it after ``mkdir -p DST/TEMP_DIR``; :func:`pass_sh` does both).
RSYNC_PASS = ("rsync", "-a", *RSYNC_SAFE, *EXCLUDES)


def pass_sh(src: str, dst: str, *extra: str) -> str:
    """One mirror pass as a shell command: the temp folder first, then rsync ``src/`` -> ``dst/``."""
    return (f"mkdir -p {shlex.quote(f'{dst}/{TEMP_DIR}')} && "
            f"{shlex.join([*RSYNC_PASS, *extra, f'{src}/', f'{dst}/'])}")


def safe_args(dry_run: bool = False) -> tuple[str, ...]:
    """:data:`RSYNC_SAFE` for one transfer: rsync refuses a --temp-dir that does not exist even for a dry run,
    which writes nothing, so a dry run goes without it."""
    return tuple(a for a in RSYNC_SAFE if not (dry_run and a.startswith("--temp-dir=")))


def drop_temp_dir(dst: str | os.PathLike[str], started: float) -> None:
    """After a successful local rsync into ``dst``: remove its temp folder, and the partial folder
    if that is then empty (a partial copy in it, kept for the next transfer, keeps it). Temp files
    older than this pass (``started``) are a killed earlier pass's: removed first."""
    tmp = os.path.join(dst, TEMP_DIR)
    with contextlib.suppress(OSError):
        for e in os.scandir(tmp):
            if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < started:
                os.unlink(e.path)
    for d in (tmp, os.path.join(dst, PARTIAL_DIR)):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def stale_temp_sh(dst: str, started: float) -> str:
    """The same on a pod: delete what a killed earlier pass left in ``dst``'s temp folder (files
    older than ``started``), then the empty temp and partial folders."""
    tmp = shlex.quote(f"{dst}/{TEMP_DIR}")
    return (f"find {tmp} -maxdepth 1 -type f ! -newermt @{int(started)} -delete 2>/dev/null; "
            f"rmdir {tmp} {shlex.quote(f'{dst}/{PARTIAL_DIR}')} 2>/dev/null; true")
