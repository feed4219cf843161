"""opsrg itself on a pod: a tool venv of its own, installed from a wheel of the client's code.

Sweeps on a pod are driven there (their manifests live with the outputs), so the pod needs opsrg,
and exactly the client's: the wheel is made from the package this process runs (editable or not),
keyed by a hash of its files, and installed into ``POD_TOOL_DIR/<version>-<build>/venv`` with
``REMOTE_PYTHON_BIN``. It is never put into the user's checkout or venv. Its dependencies come from
the pod's package index, or with ``POD_WHEELHOUSE`` from a folder of wheels sent along.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata as md
import json
import re
import shlex
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import opsrg
from opsrg.core.errors import ConfigError
from opsrg.pods.steps import run_and_wait

if TYPE_CHECKING:
    from opsrg.context import Context

DIST = "opsrg"
MARKER = "tool.json"  # written last: a tool folder without it is an install cut short
WHEEL_INFO = "Wheel-Version: 1.0\nGenerator: opsrg\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
EXTRAS = re.compile(r"^[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*$")


def _package_files() -> list[tuple[str, bytes]]:
    """(name in the wheel, content) of every file of the running opsrg package, links followed."""
    root = Path(opsrg.__file__).resolve().parent
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if "__pycache__" in rel.parts or p.suffix in (".pyc", ".pyo") or not p.is_file():
            continue
        out.append((f"{DIST}/{rel.as_posix()}", p.read_bytes()))
    return out


@functools.lru_cache(maxsize=1)
def build_id() -> str:
    """A short hash of the package's files: the same code, the same id, on any machine."""
    h = hashlib.sha256()
    for name, data in _package_files():
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:12]


def _metadata() -> tuple[str, str]:
    """METADATA and entry_points.txt from the installed distribution (an editable install of any
    kind has them, an old egg-info one with its requirements in a file of their own)."""
    try:
        dist = md.distribution(DIST)
    except md.PackageNotFoundError:
        raise ConfigError("opsrg is not installed as a distribution here (no metadata): cannot build the "
                          "wheel a pod installs", hint="pip install -e . in opsrg's folder (make setup)") from None
    m = dist.metadata
    lines = ["Metadata-Version: 2.1", f"Name: {DIST}", f"Version: {opsrg.__version__}"]
    lines += [f"{k}: {m[k]}" for k in ("Summary", "Requires-Python") if m.get(k)]
    lines += [f"Provides-Extra: {e}" for e in (m.get_all("Provides-Extra") or [])]
    lines += [f"Requires-Dist: {r}" for r in (dist.requires or [])]
    return "\n".join(lines) + "\n", dist.read_text("entry_points.txt") or ""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(dest: Path) -> Path:
    """A wheel (PEP 427) of the opsrg this process runs, written into ``dest``."""
    version = opsrg.__version__
    meta, entry_points = _metadata()
    info = f"{DIST}-{version}.dist-info"
    files = _package_files() + [(f"{info}/METADATA", meta.encode()), (f"{info}/WHEEL", WHEEL_INFO.encode())]
    if entry_points:
        files.append((f"{info}/entry_points.txt", entry_points.encode()))
    record = "\n".join([_record_line(n, d) for n, d in files] + [f"{info}/RECORD,,"]) + "\n"
    path = dest / f"{DIST}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in [*files, (f"{info}/RECORD", record.encode())]:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return path


def tool_dir(ctx: Context) -> str:
    return f"{ctx.pod_path(ctx.s.pod_tool_dir).rstrip('/')}/{opsrg.__version__}-{build_id()}"


def tool_python(ctx: Context) -> str:
    return f"{tool_dir(ctx)}/venv/bin/python"


# Under a lock on the pod: two clients installing the same build at once install it once.
INSTALL_SH = r"""set -euo pipefail
dir={dir}; py={python}; spec={spec}; house={house}; record={record}
exec 9>"$dir/.install.lock"
flock 9
if [ -f "$dir/{marker}" ] && [ "$(cat "$dir/{marker}")" = "$record" ]; then
  echo "tool ok: already installed"
  exit 0
fi
rm -rf "$dir/venv" "$dir/{marker}"
"$py" -m venv "$dir/venv"
pip=("$dir/venv/bin/python" -m pip install -q --disable-pip-version-check)
if [ -n "$house" ]; then
  "${{pip[@]}}" --no-index --find-links "$house" "$spec"
else
  "${{pip[@]}}" "$spec"
fi
"$dir/venv/bin/python" -c 'import opsrg, sys; print("tool ok: opsrg", opsrg.__version__, "python", sys.version.split()[0])'
printf '%s\n' "$record" > "$dir/{marker}.tmp" && mv "$dir/{marker}.tmp" "$dir/{marker}"
"""


def _record(extras: str) -> str:
    return json.dumps({"version": opsrg.__version__, "build": build_id(), "extras": extras}, sort_keys=True)


def record(ctx: Context) -> str:
    """What the pod's marker says once this exact build, with POD_TOOL_EXTRAS, is installed."""
    return _record(ctx.s.pod_tool_extras.strip())


def marker_path(ctx: Context) -> str:
    return f"{tool_dir(ctx)}/{MARKER}"


def installed(ctx: Context) -> bool:
    """Whether the pod holds this exact build, completely installed (its marker written last)."""
    return (ctx.host.read_text(marker_path(ctx)) or "").strip() == record(ctx)


def ensure(ctx: Context) -> tuple[bool, str]:
    """Install this client's opsrg on the pod unless that exact build is there: (whether it was
    installed now, what was done)."""
    d = tool_dir(ctx)
    if installed(ctx):
        return False, f"opsrg {opsrg.__version__} ({build_id()}) already in {d}"
    s = ctx.s
    extras = s.pod_tool_extras.strip()
    if extras and not EXTRAS.match(extras):
        raise ConfigError(f"POD_TOOL_EXTRAS={extras!r}: expected extras separated by commas (e.g. rg)")
    host = ctx.host
    host.run(["mkdir", "-p", f"{d}/wheels"])
    with tempfile.TemporaryDirectory(prefix="opsrg-wheel-") as tmp:
        wheel = build_wheel(Path(tmp))
        remote_wheel = f"{d}/wheels/{wheel.name}"
        host.put(wheel, remote_wheel)
    house = ""
    if s.pod_wheelhouse:
        local = ctx.loaded.local_path(s.pod_wheelhouse)
        if not local.is_dir():
            raise ConfigError(f"POD_WHEELHOUSE={s.pod_wheelhouse}: no such folder (looked at {local})")
        house = f"{d}/wheelhouse"
        host.sync(str(local).rstrip("/") + "/", house + "/")
        host.run(["cp", remote_wheel, f"{house}/"])
    spec = remote_wheel + (f"[{extras}]" if extras else "")
    q = shlex.quote
    log = run_and_wait(ctx, "tool-install", INSTALL_SH.format(
        dir=q(d), python=q(s.remote_python_bin), spec=q(spec), house=q(house), record=q(_record(extras)),
        marker=MARKER),
        resume="check REMOTE_PYTHON_BIN (opsrg needs Python 3.11 or newer) and the pod's package index "
               "(or what POD_WHEELHOUSE holds); then run: inv bootstrap")
    said = next((ln for ln in log.splitlines() if ln.startswith("tool ok")), "tool ok")
    if said == "tool ok: already installed":  # by another client meanwhile
        return False, f"opsrg {opsrg.__version__} ({build_id()}) already in {d}"
    return True, f"{said.removeprefix('tool ok: ')} installed in {d}" + (" from POD_WHEELHOUSE" if house else "")
