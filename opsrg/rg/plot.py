"""PNG figures of a run directory (matplotlib with the Agg backend, imported only here).

FP: Q(z) per step with its width, and P(G) in 10 and 50 bins for the last step. EXP: slope_n
against n on a log scale with the fitted lambda, for each observable.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from opsrg.core.errors import InputError
from opsrg.rg.histogram import load_histogram
from opsrg.rg.pipeline import done_ok, load_config
from opsrg.rg.run import RunPaths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _steps(paths: RunPaths, cfg) -> list[int]:
    ks = []
    k = 1
    while done_ok(paths, k, cfg) is not None:
        ks.append(k)
        k += 1
    return ks


def g_density(counts: np.ndarray, centers: np.ndarray, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """P(G) in ``nbins`` equal G-bins from a z-histogram (G = 1/(1+e^z) at the bin centres)."""
    g = 0.5 * (1 - np.tanh(centers / 2))
    h, edges = np.histogram(g, bins=nbins, range=(0, 1), weights=counts)
    return h / h.sum() * nbins, edges


def plot_run(root: Path) -> list[Path]:
    paths = RunPaths(Path(root))
    cfg = load_config(paths)
    steps = _steps(paths, cfg)
    if not steps:
        raise InputError(f"{root}: no completed step to plot")
    plt = _pyplot()
    out: list[Path] = []
    if cfg.mode == "fp":
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for k in steps:
            counts, grid = load_histogram(str(paths.sym(k)))
            std = json.loads(paths.done(k).read_text())["stats"][0]["std_z"]
            f = 50
            m = grid.nbins // f
            reb = counts[: m * f].reshape(m, f).sum(1)
            x = grid.centers[: m * f].reshape(m, f).mean(1)
            ax.plot(x, reb / reb.sum() / (f * grid.width), lw=1, label=f"step {k}: std {std:.4f}")
        ax.set(xlim=(-10, 10), xlabel="z", ylabel="Q(z)", title=f"FP iteration, N = {cfg.samples:.3g}")
        ax.legend(fontsize=7)
        out.append(_save(fig, paths.root / "fp_Q_z.png", plt))
        counts, grid = load_histogram(str(paths.sym(steps[-1])))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for nb, style in ((10, "o-"), (50, "-")):
            dens, edges = g_density(counts, grid.centers, nb)
            ax.plot(0.5 * (edges[1:] + edges[:-1]), dens, style, label=f"{nb} bins")
        ax.set(xlabel="G", ylabel="P(G)", title=f"P(G) after step {steps[-1]}", ylim=(0, None))
        ax.legend()
        out.append(_save(fig, paths.root / "fp_P_G.png", plt))
        return out
    if not paths.nu_json.exists():
        raise InputError(f"{paths.nu_json} missing: run exp to the end first")
    nu = json.loads(paths.nu_json.read_text())
    for z0, entry in nu["by_shift"].items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for obs, mark in (("mean", "o"), ("median", "s"), ("peak", "^")):
            e = entry[obs]
            s = np.array([np.nan if v is None else v for v in e["slope_n"]], dtype=float)
            n = np.arange(1, s.size + 1)
            (pts,) = ax.semilogy(n, s, mark, label=f"{obs}")
            if e["fit_lambda"] and e["fit_amplitude"]:
                ax.semilogy(n, e["fit_amplitude"] * e["fit_lambda"] ** n, "--", lw=0.8, color=pts.get_color(),
                            label=f"{obs} fit: lambda {e['fit_lambda']:.4f}, nu {e['fit_nu']:.3f}")
        ax.set(xlabel="n", ylabel="slope_n = d<obs>/dz0", title=f"EXP, z0 = +-{z0}")
        ax.legend(fontsize=7)
        out.append(_save(fig, paths.root / f"exp_slopes_z0_{z0}.png", plt))
    return out


def _save(fig, path: Path, plt) -> Path:
    import io

    from opsrg.core.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
