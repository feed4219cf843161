"""The plot of ``sweep-report``: a campaign's goal metric against each parameter its rows sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(ranked: list[dict[str, Any]], metric: str, path: Path, title: str) -> Path | None:
    """One panel per swept parameter (numbers on a numeric axis, anything else as categories);
    None when nothing is to be drawn (no parameter varies, or no run has the metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ranked[0]["params"]) if ranked else []
    points = [x for x in ranked if isinstance(x["metrics"].get(metric), (int, float))]
    if not names or not points:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        xs = [x["params"].get(name) for x in points]
        ys = [x["metrics"][metric] for x in points]
        if all(isinstance(v, (int, float)) for v in xs):
            ax.scatter(xs, ys)
            if min(xs) > 0 and max(xs) / min(xs) >= 100:
                ax.set_xscale("log")
        else:
            label = ["(default)" if v is None else str(v) for v in xs]
            cats = sorted(set(label))
            ax.scatter([cats.index(v) for v in label], ys)
            ax.set_xticks(range(len(cats)), cats)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
