"""The docs do not lie: every setting is documented, every documented task exists."""

import re
from pathlib import Path

from opsrg.core.settings import KNOWN_KEYS

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", doc, re.M))
    assert KNOWN_KEYS - documented == set(), "undocumented settings"
    assert documented - KNOWN_KEYS == set(), "documented settings that do not exist"


def test_shipped_workflow_env_only_uses_known_keys():
    for line in (ROOT / "workflow.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert line.split("=", 1)[0].strip() in KNOWN_KEYS


def test_readme_tasks_exist():
    import subprocess
    import sys

    listing = subprocess.run([str(Path(sys.executable).parent / "inv"), "--list"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"^\s{2}([a-z][a-z-]+)", listing, re.M))
    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"\binv ([a-z][a-z-]+)", readme))
    assert used - names == set(), "README names tasks that do not exist"


def _resolves(dotted: str) -> bool:
    """``opsrg.a.b.NAME``: the longest importable prefix, then attributes for the rest."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_the_files_and_modules_the_docs_name_exist():
    bad = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        bad += [f"{doc.name}: {p}" for p in re.findall(r"\bopsrg/[a-z_/]+\.py\b", text) if not (ROOT / p).is_file()]
        bad += [f"{doc.name}: {m}" for m in set(re.findall(r"`(opsrg(?:\.[A-Za-z_]+)+)", text)) if not _resolves(m)]
    assert not bad, "docs name what does not exist:\n" + "\n".join(bad)
