"""Terminal output: tables and progress through rich, plain text when not a terminal."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence


def prog() -> str:
    """The command the user typed: ``opsrg`` (the installed tool) or ``inv`` (a project's
    ``tasks.py``), so that every hint names a command that runs as written."""
    return "opsrg" if os.path.basename(sys.argv[0]) == "opsrg" else "inv"


def hint(text: str) -> str:
    """``text`` with the package's ``inv TASK`` hints named as the user's program names them."""
    return text if prog() == "inv" else re.sub(r"\binv (?=[a-z])", "opsrg ", text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for h in headers:
        t.add_column(h, overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    Console(width=160 if not Console().is_terminal else None).print(t)


def human_size(n: int) -> str:
    """A byte count as people read it: 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
