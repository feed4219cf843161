"""The pod lifecycle: bring it up, check it, bootstrap it, check the code out, take it down.

Every step talks to ``ctx.host`` only, so the local provider, a pod over SSH and a rented lium
pod go through the same code. Long steps (clone, venv, pip, setup scripts) run as tracked
tasks on the pod and are waited on by polling their files, never streamed over SSH.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsrg.core.checkout import REPO_ROOT
from opsrg.core.errors import ConfigError, HostError, UnreachableError
from opsrg.hosts.local import LocalHost
from opsrg.pods.steps import run_and_wait

if TYPE_CHECKING:  # the caller's context; nothing here builds one
    from opsrg.context import Context

PREREQS = ("tmux", "rsync", "git")
APT_PACKAGES = {"tmux": "tmux", "rsync": "rsync", "git": "git", "python": "python3 python3-venv"}


# ------------------------------------------------------------------ up / down
@contextlib.contextmanager
def resume_hint(command: str) -> Iterator[None]:
    """Make a host failure inside a lifecycle step end with the command that resumes it."""
    try:
        yield
    except HostError as e:
        if not (e.hint or "").rstrip().endswith(command):
            e.hint = f"{e.hint.rstrip('.') + '; then run: ' if e.hint else 'run: '}{command}"
        raise


def up(ctx: Context) -> str:
    """Make the pod answer and create its folders (lium: rent it first)."""
    extra = ""
    if ctx.s.pod_provider == "lium":
        from opsrg.pods import lium
        rec = lium.up(ctx)
        extra = f" (lium pod {rec['name']}, {rec.get('gpu') or 'gpu unknown'})"
    host = ctx.host
    try:
        host.run(["mkdir", "-p", ctx.outputs_dir, ctx.control_dir, ctx.tasks.root])
    except UnreachableError as e:
        raise UnreachableError(str(e.message), hint="check OPS_DEFAULT_HOST/OPS_SSH_KEY, then run: inv pod-up") from None
    return f"pod ready: {ctx.s.pod_provider} host {host.name}{extra}, outputs in {ctx.outputs_dir}"


def down(ctx: Context) -> str:
    """Forget the pod (lium: give it back). Files on an ssh/local pod are left as they are."""
    if ctx.s.pod_provider == "lium":
        from opsrg.pods import lium
        return lium.down(ctx)
    return f"pod forgotten ({ctx.s.pod_provider}); its files and tasks are left untouched"


# ------------------------------------------------------------------ status
def status(ctx: Context) -> dict[str, Any]:
    """What the pod looks like now. Unreachable is a state, not a failure; read-only."""
    info: dict[str, Any] = {"provider": ctx.s.pod_provider, "host": None, "reachable": False,
                            "state": "unknown"}
    info["fsm_state"] = ctx.store.read().state.value
    try:
        host = ctx.host
        info["host"] = host.name
        r = host.run("uptime -p 2>/dev/null || uptime", timeout=15)
        info.update(reachable=True, state="reachable", uptime=r.stdout.strip())
    except UnreachableError as e:
        info.update(state="unreachable", error=e.message)
        return info
    except (HostError, ConfigError) as e:
        info.update(state="error", error=getattr(e, "message", str(e)))
        return info
    out = ctx.outputs_dir
    script = (f"df -Pk {shlex.quote(out)} 2>/dev/null || df -Pk /; echo '--gpus'; "
              "command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total "
              "--format=csv,noheader 2>/dev/null; echo '--tmux'; "
              f"tmux -L {shlex.quote(ctx.s.ops_tmux_socket)} list-sessions -F '#{{session_name}}' 2>/dev/null; true")
    r = host.run(script, check=False, timeout=30)
    df, _, rest = r.stdout.partition("--gpus\n")
    gpus, _, tmux = rest.partition("--tmux\n")
    lines = df.splitlines()
    if len(lines) > 1 and len(lines[1].split()) > 3:
        info["disk_free_gib"] = round(int(lines[1].split()[3]) / 2**20, 1)
        info["disk_of"] = out
    info["gpus"] = [g.strip() for g in gpus.splitlines() if g.strip()]
    info["tmux_sessions"] = tmux.split()
    return info


# ------------------------------------------------------------------ bootstrap
def check_prereqs(ctx: Context) -> dict[str, str | None]:
    """Each prerequisite's path on the pod, and the python version; None when missing."""
    script = "; ".join(f"printf '%s=' {p}; command -v {p} || echo no" for p in PREREQS)
    script += f"; printf 'python='; {shlex.quote(ctx.s.remote_python_bin)} -c " \
              "'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null || echo no"
    r = ctx.host.run(script)
    found: dict[str, str | None] = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition("=")
        found[k] = None if v == "no" else v
    return found


