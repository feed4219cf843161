"""Observables of a z-histogram and the critical-exponent estimators of RG_SPEC 3.3.

slope_n = (obs_n(+z0) - obs_n(-z0)) / (2 z0) for obs = mean, median, peak; lambda from the
successive ratio slope_{n+1}/slope_n and from a log-linear fit of ln slope_n over n >= 4 (all n
when fewer than two such steps exist); nu = ln 2 / ln lambda. The cumulative estimator
nu_n = ln(2^n) / ln(slope_n) is reported too but converges only as 1/n.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from opsrg.core.atomic import atomic_write_json
from opsrg.rg.histogram import Grid, load_histogram

if TYPE_CHECKING:
    from opsrg.rg.run import RunConfig, RunPaths

OBSERVABLES = ("mean", "median", "peak")
FIT_NMIN = 4
N_BOOT = 400


def hist_mean(counts: np.ndarray, grid: Grid) -> float:
    return float(np.dot(counts, grid.centers) / counts.sum())


def hist_median(counts: np.ndarray, grid: Grid) -> float:
    """Median of the piecewise-uniform density (linear inside the bin)."""
    c = np.asarray(counts, dtype=np.float64)
    cum = np.cumsum(c)
    half = 0.5 * cum[-1]
    j = int(np.searchsorted(cum, half, side="left"))
    below = cum[j - 1] if j > 0 else 0.0
    return float(-grid.zmax + (j + (half - below) / c[j]) * grid.width)


def hist_peak(counts: np.ndarray, grid: Grid, coarse: float = 0.05, half_window: float = 1.0) -> float:
    """Position of the maximum of Q: vertex of a quadratic fit to log Q.

    The fit window (+-half_window on bins ``coarse`` wide) is centred on the median, not on the
    argmax, so the estimate moves continuously with the histogram and the +z0/-z0 difference
    keeps the benefit of common random numbers.
    """
    c = np.asarray(counts, dtype=np.float64)
    f = max(1, round(coarse / grid.width))
    m = c.size // f
    reb = c[: m * f].reshape(m, f).sum(axis=1)
    x = -grid.zmax + (np.arange(m) + 0.5) * f * grid.width
    x0 = hist_median(counts, grid)
    sel = (np.abs(x - x0) <= half_window) & (reb > 0)
    if sel.sum() < 3:
        return float(x[int(np.argmax(reb))])
    a, b, _ = np.polyfit(x[sel] - x0, np.log(reb[sel]), 2, w=np.sqrt(reb[sel]))
    if a >= 0:
        return float(x[int(np.argmax(reb))])
    return float(x0 - b / (2 * a))


def fit_lambda(slopes: np.ndarray, nmin: int = FIT_NMIN) -> tuple[float, list[int]]:
    """lambda from a least-squares line through ln slope_n against n (n counted from 1)."""
    s = np.asarray(slopes, dtype=np.float64)
    ns = np.arange(1, s.size + 1)
    use = ns >= nmin
    if use.sum() < 2:
        use = np.ones_like(use)
    use &= s > 0
    if use.sum() < 2:
        return float("nan"), []
    p = np.polyfit(ns[use], np.log(s[use]), 1)
    return float(np.exp(p[0])), [int(n) for n in ns[use]]


def nu_of(lam: float) -> float:
    return math.log(2.0) / math.log(lam) if lam > 1 else float("nan")


def cumulative_nu(slopes: np.ndarray) -> list[float]:
    out = []
    for n, s in enumerate(np.asarray(slopes, dtype=np.float64), start=1):
        out.append(n * math.log(2.0) / math.log(s) if s > 1 else float("nan"))
    return out


def _clean(x: Any) -> Any:
    """NaN -> None so the JSON stays standard."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


def observables(cfg: RunConfig, paths: RunPaths, steps: int) -> dict[float, dict[str, list[float]]]:
    """obs[shift][name] = [value at n = 1..steps]; mean from the exact sums, others from histograms."""
    out: dict[float, dict[str, list[float]]] = {s: {o: [] for o in OBSERVABLES} for s in cfg.shifts}
    for k in range(1, steps + 1):
        done = json.loads(paths.done(k).read_text())
        for st in done["stats"]:
            s = st["shift"]
            counts, grid = load_histogram(str(paths.unsym(k, s)))
            out[s]["mean"].append(st["mean_z"])
            out[s]["median"].append(hist_median(counts, grid))
            out[s]["peak"].append(hist_peak(counts, grid))
    return out


