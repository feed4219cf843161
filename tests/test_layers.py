"""The package's layers, read from its imports (every import, at the top or inside a function).

core <- hosts <- tracked <- pods <- sweeps <- ops <- cli, with ``context`` (the composition root that
builds hosts, state and tasks from the settings) beside ops and ``rg`` on core alone. An import
under ``if TYPE_CHECKING:`` is a type annotation, not a dependency, and is not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "opsrg"

# what each layer may import besides itself (a layer, or one module of a layer: the ops side reads
# the names of a run's files from the engine's numpy-free opsrg.rg.run, and nothing else of it)
ALLOWED = {
    "core": set(),
    "hosts": {"core"},
    "tracked": {"core", "hosts"},
    "pods": {"core", "hosts", "tracked"},
    "sweeps": {"core", "hosts", "tracked", "pods", "opsrg.rg.run"},
    "context": {"core", "hosts", "tracked", "pods"},
    "ops": {"core", "hosts", "tracked", "pods", "sweeps", "context", "opsrg.rg.run"},
    "rg": {"core"},
    "cli": {"core", "hosts", "tracked", "pods", "sweeps", "context", "ops"},
}
# ``python -m opsrg.X`` names that scripts already written on pods and clusters call
ENTRY_POINTS = {"opsrg.sweep_runner", "opsrg.runs", "opsrg.provenance"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ids |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return ids


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every opsrg module ``path`` imports (a package's ``from P import m`` counts as importing P.m)."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in modules:  # import opsrg.a.b.c (an attribute): its module
                n = n.rpartition(".")[0]
            if n.startswith("opsrg") and n != "opsrg":
                out.add(n)
    return out - {mod}


def graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    mods = set(files)
    return {m: _imports(p, mods) for m, p in files.items()}


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_belongs_to_a_layer():
    strays = [m for m in graph() if m != "opsrg" and m not in ENTRY_POINTS and layer(m) not in ALLOWED]
    assert not strays, f"modules outside every layer: {strays}"


def test_each_layer_imports_only_the_layers_below_it():
    bad = []
    for mod, deps in sorted(graph().items()):
        if mod in ENTRY_POINTS or mod == "opsrg":
            continue
        me = layer(mod)
        for d in sorted(deps):
            if layer(d) != me and layer(d) not in ALLOWED[me] and d not in ALLOWED[me]:
                bad.append(f"{mod} imports {d} ({me} may import {sorted(ALLOWED[me]) or 'nothing else'})")
    assert not bad, "\n".join(bad)


def test_the_supervisor_stays_stdlib_only():
    """It is copied onto pods as supervise.py and run by whatever python3 is there."""
    assert graph()["opsrg.tracked.supervisor"] == set()


def test_the_supervisor_stays_python38_code():
    """Its grammar is 3.8's, and it uses no later standard-library name that lint would suggest
    (``datetime.UTC`` is 3.11): pods run it with their own python3."""
    src = (ROOT / "tracked" / "supervisor.py").read_text()
    tree = ast.parse(src, feature_version=(3, 8))
    later = {("datetime", "UTC")}
    used = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not used & later, used & later


def test_the_tool_imports_without_the_rg_extra():
    """Sweeping one's own script needs no numpy, numba or matplotlib (the `rg` extra): the command
    line, sweeps, pods and ops import none of them."""
    import subprocess
    import sys

    code = ("import sys, opsrg.cli.tasks, opsrg.sweeps.commands, opsrg.sweeps.tmux, opsrg.sweeps.slurm.backend, "
            "opsrg.pods.lifecycle, opsrg.pods.transfer, opsrg.ops.doctor, opsrg.ops.artifacts, opsrg.ops.init; "
            "sys.exit(sorted({'numpy', 'numba', 'matplotlib'} & set(sys.modules)) or 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_run_names_import_without_numpy():
    import subprocess
    import sys

    code = "import sys, opsrg.rg.run; sys.exit('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent).returncode == 0


def test_the_task_tag_is_spelled_alike_in_the_supervisor_and_the_hosts():
    from opsrg.hosts.base import TASK_TAG
    from opsrg.tracked.supervisor import TAG

    assert TAG == TASK_TAG


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_lazy_or_not():
    assert _cycles(graph()) == []


@pytest.mark.parametrize("g, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_cycle_finder_finds_cycles(g, expected):
    assert _cycles(g) == expected
