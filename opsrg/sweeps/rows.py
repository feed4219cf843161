"""Sweep CSV: parse and validate every row before anything starts. Pure: reads files, runs nothing.

Columns ``run_id,config,seed,overrides,notes``. ``config`` names a TOML run config (see
``sweeps/configs/``); ``overrides`` is space-separated ``key=value`` on top of it (shell-style
quoting allowed). A *command* row runs the user's own program: its config is a run config with
``mode = "command"`` and a ``command`` template, or any file of the user's project when
``RUN_COMMAND`` gives the template; its overrides are the program's own arguments, passed
through word for word (only ``after=`` and ``timeout_secs=`` are opsrg's). Every problem is reported as ``file:line:column: field: message`` and all of
them are reported together; a sweep with any bad row is refused as a whole.
"""

from __future__ import annotations

import math
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsrg.core.errors import InputError
from opsrg.core.layout import reserved

COLUMNS = ("run_id", "config", "seed", "overrides", "notes")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_FIELD_CHARS = 4096
MAX_ROWS = 100_000
MODES = ("fp", "exp", "shell", "command")
# The fields of a command template, and the keys of a command row's overrides that are opsrg's
# (the rest are the program's own arguments).
COMMAND_FIELDS = ("config", "seed", "overrides", "run_id", "run_dir", "repo", "gpus")
COMMAND_KEYS = ("after", "timeout_secs", "gpus", "cpus", "mem")
# Rows run by one script (no RG steps or shards): on Slurm one job, or one element of an array.
SCRIPT_MODES = ("shell", "command")

TEMPLATE = """\
run_id,config,seed,overrides,notes
fp-s1,sweeps/configs/fp_small.toml,1,,fixed point seed 1
fp-s2,sweeps/configs/fp_small.toml,2,"samples=100000 steps=3",fewer samples
exp-s1,sweeps/configs/exp_small.toml,11,fp_run=fp-s1,exponent on fp-s1
hello,sweeps/configs/shell.toml,0,"command='echo hello from $OPSRG_RUN_ID'",a plain command
"""


class SweepCSVError(InputError):
    """A CSV with problems; ``problems`` holds every ``file:line:column: field: message``."""

    def __init__(self, problems: list[str]) -> None:
        n = len(problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in the sweep CSV; nothing was started:\n  "
                         + "\n  ".join(problems))
        self.problems = problems


# ------------------------------------------------------------------ value types
def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if v.is_integer():
            return int(v)
        raise ValueError(f"expected an integer, got {v!r}")
    s = str(v).strip()
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    if re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", s) and float(s).is_integer():
        return int(float(s))
    raise ValueError(f"expected an integer, got {s!r}")


def _pos_int(v: Any) -> int:
    n = _int(v)
    if n < 1:
        raise ValueError(f"must be >= 1, got {n}")
    return n


def _count(v: Any) -> int:
    n = _int(v)
    if n < 0:
        raise ValueError(f"must be >= 0, got {n}")
    return n


def _mem(v: Any) -> str:
    s = str(v).strip()
    if not re.fullmatch(r"\d+[KMGT]?", s):
        raise ValueError(f"expected a size as sbatch takes it (4G, 512M, 16000), got {s!r}")
    return s


