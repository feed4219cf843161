"""This machine as a :class:`~opsrg.hosts.base.Host`: the default pod."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from opsrg.core.atomic import atomic_write_text
from opsrg.core.errors import HostError
from opsrg.hosts.base import TASK_TAG, Command, RunResult, as_shell
from opsrg.hosts.rsync import TEMP_DIR, drop_temp_dir, safe_args


class LocalHost:
    """This machine: the default pod, and the client side of every remote operation."""

    def __init__(self, python: str | None = None) -> None:
        import sys

        self.name = socket.gethostname()
        self.python = python or sys.executable

    def run(self, cmd: Command, *, check: bool = True, timeout: float | None = None,
            env: dict[str, str] | None = None, cwd: str | None = None) -> RunResult:
        shell = as_shell(cmd)
        # A task's tag marks the task's own processes (the supervisor kills by it): never pass it on
        # to what opsrg starts for itself (a tmux server, sbatch jobs), even when run inside a task.
        full_env = {k: v for k, v in os.environ.items() if k != TASK_TAG}
        full_env.update(env or {})
        try:
            p = subprocess.run(
                ["bash", "-c", shell], capture_output=True, text=True, timeout=timeout,
                env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            raise HostError(f"{self.name}: command timed out after {timeout}s: {shell}") from e
        res = RunResult(shell, p.returncode, p.stdout, p.stderr)
        if check and not res.ok:
            raise HostError(
                f"{self.name}: command failed with exit {p.returncode}: {shell}\n{p.stderr.strip()[-2000:]}",
                result=res)
        return res

    def put(self, local: str | os.PathLike[str], remote: str) -> None:
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, remote)

    def get(self, remote: str, local: str | os.PathLike[str]) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(remote, local)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        atomic_write_text(path, text, mode=mode)

    def sync(self, src: str, dst: str, *, to_host: bool = True, delete: bool = False,
             dry_run: bool = False, excludes: Sequence[str] = ()) -> RunResult:
        """rsync between two folders of this machine (direction is moot locally).

        A cut transfer keeps its partial copy in ``.rsync-partial/`` (resumed by the next call),
        never as a truncated file under the real name, and a killed one its temp file in
        ``.rsync-partial/.opsrg-tmp/`` (opsrg.hosts.rsync.TEMP_DIR), as on the SSH host. Files with
        holes stay sparse (``--sparse``).
        """
        args = ["rsync", "-a", "--sparse", *safe_args(dry_run), "--itemize-changes"]
        if delete:
            args.append("--delete")
        if dry_run:
            args.append("--dry-run")
        args += [f"--exclude={x}" for x in excludes]
        Path(dst, TEMP_DIR if not dry_run else "").mkdir(parents=True, exist_ok=True)
        args += [src.rstrip("/") + "/", dst.rstrip("/") + "/"]
        started = time.time() - 1.0  # a temp file older than this pass is a killed one's
        p = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise HostError(f"{self.name}: rsync {src} -> {dst} failed ({p.returncode}): {p.stderr.strip()}",
                            result=RunResult(shlex.join(args), p.returncode, p.stdout, p.stderr))
        if not dry_run:
            drop_temp_dir(dst, started)
        return RunResult(shlex.join(args), p.returncode, p.stdout, p.stderr)
