"""Sweeps on a pod that is not this machine, driven on the pod itself.

A campaign's manifests live with its outputs, so its commands must run where the outputs are. For
a pod reached over SSH (or a rented lium pod) each sweep command here validates what it can on
this machine (the CSV, with file and line), sends the pod what it needs (its settings without
secrets, the CSV and the run configs it names) and calls the same command there with the pod's own
opsrg (opsrg.pods.tool, this client's exact build), as ``python -m opsrg.cli.pod OP ARGS``, which
answers one line of JSON. The workflow state stays on this machine and moves here from the answer.
The values RUN_ENV_PASS names travel in the call's environment, never in a file.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsrg.core import errors, layout
from opsrg.core.errors import HostError, OpsError
from opsrg.core.settings import DEFAULT_ENV_NAME, ENV_FILE_VAR, SECRET_KEYS, Settings
from opsrg.sweeps.records import Campaign

if TYPE_CHECKING:
    from opsrg.context import Context

POD_CALL = "opsrg.cli.pod"  # the module the pod runs: python -m opsrg.cli.pod OP JSON_ARGS
CALL_TIMEOUT = 600.0


def is_remote(ctx: Context) -> bool:
    from opsrg.hosts.local import LocalHost

    return not isinstance(ctx.host, LocalHost)


def project_dir(ctx: Context) -> str:
    """The pod-side project folder: its workflow.env, the CSVs and run configs sent there."""
    return f"{ctx.control_dir}/{layout.POD_PROJECT}"


def _value(v: Any) -> str:
    """A settings value as a single-quoted dotenv value (python-dotenv reads \\' and \\\\ there)."""
    if isinstance(v, bool):
        v = "true" if v else "false"
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def pod_settings(ctx: Context) -> str:
    """The pod-side workflow.env: this project's settings with the pod's paths made absolute, the
    local provider (the pod is its own machine there) and no secret. (SWEEP_PYTHON, when unset,
    is chosen there: opsrg.cli.pod.)"""
    s = ctx.s
    fixed = {
        "pod_provider": "local",
        "ops_remote_outputs_dir": ctx.outputs_dir,
        "ops_remote_repo": ctx.pod_path(s.ops_remote_repo),
        "run_out_local_root": ctx.pod_path(s.run_out_local_root),
        "run_env_file": ctx.run_env_file,
        "wf_fsm_enforce": False,  # the workflow state that counts is this machine's
        "wf_state_file": "",
    }
    skip = SECRET_KEYS | {n for n in Settings.model_fields if n.startswith("lium_")} | {
                          "ops_default_host", "ops_ssh_key", "remote_env_path",
                          "ops_known_hosts", "local_artifacts_dir", "repo_url", "bootstrap_script",
                          "wandb_setup_script", "pod_wheelhouse", "ops_local_pod_root"}
    lines = ["# written by opsrg on the client before each sweep command: edit the client's workflow.env"]
    for name in Settings.model_fields:
        if name in skip:
            continue
        v = fixed[name] if name in fixed else getattr(s, name)
        if v is None:
            continue
        lines.append(f"{name.upper()}={_value(v)}")
    return "\n".join(lines) + "\n"


def _inside(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def stage(ctx: Context, csv: Path, rows) -> str:
    """Send the CSV and the run configs its rows read (TOML files of this project) to the pod's
    project folder, at the same places relative to it; returns the CSV's path there. A command
    row's own file is not sent: it is read in the pod's checkout, as the row runs there."""
    from opsrg.sweeps.rows import is_run_config

    root, dest = ctx.loaded.root, project_dir(ctx)
    files = {csv: _inside(csv, root) or csv.name}
    for p in {r.spec.get("__path__") for r in rows} - {None}:  # each config once, however many rows name it
        rel = _inside(Path(p), root)
        if rel and is_run_config(Path(p)):
            files[Path(p)] = rel
    for local, rel in files.items():
        ctx.host.write_text(f"{dest}/{rel}", local.read_text(encoding="utf-8"))
    return f"{dest}/{files[csv]}"


def _raise(answer: dict[str, Any]) -> None:
    e = answer["error"]
    cls = getattr(errors, e.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, OpsError)) or cls.__init__ is not OpsError.__init__:
        cls = OpsError
    err = cls(e["message"], hint=e.get("hint"))
    err.exit_code = int(e.get("exit_code", 1))
    raise err


CALL_SH = """d={project}
mkdir -p "$d" && cat > "$d/.{name}.new" <<'{eof}'
{settings}{eof}
mv -f "$d/.{name}.new" "$d/{name}" || exit 1
[ "$(cat {marker} 2>/dev/null)" = {record} ] || exit {missing}
cd {repo} 2>/dev/null || cd "$d" || exit 1
export {env_var}="$d/{name}"
exec {command}
"""
TOOL_MISSING = 200  # CALL_SH's exit when this client's opsrg is not (completely) installed on the pod


def call(ctx: Context, op: str, args: dict[str, Any]) -> Any:
    """Run sweep command ``op`` on the pod with ``args``; its answer, or its error raised here.

    One SSH command: the pod-side settings (rewritten each time: they follow this machine's), the
    check that this client's opsrg is installed there, the call. Only when it is not installed is
    it installed first, and the call made again."""
    import secrets

    from opsrg.pods import tool

    q = shlex.quote
    script = CALL_SH.format(
        project=q(project_dir(ctx)), name=DEFAULT_ENV_NAME, eof=f"OPSRG_{secrets.token_hex(8)}",
        settings=pod_settings(ctx), marker=q(tool.marker_path(ctx)), record=q(tool.record(ctx)),
        missing=TOOL_MISSING, repo=q(ctx.pod_path(ctx.s.ops_remote_repo)), env_var=ENV_FILE_VAR,
        command=shlex.join([tool.tool_python(ctx), "-m", POD_CALL, op, json.dumps(args)]))
    env = {**ctx.run_env(), **ctx.run_secrets()}
    r = ctx.host.run(script, check=False, timeout=CALL_TIMEOUT, env=env)
    if r.exited == TOOL_MISSING:
        installed, note = tool.ensure(ctx)
        if installed:  # on stderr: stdout may be --json for a script
            print(f"[pod] {note}", file=sys.stderr, flush=True)
        r = ctx.host.run(script, check=False, timeout=CALL_TIMEOUT, env=env)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    try:
        answer = json.loads(last)
    except ValueError:
        raise HostError(f"{ctx.host.name}: the pod's opsrg answered no result for {op} (exit {r.exited}):\n"
                        f"{(r.stderr or r.stdout).strip()[-2000:]}", result=r) from None
    for line in r.stdout.strip().splitlines()[:-1]:
        print(line, file=sys.stderr, flush=True)  # what the pod's command said on the way (notes, progress)
    if "error" in answer:
        _raise(answer)
    return answer["result"]


def monitor_answer(answer: dict[str, Any]) -> tuple[Campaign, list[dict[str, Any]], dict[str, Any]]:
    return Campaign.from_json(answer["campaign"]), answer["rows"], answer["verdict"]