def _missing(found: dict[str, str | None]) -> list[str]:
    missing = [k for k in PREREQS if not found.get(k)]
    py = found.get("python")
    if not py or tuple(int(x) for x in re.findall(r"\d+", py)[:2]) < (3, 10):
        missing.append("python")
    return missing


def bootstrap(ctx: Context) -> str:
    host = ctx.host
    found = check_prereqs(ctx)
    missing = _missing(found)
    notes: list[str] = []
    if missing and ctx.s.auto_install_prereqs:
        uid = host.run(["id", "-u"]).stdout.strip()
        if uid != "0":
            raise HostError(f"{host.name}: missing {', '.join(missing)} and not root (uid {uid}): cannot apt-get",
                            hint="install them on the pod, then run: inv bootstrap")
        pkgs = " ".join(APT_PACKAGES[m] for m in missing)
        host.run(f"export DEBIAN_FRONTEND=noninteractive; apt-get update -q && "
                 f"apt-get install -y -q --no-install-recommends {pkgs}", timeout=900)
        notes.append(f"installed {pkgs}")
        found = check_prereqs(ctx)
        missing = _missing(found)
    if missing:
        what = ", ".join(m if m != "python" else f"python3>=3.10 (found {found.get('python') or 'none'})"
                         for m in missing)
        raise HostError(f"{host.name}: missing prerequisites: {what}",
                        hint="install them (or set AUTO_INSTALL_PREREQS=1 as root), then run: inv bootstrap")
    host.run(["mkdir", "-p", ctx.control_dir, ctx.tasks.root])
    notes.append(_gpus_note(ctx))
    if not isinstance(host, LocalHost):  # the pod's own opsrg drives the sweeps there
        from opsrg.pods import tool

        notes.append(tool.ensure(ctx)[1])
    if ctx.loaded.env_file:
        # Holds secrets such as WANDB_API_KEY: readable by the pod user only.
        host.write_text(ctx.pod_path(ctx.s.remote_env_path), ctx.loaded.env_file.read_text(), mode=0o600)
        notes.append(f"settings -> {ctx.pod_path(ctx.s.remote_env_path)}")
    scripts = [("bootstrap-script", ctx.s.bootstrap_script)]
    if ctx.s.sweep_wandb:
        scripts.append(("wandb-setup", ctx.s.wandb_setup_script))
    for task_id, script in scripts:
        if not script:
            continue
        local = ctx.loaded.local_path(script)
        if not local.is_file():
            raise ConfigError(f"{script}: setup script not found (looked at {local})")
        remote = f"{ctx.control_dir}/{task_id}.sh"
        host.write_text(remote, local.read_text(), mode=0o700)
        env = ctx.run_secrets() if task_id == "wandb-setup" else {}  # env only: never in files
        run_and_wait(ctx, task_id, f"bash {shlex.quote(remote)}", env=env, resume="inv bootstrap")
        notes.append(f"ran {script}")
    return "bootstrapped: " + json.dumps(found) + ("; " + "; ".join(notes) if notes else "")


def _gpus_note(ctx: Context) -> str:
    """The pod's GPUs, as sweeps will share them out (POD_GPUS, else what nvidia-smi lists there)."""
    from opsrg.core.gpus import discover

    ids = discover(ctx.host, ctx.s.pod_gpus)
    if ids:
        return f"GPUs {','.join(ids)} ({'POD_GPUS' if ctx.s.pod_gpus else 'nvidia-smi'})"
    return "no GPUs found (rows run without CUDA_VISIBLE_DEVICES; POD_GPUS declares them)"


