"""The one clock format of every record opsrg writes: UTC ISO 8601 with milliseconds.

(The stdlib-only supervisor, copied onto pods, carries its own copy of these two functions.)
"""

from __future__ import annotations

from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_iso(text: str) -> float:
    """Seconds since the epoch of a time written by :func:`now_iso` (or any ISO 8601 time)."""
    return datetime.fromisoformat(text).timestamp()
