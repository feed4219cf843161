"""``sweep-attach``: a live view of a campaign in tmux on its pod, built with tmuxp.

opsrg writes a tmuxp workspace under the outputs' ``_control/`` (one window running
``sweep-status --watch``, one pane per running run following its log, or the driver's log when
none runs) and loads it with tmuxp on opsrg's own tmux socket (``OPS_TMUX_SOCKET``), never the
user's server. On a pod over SSH both happen there, with the pod's own opsrg, and the attach goes
through ``ssh -t``. Detaching leaves everything running; attaching again rebuilds the view.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsrg.core.errors import HostError
from opsrg.core.settings import ENV_FILE_VAR

if TYPE_CHECKING:
    from opsrg.context import Context

SESSION_PREFIX = "opsrg-watch-"
MAX_PANES = 12  # more logs than that are unreadable side by side: the first ones, and a note


def session_name(campaign: str) -> str:
    return SESSION_PREFIX + campaign


def workspace(session: str, cwd: str, status_cmd: str, logs: dict[str, str]) -> dict[str, Any]:
    """The tmuxp workspace (pure): a status window, and a tiled window of log panes."""
    panes = [{"shell_command": [f"echo '== {name}'; tail -n 40 -F {shlex.quote(log)}"]}
             for name, log in list(logs.items())[:MAX_PANES]]
    if len(logs) > MAX_PANES:
        panes.append({"shell_command": [f"echo '{len(logs) - MAX_PANES} more running: opsrg task-list'"]})
    return {"session_name": session, "start_directory": cwd,
            "windows": [{"window_name": "status", "panes": [{"shell_command": [status_cmd]}]},
                        {"window_name": "runs", "layout": "tiled", "panes": panes}]}


def _opsrg_here(ctx: Context) -> tuple[str, str, str, str]:
    """(python, tmuxp, settings file, folder) of the opsrg that runs the view where the pod is."""
    from opsrg.sweeps import remote

    if not remote.is_remote(ctx):
        return sys.executable, str(Path(sys.executable).parent / "tmuxp"), str(ctx.loaded.env_file), \
            str(ctx.loaded.root)
    from opsrg.pods import tool

    py = tool.tool_python(ctx)
    env_file = remote.write_settings(ctx)
    repo = ctx.pod_path(ctx.s.ops_remote_repo)
    return py, str(Path(py).parent / "tmuxp"), env_file, repo if ctx.host.exists(repo) else remote.project_dir(ctx)


def build(ctx: Context, campaign: str | None = None) -> dict[str, Any]:
    """Write the workspace of the campaign and load it (detached) on the pod; what was built."""
    from opsrg.sweeps import commands

    m, rows, _ = commands.monitor(ctx, campaign)
    tasks = ctx.tasks
    logs = {r["run_id"]: tasks.paths(r["run_id"]).log for r in rows if r["state"] == "running"}
    if not logs and m.driver_task:
        logs = {m.driver_task: tasks.paths(m.driver_task).log}
    py, tmuxp, env_file, cwd = _opsrg_here(ctx)
    status = (f"cd {shlex.quote(cwd)} && {ENV_FILE_VAR}={shlex.quote(env_file)} "
              f"{shlex.join([py, '-m', 'opsrg.cli', 'sweep-status', '--watch', '--campaign', m.campaign])}")
    session = session_name(m.campaign)
    path = f"{ctx.control_dir}/dashboard-{m.campaign}.json"
    ctx.host.write_text(path, json.dumps(workspace(session, cwd, status, logs), indent=2) + "\n")
    sock = ctx.s.ops_tmux_socket
    q = shlex.quote
    r = ctx.host.run(f"unset TMUX; tmux -L {q(sock)} kill-session -t {q(session)} 2>/dev/null; "
                     f"{q(tmuxp)} load -y -d -L {q(sock)} {q(path)}", check=False, timeout=120)
    if not r.ok:
        raise HostError(f"{ctx.host.name}: tmuxp could not load {path} (exit {r.exited}): "
                        f"{(r.stderr or r.stdout).strip()[-800:]}", result=r)
    return {"campaign": m.campaign, "session": session, "socket": sock, "workspace": path,
            "runs": [k for k in logs if k != m.driver_task], "attach": attach_argv(ctx, session)}



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