def _pos_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {v!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise ValueError(f"must be a positive number, got {v!r}")
    return x


def _floats(v: Any) -> list[float]:
    items = v if isinstance(v, list) else [x for x in str(v).split(",") if x.strip()]
    if not items:
        raise ValueError("expected one or more numbers, e.g. 0.005,0.01")
    return [_pos_float(x) for x in items]


def _choice(*allowed: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if not isinstance(v, str) or v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {v!r}")
        return v
    return conv


def _run_ref(v: Any) -> str:
    if not isinstance(v, str) or not valid_run_id(v):
        raise ValueError(f"not a valid run id: {v!r}")
    if reserved(v):
        raise ValueError(reserved(v))
    return v


def _run_refs(v: Any) -> list[str]:
    items = v if isinstance(v, list) else [x for x in str(v).split(",") if x]
    return [_run_ref(x) for x in items]


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("expected a non-empty string")
    if any(ord(c) < 32 and c != "\t" for c in v):
        raise ValueError("control characters are not allowed")
    return v


# Every key a run config or an override may set, with its type.
KEYS: dict[str, Callable[[Any], Any]] = {
    "mode": _choice(*MODES),
    "steps": _pos_int,
    "samples": _pos_int,
    "bins": _pos_int,
    "zmax": _pos_float,
    "backend": _choice("auto", "cpu", "numpy", "cupy"),
    "method": _choice("analytic", "numerical"),
    "dtype": _choice("float32", "float64"),
    "shards": _pos_int,
    "batch_size": _pos_int,
    "shifts": _floats,
    "fp_run": _run_ref,
    "after": _run_refs,
    "command": _text,
    "timeout_secs": _pos_int,
    "gpus": _count,
    "cpus": _pos_int,
    "mem": _mem,
}
DEFAULTS: dict[str, Any] = {"bins": 50000, "zmax": 25.0, "backend": "auto", "method": "analytic",
                            "dtype": "float32", "shards": 1, "after": []}
REQUIRED = {"fp": ("steps", "samples"), "exp": ("steps", "samples", "shifts", "fp_run"), "shell": ("command",),
            "command": ("command",)}
RG_ONLY = ("steps", "samples", "bins", "zmax", "backend", "method", "dtype", "shards", "batch_size")


def template_words(template: str) -> list[str]:
    """The words of a command template (shell-style quoting), each checked: only the fields of
    COMMAND_FIELDS, and ``{overrides}`` as a word of its own (it becomes the program's arguments).
    Raises ValueError naming the problem."""
    import string

    try:
        words = shlex.split(template, comments=False, posix=True)
    except ValueError as e:
        raise ValueError(f"cannot split the command template ({e})") from None
    if not words:
        raise ValueError("empty command template")
    for w in words:
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(w) if f is not None]
        except ValueError as e:
            raise ValueError(f"bad braces in {w!r} ({e}; write a literal brace as {{{{ or }}}})") from None
        for name in names:
            if name not in COMMAND_FIELDS:
                raise ValueError(f"unknown field {{{name}}} in {w!r} (known: "
                                 + ", ".join("{" + f + "}" for f in COMMAND_FIELDS) + ")")
        if "overrides" in names and w != "{overrides}":
            raise ValueError(f"{{overrides}} must be a word of its own (in {w!r}): it becomes the row's arguments")
    return words


def valid_run_id(s: str) -> bool:
    return bool(RUN_ID_RE.match(s)) and ".." not in s and not s.startswith(("-", "."))


@dataclass
class SweepRow:
    """One validated row: the run id, its seed and the fully resolved run spec."""

    run_id: str
    config: str
    seed: int
    overrides: dict[str, Any]
    notes: str
    line: int
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.spec["mode"]

    @property
    def deps(self) -> list[str]:
        d = list(self.spec.get("after", []))
        if self.spec.get("fp_run"):
            d.insert(0, self.spec["fp_run"])
        return d

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "config": self.config, "seed": self.seed, "overrides": self.overrides,
                "notes": self.notes, "line": self.line, "spec": self.spec}


