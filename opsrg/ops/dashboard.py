"""``sweep-attach``: a live view of a campaign in tmux on its pod, built with tmuxp.

opsrg writes a tmuxp workspace under the outputs' ``_control/`` (one window running
``sweep-status --watch``, one pane per running run following its log, or the driver's log when
none runs) and builds it with tmuxp's own loader on opsrg's own tmux socket
(``OPS_TMUX_SOCKET``), never the user's server. On a pod over SSH that happens there, by the
pod's own opsrg (``opsrg.cli.pod dashboard``), and the attach goes through ``ssh -t``. Each pane
runs its command itself, not typed into an interactive shell, so a slow shell start-up (rc files)
never holds the view back. Detaching leaves everything running; attaching again rebuilds it.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

from opsrg.core.atomic import atomic_write_text
from opsrg.core.settings import ENV_FILE_VAR

if TYPE_CHECKING:
    from opsrg.context import Context

SESSION_PREFIX = "opsrg-watch-"
MAX_PANES = 12  # more logs than that are unreadable side by side: the first ones, and a note


def session_name(campaign: str) -> str:
    return SESSION_PREFIX + campaign


def _pane(cmd: str, keep: bool = False) -> dict[str, Any]:
    """A pane that runs ``cmd`` as its own process (``keep``: then a shell, so it stays open)."""
    return {"shell": f"sh -c {shlex.quote(cmd + ('; exec sh' if keep else ''))}"}


def workspace(session: str, cwd: str, status_cmd: str, logs: dict[str, str]) -> dict[str, Any]:
    """The tmuxp workspace (pure): a status window, and a tiled window of log panes."""
    panes = [_pane(f"echo '== {name}'; exec tail -n 40 -F {shlex.quote(log)}")
             for name, log in list(logs.items())[:MAX_PANES]]
    if len(logs) > MAX_PANES:
        panes.append(_pane(f"echo '{len(logs) - MAX_PANES} more running: opsrg task-list'", keep=True))
    return {"session_name": session, "start_directory": cwd,
            "windows": [{"window_name": "status", "panes": [_pane(status_cmd, keep=True)]},
                        {"window_name": "runs", "layout": "tiled", "panes": panes}]}


def load(ws: dict[str, Any], socket: str) -> None:
    """Build ``ws`` with tmuxp's loader on tmux socket ``socket``, replacing a session of its name."""
    from libtmux import Server
    from tmuxp.workspace import loader, validation
    from tmuxp.workspace.builder import WorkspaceBuilder

    validation.validate_schema(ws)
    server = Server(socket_name=socket)
    if server.has_session(ws["session_name"]):
        server.kill_session(ws["session_name"])
    WorkspaceBuilder(loader.trickle(loader.expand(ws, cwd=ws["start_directory"])), server=server).build()


def build_here(ctx: Context, campaign: str | None = None) -> dict[str, Any]:
    """Write the campaign's workspace and load it, detached, on this machine (the pod)."""
    from opsrg.sweeps import commands

    m, rows, _ = commands.monitor(ctx, campaign)
    tasks = ctx.tasks
    logs = {r["run_id"]: tasks.paths(r["run_id"]).log for r in rows if r["state"] == "running"}
    if not logs and m.driver_task:
        logs = {m.driver_task: tasks.paths(m.driver_task).log}
    cwd = str(ctx.loaded.root)
    status = (f"{ENV_FILE_VAR}={shlex.quote(str(ctx.loaded.env_file))} "
              + shlex.join([sys.executable, "-m", "opsrg.cli", "sweep-status", "--watch", "--campaign", m.campaign]))
    session = session_name(m.campaign)
    ws = workspace(session, cwd, status, logs)
    path = f"{ctx.control_dir}/dashboard-{m.campaign}.json"
    atomic_write_text(path, json.dumps(ws, indent=2) + "\n")
    load(ws, ctx.s.ops_tmux_socket)
    return {"campaign": m.campaign, "session": session, "socket": ctx.s.ops_tmux_socket, "workspace": path,
            "runs": [k for k in logs if k != m.driver_task]}


def build(ctx: Context, campaign: str | None = None) -> dict[str, Any]:
    """The view of the campaign, built where its pod is; what was built and how to attach."""
    from opsrg.sweeps import remote

    built = remote.call(ctx, "dashboard", {"campaign": campaign}) if remote.is_remote(ctx) \
        else build_here(ctx, campaign)
    return {**built, "attach": attach_argv(ctx, built["session"])}


def attach_argv(ctx: Context, session: str) -> list[str]:
    """The command that attaches this terminal to the view (through ``ssh -t`` on a remote pod)."""
    from opsrg.sweeps import remote

    tmux = ["tmux", "-L", ctx.s.ops_tmux_socket, "attach-session", "-t", session]
    if not remote.is_remote(ctx):
        return tmux
    host = ctx.host
    return [*host.ssh_command(), "-t", f"{host.target.user}@{host.target.host}", "unset TMUX; " + shlex.join(tmux)]


def attach(argv: list[str]) -> None:
    """Replace this process with the attach (a terminal of its own; TMUX unset: never nested)."""
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    os.execvpe(argv[0], argv, env)

