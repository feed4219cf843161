"""Which of the client's environment variables a run gets, and which of them are secrets.

Pure: ``RUN_ENV_PASS`` names variables and globs (``WANDB_*,HF_*,MY_VAR``); a run receives them
from the environment of the command that starts it, in its process environment only: no value is
ever written into a file opsrg keeps (command.sh, status.json, manifests, meta.json). A secret's
value is shown masked wherever opsrg shows it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

PATTERN_RE = re.compile(r"^[A-Za-z0-9_*?]+$")
# Names whose values are secrets, besides those RUN_ENV_SECRETS lists.
SECRET_GLOBS = ("*_KEY", "*_TOKEN", "*_SECRET", "*PASSWORD*", "*_PASS")
MASK = "********"


def patterns(text: str) -> list[str]:
    """The names and globs of a comma- or space-separated list; ValueError names a bad one."""
    out = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    bad = [p for p in out if not PATTERN_RE.match(p)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a variable name or glob (letters, digits, _, * and ?)")
    return out


def select(environ: Mapping[str, str], pats: Iterable[str]) -> dict[str, str]:
    """The variables of ``environ`` that a pattern names, sorted by name."""
    pats = list(pats)
    return {k: environ[k] for k in sorted(environ) if any(fnmatchcase(k, p) for p in pats)}


def is_secret(name: str, listed: Iterable[str] = ()) -> bool:
    return any(fnmatchcase(name.upper(), p) for p in (*SECRET_GLOBS, *(x.upper() for x in listed)))


def masked(env: Mapping[str, str], listed: Iterable[str] = ()) -> dict[str, str]:
    listed = list(listed)
    return {k: (MASK if is_secret(k, listed) else v) for k, v in env.items()}