# ------------------------------------------------------------------ tokenizer
def split_line(line: str) -> list[tuple[str, int]]:
    """RFC 4180 fields of one physical line with their 1-based start columns."""
    out: list[tuple[str, int]] = []
    i, n = 0, len(line)
    while True:
        start = i
        if i < n and line[i] == '"':
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise ValueError(f"{start + 1}: unterminated quoted field (newlines inside fields are not allowed)")
                if line[i] == '"':
                    if i + 1 < n and line[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(line[i])
                i += 1
            if i < n and line[i] != ",":
                raise ValueError(f"{i + 1}: text after a closing quote")
            out.append(("".join(buf), start + 1))
        else:
            j = line.find(",", i)
            j = n if j < 0 else j
            text = line[i:j]
            if '"' in text:
                raise ValueError(f"{i + text.index(chr(34)) + 1}: stray quote in an unquoted field")
            out.append((text, start + 1))
            i = j
        if i >= n:
            return out
        i += 1  # the comma
        if i == n:
            out.append(("", i + 1))
            return out


# ------------------------------------------------------------------ config files
def load_config(path: Path) -> dict[str, Any]:
    """Read a run config TOML and type-check its keys (raises ValueError with the reason)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason})") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML ({e})") from None
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in KEYS:
            raise ValueError(f"{path}: unknown key {k!r} (known: {', '.join(sorted(KEYS))})")
        try:
            out[k] = KEYS[k](v)
        except ValueError as e:
            raise ValueError(f"{path}: {k}: {e}") from None
    if "mode" not in out:
        raise ValueError(f"{path}: missing 'mode' ({'|'.join(MODES)})")
    return out


def is_run_config(path: Path) -> bool:
    """An opsrg run config: a TOML file with a ``mode`` key. Any other file is the user's own."""
    if path.suffix != ".toml":
        return False
    try:
        return "mode" in tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def resolve_config(name: str, bases: list[Path]) -> Path | None:
    p = Path(name)
    if p.is_absolute():
        return p if p.is_file() else None
    for b in bases:
        if (b / p).is_file():
            return (b / p).resolve()
    return None


# ------------------------------------------------------------------ parse
def parse_text(text: str, source: str, bases: list[Path], run_command: str = "") -> list[SweepRow]:
    """Validate CSV text; returns rows in CSV order or raises SweepCSVError with every problem.

    ``run_command`` (RUN_COMMAND) is the template of rows whose config is not an opsrg run config."""
    return _Reader(source, bases, run_command).read(text)


class _Reader:
    """One pass over a sweep CSV that collects every problem, each with its file, line, column and field."""

    def __init__(self, source: str, bases: list[Path], run_command: str = "") -> None:
        self.source, self.bases, self.run_command = source, bases, run_command
        self.problems: list[str] = []
        self.header: dict[str, tuple[int, int]] | None = None
        self.rows: list[SweepRow] = []
        self.seen: dict[str, int] = {}  # run id -> the line it first appeared on
        self.configs: dict[str, dict[str, Any] | str] = {}  # config name -> its keys, or why it is unusable

    def bad(self, line: int, col: int, fld: str, msg: str) -> None:
        self.problems.append(f"{self.source}:{line}:{col}: {fld}: {msg}")

    def read(self, text: str) -> list[SweepRow]:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for lineno, line in enumerate(lines, 1):
            line = line.removesuffix("\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            self._control_characters(lineno, line)
            try:
                fields = split_line(line)
            except ValueError as e:
                col, msg = str(e).split(": ", 1)
                self.bad(lineno, int(col), "line", msg)
                continue
            if self.header is None:
                self._read_header(lineno, line, fields)
                if self.problems:
                    break
                continue
            if len(fields) != len(self.header):
                self.bad(lineno, fields[-1][1], "row", f"{len(fields)} fields, the header has {len(self.header)}")
                continue
            if len(self.rows) >= MAX_ROWS:
                self.bad(lineno, 1, "row", f"more than {MAX_ROWS} rows")
                break
            row = self._row(lineno, line, {nm: fields[idx] for nm, (idx, _) in self.header.items()})
            if row is not None:
                self.rows.append(row)
        if self.header is None and not self.problems:
            self.problems.append(f"{self.source}:1:1: header: empty file; expected {','.join(COLUMNS)}")
        if not self.problems and not self.rows:
            self.problems.append(f"{self.source}:1:1: rows: no runs in the sweep")
        if not self.problems:
            _check_dependencies(self.rows, self.source, self.problems)
        if self.problems:
            raise SweepCSVError(self.problems)
        return self.rows

    def _control_characters(self, lineno: int, line: str) -> None:
        for pos, ch in enumerate(line):
            if ord(ch) < 32 and ch != "\t":
                self.bad(lineno, pos + 1, "line", f"control character {ch!r} is not allowed")
                return

    def _read_header(self, lineno: int, line: str, fields: list[tuple[str, int]]) -> None:
        names = [f.strip().lower() for f, _ in fields]
        self.header = {}
        for idx, ((_, col), nm) in enumerate(zip(fields, names, strict=True)):
            if nm not in COLUMNS:
                self.bad(lineno, col, nm or "(empty)", f"unknown column; expected {','.join(COLUMNS)}")
            elif nm in self.header:
                self.bad(lineno, col, nm, "column given twice")
            else:
                self.header[nm] = (idx, col)
        for nm in COLUMNS:
            if nm not in self.header:
                self.bad(lineno, len(line) + 1, nm, "missing column")

    def _row(self, lineno: int, line: str, get: dict[str, tuple[str, int]]) -> SweepRow | None:
        too_big = [(nm, val, col) for nm, (val, col) in get.items() if len(val) > MAX_FIELD_CHARS]
        for nm, val, col in too_big:
            self.bad(lineno, col, nm, f"field of {len(val)} characters (limit {MAX_FIELD_CHARS})")
        if too_big:
            return None
        n_before = len(self.problems)
        run_id = self._run_id(lineno, *get["run_id"])
        seed = self._seed(lineno, *get["seed"])
        cname, ccol = get["config"][0].strip(), get["config"][1]
        spec = self._config(lineno, cname, ccol)
        otext, ocol = get["overrides"]
        if spec.get("mode") == "command":
            overrides, spec = self._command_args(lineno, line, otext, ocol, spec)
        else:
            overrides = self._overrides(lineno, line, otext, ocol)
        if len(self.problems) > n_before or not spec:
            return None
        spec = self._spec(lineno, spec, overrides, ccol, ocol)
        if spec is None:
            return None
        return SweepRow(run_id, cname, seed, overrides, get["notes"][0], lineno, spec)

    def _run_id(self, lineno: int, text: str, col: int) -> str:
        run_id = text.strip()
        if not valid_run_id(run_id):
            self.bad(lineno, col, "run_id", f"{run_id!r} is not a safe run id (1-100 of [A-Za-z0-9._-], "
                     "no '..', not starting with '-' or '.')")
        elif reserved(run_id):
            self.bad(lineno, col, "run_id", f"{reserved(run_id)}; choose another run id")
        elif run_id in self.seen:
            self.bad(lineno, col, "run_id", f"duplicate run id {run_id!r} (first on line {self.seen[run_id]})")
        else:
            self.seen[run_id] = lineno
        return run_id

    def _seed(self, lineno: int, text: str, col: int) -> int:
        text = text.strip()
        if not re.fullmatch(r"\d{1,19}", text) or int(text) >= 2**63:
            self.bad(lineno, col, "seed", f"not a non-negative integer: {text!r}")
            return -1
        return int(text)

    def _config(self, lineno: int, cname: str, col: int) -> dict[str, Any]:
        """The keys of the row's config file (read once per sweep), or {} after reporting why not."""
        if not cname:
            self.bad(lineno, col, "config", "empty; name a run config TOML, e.g. sweeps/configs/fp_small.toml")
            return {}
        if cname not in self.configs:
            path = resolve_config(cname, self.bases)
            if path is None:
                self.configs[cname] = (f"config file not found: {cname} "
                                       f"(looked in {', '.join(map(str, self.bases))})")
            elif self.run_command and not is_run_config(path):
                # the user's own config file: the row runs RUN_COMMAND with it
                self.configs[cname] = {"__path__": str(path), "mode": "command", "command": self.run_command}
            else:
                try:
                    self.configs[cname] = {"__path__": str(path), **load_config(path)}
                except ValueError as e:
                    if not is_run_config(path):
                        e = ValueError(f"{e}. To run your own program with this file, set RUN_COMMAND in "
                                       "workflow.env, e.g. RUN_COMMAND=python train.py {config} --seed={seed} "
                                       "{overrides}")
                    self.configs[cname] = str(e)
        c = self.configs[cname]
        if isinstance(c, str):
            self.bad(lineno, col, "config", c)
            return {}
        return dict(c)

    def _overrides(self, lineno: int, line: str, text: str, col: int) -> dict[str, Any]:
        overrides: dict[str, Any] = {}
        try:
            tokens = shlex.split(text, comments=False, posix=True)
        except ValueError as e:
            self.bad(lineno, col, "overrides", f"cannot split ({e}); quote values with spaces")
            tokens = []
        for tok in tokens:
            tcol = col + max(0, line.find(tok.split("=", 1)[0], col - 1) - (col - 1))
            if "=" not in tok:
                self.bad(lineno, tcol, "overrides", f"{tok!r} is not key=value")
                continue
            k, v = tok.split("=", 1)
            if k not in KEYS:
                self.bad(lineno, tcol, "overrides", f"unknown key {k!r} (known: {', '.join(sorted(KEYS))})")
                continue
            if k in overrides:
                self.bad(lineno, tcol, "overrides", f"{k} given twice")
                continue
            try:
                overrides[k] = KEYS[k](v)
            except ValueError as e:
                self.bad(lineno, tcol, "overrides", f"{k}: {e}")
        return overrides

    def _command_args(self, lineno: int, line: str, text: str, col: int,
                      spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A command row's overrides: ``after=``/``timeout_secs=`` are opsrg's, every other word is
        the program's own argument (``spec["args"]``), kept exactly as written."""
        try:
            tokens = shlex.split(text, comments=False, posix=True)
        except ValueError as e:
            self.bad(lineno, col, "overrides", f"cannot split ({e}); quote values with spaces")
            return {}, {}
        ours: dict[str, Any] = {}
        args: list[str] = []
        for tok in tokens:
            k, eq, v = tok.partition("=")
            if eq and k in COMMAND_KEYS:
                try:
                    ours[k] = KEYS[k](v)
                except ValueError as e:
                    self.bad(lineno, col, "overrides", f"{k}: {e}")
            else:
                args.append(tok)
        try:
            template_words(spec["command"])
        except ValueError as e:
            src = "RUN_COMMAND" if spec["command"] == self.run_command else f"{spec.get('__path__')}: command"
            self.bad(lineno, col, "config", f"{src}: {e}")
            return {}, {}
        return ours, {**spec, "args": args}

    def _spec(self, lineno: int, spec: dict[str, Any], overrides: dict[str, Any], ccol: int,
              ocol: int) -> dict[str, Any] | None:
        """The row's resolved keys (config, then overrides, then defaults), or None after reporting a clash."""
        given = set(spec) | set(overrides)
        spec.update(overrides)
        for k, v in DEFAULTS.items():
            spec.setdefault(k, v)
        mode = spec["mode"]
        missing = [k for k in REQUIRED[mode] if k not in spec]
        if missing:
            self.bad(lineno, ccol, "config", f"mode {mode} needs {', '.join(missing)} (in the config or overrides)")
            return None
        if mode == "shell":
            extra = [k for k in RG_ONLY + ("shifts", "fp_run") if k in overrides]
            if extra:
                self.bad(lineno, ocol, "overrides", f"{', '.join(extra)} do not apply to a shell row")
                return None
        elif mode == "command":
            extra = [k for k in RG_ONLY + ("shifts", "fp_run") if k in given]
            if extra:
                self.bad(lineno, ccol, "config", f"{', '.join(extra)} do not apply to a command row")
                return None
            for k in RG_ONLY:  # the RG defaults mean nothing to the user's program
                if k in DEFAULTS:
                    spec.pop(k, None)
        elif "command" in spec:
            self.bad(lineno, ocol, "overrides", f"command applies to shell rows only (mode is {mode})")
            return None
        if mode == "fp" and "shifts" in overrides:
            self.bad(lineno, ocol, "overrides", "shifts apply to exp rows only")
            return None
        if mode in ("fp", "exp") and spec["shards"] > spec["samples"]:
            self.bad(lineno, ocol, "overrides", f"shards ({spec['shards']}) > samples ({spec['samples']})")
            return None
        return spec


def _check_dependencies(rows: list[SweepRow], source: str, problems: list[str]) -> None:
    by_id = {r.run_id: r for r in rows}
    for r in rows:
        for d in r.deps:
            if d not in by_id:
                problems.append(f"{source}:{r.line}:1: dependency: {r.run_id} depends on {d!r}, which is not in "
                                "this sweep")
            elif d == r.run_id:
                problems.append(f"{source}:{r.line}:1: dependency: {r.run_id} depends on itself")
        if r.mode == "exp" and r.spec["fp_run"] in by_id:
            fp = by_id[r.spec["fp_run"]]
            if fp.mode != "fp":
                problems.append(f"{source}:{r.line}:1: fp_run: {fp.run_id} is a {fp.mode} run, not fp")
            elif "bins" in r.overrides and r.spec["bins"] != fp.spec["bins"]:
                problems.append(f"{source}:{r.line}:1: bins: {r.spec['bins']} differs from {fp.run_id}'s grid "
                                f"({fp.spec['bins']} bins)")
            else:
                r.spec["bins"], r.spec["zmax"] = fp.spec["bins"], fp.spec["zmax"]
    if problems:
        return
    try:
        order(rows)
    except ValueError as e:
        problems.append(f"{source}:{rows[0].line}:1: dependency: {e}")


def order(rows: list[SweepRow]) -> list[SweepRow]:
    """Rows in CSV order, each moved after its dependencies (stable topological order)."""
    by_id = {r.run_id: r for r in rows}
    done: set[str] = set()
    out: list[SweepRow] = []
    visiting: list[str] = []

    def visit(r: SweepRow) -> None:
        if r.run_id in done:
            return
        if r.run_id in visiting:
            raise ValueError("dependency cycle: " + " -> ".join(visiting[visiting.index(r.run_id):] + [r.run_id]))
        visiting.append(r.run_id)
        for d in r.deps:
            if d in by_id:
                visit(by_id[d])
        visiting.pop()
        done.add(r.run_id)
        out.append(r)

    for r in rows:
        visit(r)
    return out


def parse_file(path: str | Path, bases: list[Path] | None = None, run_command: str = "") -> list[SweepRow]:
    """Validate a CSV file (encoding, size, rows); config paths resolve against ``bases``."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise SweepCSVError([f"{p}:1:1: file: not found"]) from None
    if size > MAX_FILE_BYTES:
        raise SweepCSVError([f"{p}:1:1: file: {size} bytes (limit {MAX_FILE_BYTES})"])
    data = p.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        raise SweepCSVError([f"{p}:{line}:{col}: encoding: not UTF-8 (byte 0x{data[e.start]:02x}); "
                             "save the CSV as UTF-8"]) from None
    bases = list(bases or []) + [p.resolve().parent]
    return parse_text(text, str(p), bases, run_command)
