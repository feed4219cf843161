"""``opsrg init``: the starter files of a user's own project, for their own script.

Writes a ``workflow.env`` (the local pod, rows run in this working copy, ``RUN_COMMAND`` for the
script), a sweep CSV of two rows and, when asked, the one-line ``tasks.py`` that gives ``inv``
every task. Nothing is overwritten without ``force``; nothing is written when any file would be
refused.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from opsrg.core.atomic import atomic_write_text
from opsrg.core.errors import InputError
from opsrg.core.settings import DEFAULT_ENV_NAME

SWEEP_CSV = "sweeps/sweep.csv"
IGNORED = (".opsrg/", "artifacts/")  # the local pod's outputs and state, fetched runs
TASKS_PY = "tasks.py"

ENV_TEXT = """\
# opsrg settings of this project: `opsrg config-show` lists every key and where its value came from.
# Environment variables of the same name override these.

# The pod: this machine. For a GPU box over SSH: POD_PROVIDER=ssh and OPS_DEFAULT_HOST=user@host:port.
POD_PROVIDER=local
# Where rows run: on the local pod, this working copy itself ("."); on a remote pod, the checkout
# that `opsrg checkout` makes there (for example OPS_REMOTE_REPO={name}).
OPS_REMOTE_REPO=.

# Each CSV row runs this, in the checkout, with the project's .venv first on PATH:
# {{config}} {{seed}} {{overrides}} come from the row; also {{run_id}} {{run_dir}} {{repo}} {{gpus}}.
RUN_COMMAND={command}
SWEEP_CSV={csv}
# No time limit on a row (seconds; 0: none). Variables of your shell that runs get: RUN_ENV_PASS=WANDB_*,HF_*
RUN_TIMEOUT_SECS=0
"""

CSV_TEXT = """\
run_id,config,seed,overrides,notes
{first}-s1,{config},1,,first seed
{first}-s2,{config},2,,second seed
"""

TASKS_TEXT = """\
# `inv --list` in this project: every opsrg task (the same as `opsrg --list`)
from opsrg.cli.tasks import ns  # noqa: F401
"""


@dataclass(frozen=True)
class Planned:
    path: Path
    text: str


def plan(root: Path, script: str, config: str, *, tasks_py: bool = False) -> list[Planned]:
    """What ``init`` writes for ``script`` (run with ``config``), as (path, text); pure."""
    if not script.strip():
        raise InputError("--script is empty: name your program, e.g. --script train.py")
    config_arg = " {config}" if config != script else ""  # a script without a config file of its own
    command = f"python {shlex.quote(script)}{config_arg} --seed={{seed}} {{overrides}}"
    first = Path(script).stem.replace("_", "-") or "run"
    out = [Planned(root / DEFAULT_ENV_NAME, ENV_TEXT.format(name=root.name, command=command, csv=SWEEP_CSV)),
           Planned(root / SWEEP_CSV, CSV_TEXT.format(first=first, config=config))]
    if tasks_py:
        out.append(Planned(root / TASKS_PY, TASKS_TEXT))
    return out


def init(root: Path, script: str, config: str = "", *, tasks_py: bool = False, force: bool = False) -> list[Path]:
    """Write the starter files into ``root``; refuse (writing nothing) when one exists, unless ``force``."""
    root = root.resolve()
    if not (root / script).is_file():
        raise InputError(f"no script {script!r} in {root}",
                         hint="run opsrg init in your project's folder, naming your program: --script train.py")
    config = config or script
    if not (root / config).exists():
        raise InputError(f"no config {config!r} in {root}", hint="name an existing file with --config")
    files = plan(root, script, config, tasks_py=tasks_py)
    there = [f.path for f in files if f.path.exists()]
    if there and not force:
        raise InputError(f"{', '.join(str(p) for p in there)} exist{'s' if len(there) == 1 else ''}; nothing "
                         "was written", hint="pass --force to overwrite them")
    for f in files:
        f.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(f.path, f.text)
    written = [f.path for f in files]
    ignore = root / ".gitignore"  # what opsrg writes into the project is not the project's code
    have = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [p for p in IGNORED if p not in have]
    if missing:
        atomic_write_text(ignore, "".join(f"{ln}\n" for ln in have + missing))
        written.append(ignore)
    return written
