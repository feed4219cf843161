"""The z-histogram grid, its symmetrisation, and the samplers that draw z from it.

Counts are int64 throughout. Sampling is uniform within a bin, z = -zmax + (bin + u) * width, with
no off-by-one (the defect of the old code, RG_SPEC section 1). Two samplers:

* :class:`AliasTable` (Walker/Vose, O(n) build, O(1) draw), built by an *ordered sweep* that pairs
  small and large columns in bin order. That makes the table a continuous function of the
  histogram, so two nearby histograms (the +z0 and -z0 runs of EXP) map the same uniforms to
  nearby z and common random numbers keep their correlation (docs/rg.md, "Sampling").
* :class:`InverseCDF`, the exact inverse of the piecewise-uniform CDF: one uniform per z, monotone
  in u. Slower (binary search) but the reference for correctness tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from opsrg.errors import InputError


@dataclass(frozen=True)
class Grid:
    """Equal-width bins on the symmetric range [-zmax, zmax)."""

    nbins: int = 50000
    zmax: float = 25.0

    def __post_init__(self) -> None:
        if int(self.nbins) < 2 or self.nbins % 2:
            raise InputError(f"nbins must be an even integer >= 2 (got {self.nbins})")
        if not (np.isfinite(self.zmax) and self.zmax > 0):
            raise InputError(f"zmax must be positive and finite (got {self.zmax})")

    @property
    def width(self) -> float:
        return 2.0 * self.zmax / self.nbins

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.zmax, self.zmax, self.nbins + 1)

    @property
    def centers(self) -> np.ndarray:
        e = self.edges
        return 0.5 * (e[:-1] + e[1:])

    def bin_index(self, z: np.ndarray) -> np.ndarray:
        """Bin of each z (float64 arithmetic); -1 below, nbins at/above the range, NaN -> -2."""
        z64 = np.asarray(z, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            idx = np.floor((z64 + self.zmax) * (self.nbins / (2.0 * self.zmax)))
            out = np.clip(idx, -1, self.nbins).astype(np.int64)
        out[np.isnan(z64)] = -2
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"nbins": int(self.nbins), "zmax": float(self.zmax)}


def symmetrise(counts: np.ndarray) -> np.ndarray:
    """Q(z) + Q(-z) as integer counts: ``h + h[::-1]``.

    The result holds *doubled* counts (total = 2 x samples). That keeps the operation exact in
    int64 (no rounding of odd sums) and the shape is what matters for sampling.
    """
    h = np.asarray(counts)
    if h.ndim != 1 or h.size % 2:
        raise InputError("symmetrise needs a 1-d histogram with an even number of bins")
    return (h + h[::-1]).astype(np.int64)


def _checked_counts(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts)
    if c.ndim != 1 or c.size == 0:
        raise InputError("histogram counts must be a non-empty 1-d array")
    c = c.astype(np.float64)
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise InputError("histogram counts must be finite and non-negative")
    if c.sum() <= 0:
        raise InputError("histogram is empty: nothing to sample from")
    return c


@dataclass
class AliasTable:
    """Alias table over bins: column i keeps bin i with probability prob[i], else alias[i]."""

    prob: np.ndarray  # float64, nbins
    alias: np.ndarray  # int64, nbins

    @property
    def nbins(self) -> int:
        return int(self.prob.size)

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> AliasTable:
        """Vose's O(n) construction with worklists swept in bin order (see module docstring)."""
        c = _checked_counts(counts)
        n = c.size
        p = c * (n / c.sum())
        prob = np.ones(n, dtype=np.float64)
        alias = np.arange(n, dtype=np.int64)
        small = np.flatnonzero(p < 1.0).tolist()
        large = np.flatnonzero(p >= 1.0).tolist()
        pl = p.tolist()
        js = jl = 0
        pending = -1
        nsmall, nlarge = len(small), len(large)
        while True:
            if pending >= 0:
                s, pending = pending, -1
            elif js < nsmall:
                s = small[js]
                js += 1
            else:
                break
            if jl >= nlarge:  # rounding leftovers: the column is (numerically) full
                prob[s] = 1.0
                continue
            g = large[jl]
            prob[s] = pl[s]
            alias[s] = g
            pl[g] -= 1.0 - pl[s]
            if pl[g] < 1.0:
                pending = g
                jl += 1
        return cls(prob=prob, alias=alias)


def draw_bins(table: AliasTable, u1: np.ndarray, u2: np.ndarray | None = None) -> np.ndarray:
    """Bins for uniforms u1 (column) and u2 (keep-or-alias).

    With ``u2=None`` the fractional part of ``u1 * nbins`` serves as u2; u1 must then be float64
    (about 37 spare bits for 50 000 bins).
    """
    n = table.nbins
    x = np.asarray(u1, dtype=np.float64) * n
    col = x.astype(np.int64)
    np.minimum(col, n - 1, out=col)
    if u2 is None:
        u2 = x - col
    keep = u2 < table.prob[col]
    return np.where(keep, col, table.alias[col])


@dataclass
class InverseCDF:
    """Exact inverse of the piecewise-uniform CDF of a histogram (monotone in u)."""

    cum: np.ndarray  # float64, nbins: cumulative counts C[i] = sum_{j<=i} c_j
    counts: np.ndarray  # float64, nbins

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> InverseCDF:
        c = _checked_counts(counts)
        return cls(cum=np.cumsum(c), counts=c)

    def positions(self, u: np.ndarray) -> np.ndarray:
        """Continuous bin coordinate (bin + fraction) for uniforms u in [0, 1)."""
        total = self.cum[-1]
        x = np.asarray(u, dtype=np.float64) * total
        i = np.searchsorted(self.cum, x, side="right")
        np.minimum(i, self.cum.size - 1, out=i)
        lo = np.where(i > 0, self.cum[np.maximum(i - 1, 0)], 0.0)
        frac = np.clip((x - lo) / self.counts[i], 0.0, np.nextafter(1.0, 0.0))
        return i + frac


def load_histogram(path: str) -> tuple[np.ndarray, Grid]:
    """Read an NPZ with ``histval`` and ``binedges``; the edges must be an equal-width symmetric grid."""
    try:
        with np.load(path) as f:
            counts = np.asarray(f["histval"])
            edges = np.asarray(f["binedges"], dtype=np.float64)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"cannot read histogram {path}: {exc}") from exc
    if edges.size != counts.size + 1:
        raise InputError(f"{path}: binedges has {edges.size} entries for {counts.size} bins")
    grid = Grid(nbins=int(counts.size), zmax=float(edges[-1]))
    if not np.allclose(edges, grid.edges, rtol=0, atol=1e-9 * grid.zmax):
        raise InputError(f"{path}: bins are not equal-width on a symmetric range [-zmax, zmax]")
    return counts.astype(np.int64), grid


def save_histogram(path: str, counts: np.ndarray, grid: Grid) -> None:
    from opsrg.atomic import atomic_save_npz

    atomic_save_npz(path, histval=np.asarray(counts, dtype=np.int64), binedges=grid.edges,
                    bincenters=grid.centers)