# ------------------------------------------------------------------ checkout
def local_repository(ctx: Context) -> str:
    """The git repository this project is in (the checkout's source when REPO_URL is empty)."""
    for base in (ctx.loaded.root, REPO_ROOT):
        p = subprocess.run(["git", "-C", str(base), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
        if p.returncode == 0:
            return p.stdout.strip()
    raise ConfigError("REPO_URL is empty and the project is not in a git repository: set REPO_URL")


def default_repo_url(ctx: Context) -> str:
    """REPO_URL, or this project's own git repository (so the local demo works)."""
    return ctx.s.repo_url or local_repository(ctx)


def ship_bundle(ctx: Context, repo: str, ref: str) -> str:
    """With no REPO_URL, a pod that is not this machine cannot read the local repository: send
    it the committed history of ``ref`` as a git bundle and clone from that file."""
    if ctx.s.checkout_pr:
        raise ConfigError("CHECKOUT_PR needs REPO_URL: a pull request lives on the remote, not in this repository",
                          hint="set REPO_URL in workflow.env (or unset CHECKOUT_PR), then run: inv checkout")
    source = local_repository(ctx)
    remote = f"{posixpath.dirname(repo.rstrip('/'))}/.{posixpath.basename(repo.rstrip('/'))}.bundle"
    with tempfile.TemporaryDirectory(prefix="opsrg-bundle-") as tmp:
        bundle = Path(tmp) / "checkout.bundle"
        p = subprocess.run(["git", "-C", source, "bundle", "create", "-q", str(bundle), ref],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise ConfigError(f"REPO_URL is empty and `git bundle create` of {ref!r} in {source} failed: "
                              f"{p.stderr.strip()}",
                              hint="set CHECKOUT_BRANCH to a branch of this repository, or REPO_URL; "
                                   "then run: inv checkout")
        ctx.host.run(["mkdir", "-p", posixpath.dirname(remote)])
        ctx.host.put(bundle, remote)
    return remote


def project_dependencies() -> list[str]:
    """Distribution names of this project's runtime dependencies (from pyproject.toml)."""
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.DOTALL | re.MULTILINE)
    reqs = re.findall(r"[\"']([^\"']+)[\"']", m.group(1)) if m else []
    return [re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0] for d in reqs]


CLONE_SH = r"""set -euo pipefail
repo={repo}; url={url}; ref={ref}
if [ -d "$repo/.git" ]; then
  git -C "$repo" remote set-url origin "$url"
else
  mkdir -p "$(dirname "$repo")"
  git init -q "$repo"
  git -C "$repo" remote add origin "$url"
fi
git -C "$repo" fetch -q --force origin "$ref"
git -C "$repo" -c advice.detachedHead=false checkout -q --force FETCH_HEAD
git -C "$repo" log -1 --format='checked out %H %s'
"""

# The venv sees everything REMOTE_PYTHON_BIN sees: --system-site-packages, plus a .pth for the
# site-packages of REMOTE_PYTHON_BIN when that interpreter is itself in a venv.
VENV_SH = r"""set -euo pipefail
cd {repo}
py={python}; recreate={recreate}
if [ "$recreate" = 1 ] || [ ! -x .venv/bin/python ]; then
  rm -rf .venv
  "$py" -m venv --system-site-packages --without-pip .venv
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$py" -c 'import site, sys; print("\n".join(p for p in sys.path if p.endswith("-packages")))' \
    > "$site/_opsrg_inherited.pth"
  .venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip -q
  echo "venv created with $py"
fi
if .venv/bin/python - {deps} <<'EOF'
import importlib.metadata as md, sys
missing = []
for name in sys.argv[1:]:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        missing.append(name)
print("dependencies missing: " + " ".join(missing) if missing else "dependencies present")
sys.exit(1 if missing else 0)
EOF
then
  if .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
      > .venv/pip-no-deps.log 2>&1; then
    echo "installed with --no-deps"
  else
    # No build backend usable offline (e.g. no wheel): the package is pure Python with no
    # entry points, so a path entry is an editable install.
    tail -3 .venv/pip-no-deps.log
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    pwd > "$site/_opsrg_checkout.pth"
    echo "installed with --no-deps (linked by .pth: pip could not build offline)"
  fi
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
  echo "installed with dependencies"
fi
.venv/bin/python -c 'import opsrg; print("import ok")'
"""

# A user's own project (anything but opsrg itself): a venv that sees the image's packages (an
# image's GPU PyTorch), the project's own dependencies as its files say, and its check.
PROJECT_VENV_SH = r"""set -euo pipefail
cd {repo}
py={python}; recreate={recreate}; install={install}; check={check}
if [ "$recreate" = 1 ] || [ ! -x .venv/bin/python ]; then
  rm -rf .venv
  "$py" -m venv --system-site-packages --without-pip .venv
  .venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip -q
  echo "venv created with $py (the system's packages visible)"
fi
export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH"
pip="python -m pip install -q --disable-pip-version-check"
if [ -n "$install" ]; then
  bash -c "$install"
  echo "installed with CHECKOUT_INSTALL_CMD"
elif [ -f pyproject.toml ] || [ -f setup.py ]; then
  $pip -e .
  echo "installed the project (pip install -e .)"
elif [ -f requirements.txt ]; then
  $pip -r requirements.txt
  echo "installed requirements.txt"
else
  echo "installed nothing (no pyproject.toml, setup.py nor requirements.txt)"
fi
if [ -n "$check" ]; then
  if ! bash -c "$check"; then
    echo "CHECKOUT_CHECK_CMD failed: $check" >&2
    exit 1
  fi
  echo "check passed: $check"
fi
"""

CUPY_PY = ("import cupy\nn = cupy.cuda.runtime.getDeviceCount()\nprint('cupy', cupy.__version__, 'devices', n)")


# What git would take as something else than a ref: an option (leading '-'), whitespace and control
# characters, and what `git check-ref-format` refuses.
BAD_REF = re.compile(r"^-|[\s\x00-\x1f\x7f~^:?*\[\\]|\.\.|@\{|//|/$|\.$|\.lock$|^/|^@$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_git_inputs(ref: str, url: str = "") -> None:
    """Refuse a branch or URL that git would read as an option or that is no ref/URL at all.

    They reach git quoted (never through a shell unquoted), but a value starting with '-' would
    still be an option to git itself (``--upload-pack=...`` runs a command)."""
    if not ref or BAD_REF.search(ref):
        raise ConfigError(f"CHECKOUT_BRANCH={ref!r} is not a usable git branch name (empty, a leading '-', "
                          "whitespace, control characters or characters git refuses in refs)",
                          hint="fix CHECKOUT_BRANCH in workflow.env, then run: inv checkout")
    if url.startswith("-") or CONTROL.search(url):
        raise ConfigError(f"REPO_URL={url!r} is not a usable repository URL (a leading '-' or control characters)",
                          hint="fix REPO_URL in workflow.env, then run: inv checkout")


def is_opsrg(ctx: Context, repo: str) -> bool:
    """Whether the checkout is opsrg itself (its own venv recipe) rather than a user's project."""
    r = ctx.host.run(["grep", "-qsE", '^name *= *"opsrg"', f"{repo}/pyproject.toml"], check=False)
    return r.ok


def head_of(ctx: Context, repo: str) -> str:
    """``commit (branch)`` of a checkout, or "" when it is not a git one."""
    r = ctx.host.run(["git", "-C", repo, "log", "-1", "--format=%h %s"], check=False)
    return r.stdout.strip()[:80] if r.ok else ""


def checkout(ctx: Context) -> str:
    host = ctx.host
    s = ctx.s
    repo = ctx.pod_path(s.ops_remote_repo)
    if isinstance(host, LocalHost) and Path(repo).resolve() == ctx.loaded.root.resolve():
        # OPS_REMOTE_REPO=. on the local pod: the rows run in this working copy, as it is
        state = head_of(ctx, repo)
        return (f"rows run in this working copy, {repo} (OPS_REMOTE_REPO=.): nothing to clone or install"
                + (f"; at {state}" if state else ""))
    ref = f"refs/pull/{s.checkout_pr}/head" if s.checkout_pr else s.checkout_branch
    shipped = not s.repo_url and not isinstance(host, LocalHost)
    check_git_inputs(ref, s.repo_url)
    url = ship_bundle(ctx, repo, ref) if shipped else default_repo_url(ctx)
    if s.data_dir and not host.exists(ctx.pod_path(s.data_dir)):
        raise ConfigError(f"DATA_DIR={s.data_dir}: no such folder on {host.name}",
                          hint="fix DATA_DIR in workflow.env (or copy the data there), then run: inv checkout")
    q = shlex.quote
    log = run_and_wait(ctx, "checkout-clone", CLONE_SH.format(repo=q(repo), url=q(url), ref=q(ref)),
                       resume="inv checkout")
    commit = next((ln for ln in log.splitlines() if ln.startswith("checked out")), "checked out")
    if not is_opsrg(ctx, repo):  # the user's own project: its dependencies, its check
        log = run_and_wait(ctx, "checkout-venv", PROJECT_VENV_SH.format(
            repo=q(repo), python=q(s.remote_python_bin), recreate=int(s.venv_recreate),
            install=q(s.checkout_install_cmd), check=q(s.checkout_check_cmd)),
            resume="fix the project's install (CHECKOUT_INSTALL_CMD) or its check (CHECKOUT_CHECK_CMD), or set "
                   "VENV_RECREATE=1 to rebuild the venv; then run: inv checkout")
        said = [ln for ln in log.splitlines() if ln.startswith(("installed", "check passed"))]
        source = f" from a bundle of {local_repository(ctx)} (REPO_URL is empty)" if shipped else ""
        return f"{commit} ({ref}){source} into {repo}; venv: {'; '.join(said) or 'ready'}"
    deps = " ".join(q(d) for d in project_dependencies())
    log = run_and_wait(ctx, "checkout-venv", VENV_SH.format(
        repo=q(repo), python=q(s.remote_python_bin), recreate=int(s.venv_recreate), deps=deps),
        resume="to rebuild the venv set VENV_RECREATE=1; then run: inv checkout")
    install = next((ln for ln in log.splitlines() if ln.startswith("installed")), "installed")
    venv_python = f"{repo}/.venv/bin/python"
    r = host.run([venv_python, "-c", CUPY_PY], check=False, timeout=120)
    cupy = r.stdout.strip() if r.ok else "not usable (" + (r.stderr.strip().splitlines() or ["?"])[-1][:160] + ")"
    if hasattr(host, "venv_python"):
        host.python = None  # look again: the venv exists now
    source = f" from a bundle of {local_repository(ctx)} (REPO_URL is empty)" if shipped else ""
    return f"{commit} ({ref}){source} into {repo}; venv {install}; CuPy {cupy}"
