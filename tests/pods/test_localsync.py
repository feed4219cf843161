"""local_sync passes cut mid-file by a real kill: a file shows under its own name only complete,
the next pass completes it, and the partial copy kept in between is nobody's result."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from opsrg.context import Context
from opsrg.core.errors import HostError
from opsrg.hosts import rsync
from opsrg.ops import artifacts, doctor
from opsrg.pods import localsync

from support import retry_until

PARTIAL = rsync.PARTIAL_DIR


class Watch(threading.Thread):
    """Every size ``path`` shows under its own name, sampled each millisecond."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.sizes, self.done = path, set(), threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.sizes.add(self.path.stat().st_size)
            except FileNotFoundError:
                pass
            time.sleep(0.001)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()


def in_flight(dst: Path, name: str) -> int:
    """Bytes rsync has written to its temp file of ``name``: ``NAME.XXXXXX`` in the temp folder of the
    destination root ``dst`` (``--temp-dir``), or, as rsync does without one, ``.NAME.XXXXXX`` next to
    the file (which opsrg's passes must never do: see :func:`temps_beside`)."""
    for p in [*(dst / rsync.TEMP_DIR).glob(f"{name}.??????"), *temps_beside(dst, name)]:
        try:
            return p.stat().st_size
        except FileNotFoundError:
            pass
    return 0


def temps_beside(folder: Path, name: str) -> list[Path]:
    """rsync's own temp files of ``name`` next to it (``.NAME.XXXXXX``): indistinguishable from a
    user's dotfile, so never left there by opsrg."""
    return list(folder.glob(f".{name}.??????"))


def rsync_pids(dst: Path) -> list[int]:
    """The rsync processes writing into ``dst`` (started by this test, through the sync task)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if d.name.isdigit() and os.path.basename(argv[0]) == b"rsync" and f"{dst}/".encode() in argv:
            out.append(int(d.name))
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_pass_keeps_the_old_file_and_the_next_pass_completes(tmp_path, sig):
    """The pass the loop and the direct final sync run (RSYNC_PASS), slowed with --bwlimit and
    killed mid-file: the durable file stays the previous complete version until it is replaced whole."""
    src, dst = tmp_path / "scratch", tmp_path / "durable"
    src.mkdir()
    dst.mkdir()
    new, old = os.urandom(8_000_000), b"the previous complete version\n"
    (src / "big.bin").write_bytes(new)
    (src / "later.txt").write_text("sent after big.bin")  # rsync sends in name order
    (dst / "big.bin").write_bytes(old)
    os.utime(dst / "big.bin", (1, 1))
    with Watch(dst / "big.bin") as seen:
        p = subprocess.Popen(["bash", "-c", rsync.pass_sh(str(src), str(dst)).replace(
            "rsync -a", "rsync --bwlimit=20000 -a", 1)], start_new_session=True, stderr=subprocess.DEVNULL)
        retry_until(lambda: in_flight(dst, "big.bin") > 1_000_000, 10, 0.002, what="rsync mid-file")
        assert temps_beside(dst, "big.bin") == []  # in opsrg's temp folder, not next to the file
        os.killpg(p.pid, sig)
        p.wait(10)
        retry_until(lambda: not rsync_pids(dst), 10, what="every rsync process of the pass to end")
        assert (dst / "big.bin").read_bytes() == old and temps_beside(dst, "big.bin") == []
        if sig == signal.SIGTERM:  # kept for the next pass, out of the way
            assert 1_000_000 <= (dst / PARTIAL / "big.bin").stat().st_size < len(new)
        else:  # SIGKILL: rsync could not clean up; its temp file is in opsrg's folder, where doctor finds it
            left = list((dst / rsync.TEMP_DIR).iterdir())
            assert len(left) == 1 and left[0].name.startswith("big.bin.")
            os.utime(left[0], (1, 1))
            assert [f.subject for f in doctor.check_temp_files(dst, fix=True) if f.fixed] == [str(left[0])]
        # The next pass resumes from the partial copy in the root's partial folder, and rsync then
        # removes that folder: the temp folder inside it keeps it, so the later files still arrive.
        r = subprocess.run(["bash", "-c", rsync.pass_sh(str(src), str(dst))], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert seen.sizes == {len(old), len(new)}
    assert (dst / "big.bin").read_bytes() == new and (dst / "later.txt").exists()
    assert [p for p in (dst / PARTIAL).rglob("*") if p.is_file()] == []  # the partial copy was used up


@pytest.mark.tmux
def test_sync_loop_pass_killed_mid_file(project):
    """The real loop (a tracked task in tmux) has its rsync killed mid-file: nothing truncated under the
    file's name; doctor and artifacts-ls do not take the partial folder for anything; the final pass
    completes the file and removes the partial folder."""
    ctx = Context.load()
    scratch = Path(localsync.scratch_dir(ctx, "run-k"))
    durable = Path(localsync.durable_dir(ctx, "run-k"))
    scratch.mkdir(parents=True)
    data = os.urandom(1 << 20) * 200  # 200 MiB: a local pass takes a fraction of a second or more
    (scratch / "big.bin").write_bytes(data)
    (scratch / "small.txt").write_text("small")
    with Watch(durable / "big.bin") as seen:
        localsync.start_sync(ctx, "run-k", interval=60)
        retry_until(lambda: in_flight(durable, "big.bin") > 0, 20, 0.001, what="the first pass mid-file")
        pids = rsync_pids(durable)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        assert pids
        retry_until(lambda: not rsync_pids(durable), 10, what="the killed pass to end")
        assert not (durable / "big.bin").exists()
        assert 0 < (durable / PARTIAL / "big.bin").stat().st_size < len(data)

        findings = doctor.run(ctx)
        assert [f.line() for f in findings if PARTIAL in f.subject] == []
        listed = {r.run_id: r for r in artifacts.list_runs(ctx)}
        assert list(listed) == ["run-k"] and listed["run-k"].live_task == "sync-run-k"

        assert "by task sync-run-k" in localsync.final_sync(ctx, "run-k", timeout=60)
    assert seen.sizes == {len(data)}
    assert hashlib.sha256((durable / "big.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert (durable / "small.txt").read_text() == "small" and not list(durable.rglob(PARTIAL))
    log = Path(ctx.tasks.paths("sync-run-k").log).read_text()
    assert "sync pass failed (20)" in log and "final sync done" in log


@pytest.mark.tmux
def test_failed_final_pass_is_not_reported_done(project):
    """A final pass that fails (the scratch folder is gone) fails the task, and the direct pass
    that replaces it fails loudly, naming where the files should be."""
    ctx = Context.load()
    scratch = Path(localsync.scratch_dir(ctx, "run-f"))
    scratch.mkdir(parents=True)
    (scratch / "a.txt").write_text("a")
    localsync.start_sync(ctx, "run-f", interval=60)
    retry_until(lambda: (Path(localsync.durable_dir(ctx, "run-f")) / "a.txt").exists(), 15, what="the first pass")
    shutil.rmtree(scratch)
    with pytest.raises(HostError, match=r"run-f: final sync .* failed") as e:
        localsync.final_sync(ctx, "run-f", timeout=30)
    assert "--partial-dir=.rsync-partial" in e.value.hint
    rec = ctx.tasks.status("sync-run-f")
    assert rec.state.value == "failed"
    assert "final sync pass failed" in Path(ctx.tasks.paths("sync-run-f").log).read_text()
