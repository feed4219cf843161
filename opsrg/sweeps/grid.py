"""A grid that expands to sweep rows: the product of named axes and seeds, written as a CSV.

The CSV stays the one record of a campaign: ``sweep-grid`` only writes one (checked as
``sweep-start`` would read it), so what runs is always a file a person can read and edit. Pure
but for reading a spec file.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import shlex
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsrg.core.errors import InputError
from opsrg.sweeps.rows import COLUMNS

ARG_FORM = "--{key}={value}"   # a command row's arguments: the user's own program
KEY_FORM = "{key}={value}"     # an RG row's overrides
AXIS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass
class Grid:
    config: str
    axes: dict[str, list[str]]
    seeds: list[int] = field(default_factory=lambda: [1])
    run_id: str = ""            # a template over the axes and {seed}; default: every axis, then the seed
    form: str = ARG_FORM        # how one axis value becomes an override word ("": chosen by the config, see write_grid)
    extra: list[str] = field(default_factory=list)  # the same words on every row

    def id_template(self) -> str:
        return self.run_id or "-".join([f"{k}{{{k}}}" for k in self.axes] + ["s{seed}"])


def axis(name: str, values: list[str], what: str = "") -> tuple[str, list[str]]:
    """One axis, checked: a usable name and at least one value, each once."""
    vals = [str(v).strip() for v in values if str(v).strip()]
    if not AXIS_NAME.match(name) or not vals:
        raise InputError(f"axis {what or name!r}: expected NAME=V1,V2,... (e.g. lr=1e-3,3e-3)")
    if len(set(vals)) != len(vals):
        raise InputError(f"axis {name}: a value is given twice ({','.join(vals)})")
    return name, vals


def parse_axis(text: str) -> tuple[str, list[str]]:
    """``lr=1e-3,3e-3,1e-2`` -> ("lr", ["1e-3", "3e-3", "1e-2"])."""
    name, eq, values = text.partition("=")
    if not eq:
        raise InputError(f"axis {text!r}: expected NAME=V1,V2,... (e.g. lr=1e-3,3e-3)")
    return axis(name.strip(), values.split(","), text)


def parse_seeds(text: str) -> list[int]:
    """``1-3,7`` -> [1, 2, 3, 7]."""
    out: list[int] = []
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise InputError(f"seeds {text!r}: expected numbers and ranges, e.g. 1-3,7")
        out += list(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    if not out or len(set(out)) != len(out):
        raise InputError(f"seeds {text!r}: expected at least one seed, each once")
    return out


def from_toml(path: Path) -> Grid:
    """A grid spec file: ``config``, ``seeds``, ``run_id``, ``form``, ``extra`` and an ``[axes]`` table."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{path}: cannot read the grid spec ({e})") from None
    unknown = set(raw) - {"config", "seeds", "run_id", "form", "extra", "axes"}
    if unknown:
        raise InputError(f"{path}: unknown key {sorted(unknown)[0]!r} (config, seeds, run_id, form, extra, axes)")
    axes = raw.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise InputError(f"{path}: [axes] must name at least one axis, e.g. lr = [1e-3, 3e-3]")
    parsed = dict(axis(str(k), v if isinstance(v, list) else [v]) for k, v in axes.items())
    if "config" not in raw:
        raise InputError(f"{path}: config is missing (the file each row runs with)")
    extra = raw.get("extra", [])
    return Grid(config=str(raw["config"]), axes=parsed, seeds=parse_seeds(raw.get("seeds", "1")),
                run_id=str(raw.get("run_id", "")), form=str(raw.get("form", "")),
                extra=list(map(str, extra if isinstance(extra, list) else shlex.split(str(extra)))))


def _fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise InputError(f"template {template!r}: {e}") from None


def expand(grid: Grid) -> list[dict[str, Any]]:
    """Every combination of the axes, for every seed: rows of the CSV, in a stable order."""
    from opsrg.sweeps.rows import valid_run_id

    tid = grid.id_template()
    unknown = _fields(tid) - set(grid.axes) - {"seed"}
    if unknown:
        raise InputError(f"run id template {tid!r}: no axis named {sorted(unknown)[0]!r} "
                         f"(axes: {', '.join(grid.axes)}, and seed)")
    if _fields(grid.form) != {"key", "value"}:
        raise InputError(f"form {grid.form!r}: must use {{key}} and {{value}} once each, e.g. --{{key}}={{value}}")
    rows, seen = [], {}
    names = list(grid.axes)
    for combo in itertools.product(*(grid.axes[n] for n in names)):
        point = dict(zip(names, combo, strict=True))
        words = [*grid.extra, *(grid.form.format(key=k, value=v) for k, v in point.items())]
        for seed in grid.seeds:
            rid = tid.format(**point, seed=seed)
            if not valid_run_id(rid):
                raise InputError(f"run id {rid!r} (from {tid!r}) is not usable: letters, digits and ._- only, "
                                 "not starting with '_' or '.'", hint="give --id a template with safe characters")
            if rid in seen:
                raise InputError(f"run id {rid!r} is made twice, by {seen[rid]} and {point} seed {seed}",
                                 hint="put every axis with more than one value into the --id template")
            seen[rid] = f"{point} seed {seed}"
            rows.append({"run_id": rid, "config": grid.config, "seed": seed,
                         "overrides": " ".join(shlex.quote(w) for w in words),
                         "notes": ", ".join(f"{k}={v}" for k, v in point.items())})
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
