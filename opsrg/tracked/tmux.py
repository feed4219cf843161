"""The tmux runner: one window per tracked task, on opsrg's own tmux socket.

opsrg never talks to the default tmux server, so a user's own sessions are never touched.
The window runs the stdlib supervisor; the task's truth lives in its files, never in tmux.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from opsrg.core.errors import InputError, TaskError
from opsrg.hosts.base import ENV_NAME_RE, Host

# Variables a task needs from the launching environment. Sessions on a running tmux server
# inherit the server's environment, not ours, so they are passed explicitly with -e.
PASS_ENV = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "VIRTUAL_ENV", "PYTHONPATH", "SLURM_CONF",
            "TMPDIR", "CUDA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "NUMBA_CACHE_DIR")


@dataclass(frozen=True)
class TmuxTarget:
    socket: str
    session: str
    window: str
    window_id: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"socket": self.socket, "session": self.session, "window": self.window,
                "window_id": self.window_id}


class TmuxRunner:
    """Starts supervisors in windows of ``session`` on the ``tmux -L socket`` server of a host."""

    name = "tmux"

    def __init__(self, host: Host, socket: str, session: str) -> None:
        self.host, self.socket, self.session = host, socket, session

    def _tmux(self, *args: str) -> list[str]:
        return ["tmux", "-L", self.socket, *(tmux_arg(a) for a in args)]

    def ensure_session(self) -> None:
        r = self.host.run(self._tmux("has-session", "-t", f"={self.session}"), check=False)
        if r.ok:
            return
        # The session's first window is a quiet placeholder, so the session outlives its tasks.
        r = self.host.run(
            self._tmux("new-session", "-d", "-s", self.session, "-n", "_opsrg", "-x", "200", "-y", "50",
                       "sleep infinity"),
            check=False,
        )
        if not r.ok and "duplicate session" not in r.stderr:
            raise TaskError(f"{self.host.name}: cannot start tmux session {self.session!r}: {r.stderr.strip()}")

    def start(self, window: str, argv: list[str], env: dict[str, str] | None = None) -> TmuxTarget:
        self.ensure_session()
        envs: list[str] = []
        merged = {k: os.environ[k] for k in PASS_ENV if k in os.environ and self.host.name == _local_name()}
        merged.update(env or {})
        for k, v in merged.items():
            if not ENV_NAME_RE.match(k):
                raise InputError(f"invalid environment variable name {k!r} for task {window!r}")
            envs += ["-e", f"{k}={v}"]
        r = self.host.run(
            self._tmux("new-window", "-d", "-P", "-F", "#{window_id}", "-t", f"={self.session}:", "-n", window,
                       *envs, "--", shlex.join(argv)),
            check=False,
        )
        if not r.ok:
            raise TaskError(f"{self.host.name}: tmux new-window for {window!r} failed: {r.stderr.strip()}")
        return TmuxTarget(self.socket, self.session, window, r.stdout.strip())

    def window_exists(self, window: str) -> bool:
        r = self.host.run(self._tmux("list-windows", "-t", f"={self.session}", "-F", "#{window_name}"), check=False)
        return r.ok and window in r.stdout.split()

    def attach_argv(self, target: TmuxTarget) -> list[str]:
        # The bare ";" separates two tmux commands (added after _tmux, which would escape it).
        return [*self._tmux("attach-session", "-t", f"={self.session}"), ";",
                *self._tmux("select-window", "-t", target.window_id or target.window)[3:]]

    def kill_server(self) -> None:
        self.host.run(self._tmux("kill-server"), check=False)


def tmux_arg(arg: str) -> str:
    """An argument as tmux takes it from its command line: one that ends in ``;`` would end the
    tmux command there (the rest would run as tmux commands), so its last ``;`` is escaped."""
    return arg[:-1] + "\\;" if arg.endswith(";") else arg


def _local_name() -> str:
    import socket

    return socket.gethostname()