def _bootstrap_nu(cfg: RunConfig, paths: RunPaths, steps: int, z0: float, seed: int) -> dict[str, Any]:
    """Spread of the fitted nu (mean observable) when the shards are resampled with replacement.

    The same shard indices are drawn for +z0 and -z0 (keeping the CRN pairing) and for every
    step. It captures the sampling noise of each step but not the noise inherited from the
    previous step's histogram, which all shards share.
    """
    if cfg.shards < 2:
        return {"method": "none", "reason": "one shard: rerun with --shards >= 2 (or several seeds) for an error bar"}
    sums = {+1: [], -1: []}
    cnts = {+1: [], -1: []}
    for k in range(1, steps + 1):
        done = json.loads(paths.done(k).read_text())
        for st in done["stats"]:
            for sign in (+1, -1):
                if st["shift"] == sign * z0:
                    sums[sign].append(st["shard_sum_z"])
                    cnts[sign].append(st["shard_in_range"])
    sp, sm = np.array(sums[1]), np.array(sums[-1])  # (steps, shards)
    cp, cm = np.array(cnts[1], dtype=float), np.array(cnts[-1], dtype=float)
    rng = np.random.default_rng(seed)
    nus, lams = [], []
    for _ in range(N_BOOT):
        idx = rng.integers(0, cfg.shards, cfg.shards)
        slope = (sp[:, idx].sum(1) / cp[:, idx].sum(1) - sm[:, idx].sum(1) / cm[:, idx].sum(1)) / (2 * z0)
        lam, _ = fit_lambda(slope)
        lams.append(lam)
        nus.append(nu_of(lam))
    nus_a = np.array(nus)
    nus_a = nus_a[np.isfinite(nus_a)]
    lams_a = np.array(lams)
    lams_a = lams_a[np.isfinite(lams_a)]
    return {"method": f"bootstrap over {cfg.shards} shards, {N_BOOT} resamples, mean observable",
            "caveat": "excludes the noise each step inherits from the previous histogram",
            "nu_std": float(nus_a.std(ddof=1)) if nus_a.size > 1 else None,
            "lambda_std": float(lams_a.std(ddof=1)) if lams_a.size > 1 else None}


def write_nu(paths: RunPaths, cfg: RunConfig, steps: int) -> dict[str, Any]:
    """Compute the EXP estimators for every z0 and observable and write ``nu.json``."""
    obs = observables(cfg, paths, steps)
    control = obs[0.0]
    result: dict[str, Any] = {
        "steps": steps, "samples": cfg.samples, "seed": cfg.seed, "shards": cfg.shards,
        "fit_nmin": FIT_NMIN,
        "control_z0_0": {o: control[o] for o in OBSERVABLES},
        "by_shift": {},
    }
    for z0 in [s for s in cfg.shifts if s > 0]:
        entry: dict[str, Any] = {}
        for o in OBSERVABLES:
            slope = (np.array(obs[z0][o]) - np.array(obs[-z0][o])) / (2 * z0)
            ratios = list(slope[1:] / slope[:-1])
            lam, used = fit_lambda(slope)
            entry[o] = {
                "observable": o,
                "slope_n": list(slope),
                "ratio_lambda_n": ratios,
                "ratio_nu_n": [nu_of(r) for r in ratios],
                "fit_lambda": lam, "fit_n": used, "fit_nu": nu_of(lam),
                "fit_amplitude": float(slope[used[0] - 1] / lam ** used[0]) if used else None,
                "cumulative_nu_n": cumulative_nu(slope),
            }
        entry["error"] = _bootstrap_nu(cfg, paths, steps, z0, cfg.seed)
        entry["nu"] = entry["mean"]["fit_nu"]
        entry["nu_err"] = entry["error"].get("nu_std")
        entry["nu_from"] = "mean observable, log-linear fit of ln slope_n over fit_n"
        result["by_shift"][f"{z0:g}"] = entry
    result = _clean(result)
    atomic_write_json(paths.nu_json, result)
    return result
