"""A campaign's runs ranked by a metric, with the parameters its rows sweep (pure).

``sweep-report`` prints this and plots it (opsrg.ops.report): the parameters are what differs
between the rows, read from a command row's own ``--key=value`` arguments or an RG row's
overrides, and the seed.
"""

from __future__ import annotations

from typing import Any

from opsrg.sweeps.rows import COMMAND_KEYS


def _number(v: Any) -> Any:
    try:
        return int(v) if str(v).lstrip("+-").isdigit() else float(v)
    except (TypeError, ValueError):
        return v


def params_of(row: dict[str, Any]) -> dict[str, Any]:
    """A row's parameters: its arguments ``--key=value`` / ``key=value`` (command rows) or its
    overrides (RG rows), and its seed; numbers as numbers."""
    out: dict[str, Any] = {}
    for word in (row.get("spec") or {}).get("args", []):
        k, eq, v = word.lstrip("-").partition("=")
        if eq and k:
            out[k] = _number(v)
    for k, v in (row.get("overrides") or {}).items():
        if k not in COMMAND_KEYS:  # opsrg's own (after, a time limit, resources): not what is swept
            out[k] = v
    out["seed"] = row.get("seed")
    return out


def swept(params: list[dict[str, Any]]) -> list[str]:
    """The parameters that take more than one value across the rows, in first-seen order."""
    names: list[str] = []
    for p in params:
        names += [k for k in p if k not in names]
    return [k for k in names if len({repr(p.get(k)) for p in params}) > 1]


def rank(rows: list[dict[str, Any]], status: list[dict[str, Any]], metric: str | None,
         goal: str = "min") -> list[dict[str, Any]]:
    """Runs with their swept parameters and metrics, best first by ``metric`` (runs without a
    value for it last, in CSV order)."""
    by_id = {s["run_id"]: s for s in status}
    params = [params_of(r) for r in rows]
    names = swept(params)
    out = [{"run_id": r["run_id"], "state": by_id.get(r["run_id"], {}).get("state", "not started"),
            "params": {k: p.get(k) for k in names}, "metrics": by_id.get(r["run_id"], {}).get("metrics", {})}
           for r, p in zip(rows, params, strict=True)]
    if metric:
        have, rest = [], []
        for x in out:
            (have if isinstance(x["metrics"].get(metric), (int, float)) else rest).append(x)
        have.sort(key=lambda x: x["metrics"][metric], reverse=goal == "max")
        out = have + rest
    return out
