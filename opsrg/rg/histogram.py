"""The z-histogram grid, its symmetrisation, and the samplers that draw z from it.

Counts are int64 throughout. Sampling is uniform within a bin, z = -zmax + (bin + u) * width, with
no off-by-one (the defect of the old code, RG_SPEC section 1). Two samplers:

* :class:`AliasTable` (Walker/Vose, O(n) build, O(1) draw) for FP steps: fastest, but a small
  change of the histogram reshuffles which uniforms land in which bin.
* :class:`InverseCDF`, the exact inverse of the piecewise-uniform CDF: one uniform per z,
  monotone and continuous in the histogram, so the +z0 and -z0 runs of EXP map the same uniforms
  to nearby z and common random numbers keep their correlation (docs/rg.md, "Sampling").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from opsrg.core.errors import InputError
from opsrg.rg.checks import check_grid


@dataclass(frozen=True)
class Grid:
    """Equal-width bins on the symmetric range [-zmax, zmax)."""

    nbins: int = 50000
    zmax: float = 25.0

    def __post_init__(self) -> None:
        check_grid(self.nbins, self.zmax)

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
        """Vose's O(n) construction; the worklists are swept in bin order (deterministic)."""
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


GUIDE_CELLS_PER_BIN = 4


@dataclass
class InverseCDF:
    """Exact inverse of the piecewise-uniform CDF of a histogram: z is monotone in u.

    ``cum[i]`` (float64, nbins + 1, cum[0] = 0) holds the counts below bin i. A uniform u maps
    to x = u * cum[-1], to the bin i with cum[i] <= x < cum[i+1], and to the position
    i + (x - cum[i]) / (cum[i+1] - cum[i]) inside it. Empty bins are never chosen. ``guide``
    (GUIDE_CELLS_PER_BIN * nbins cells of equal probability, plus one) gives the bin at each
    cell start, so most draws need one comparison instead of a binary search.
    """

    cum: np.ndarray
    guide: np.ndarray

    @property
    def nbins(self) -> int:
        return int(self.cum.size - 1)

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> InverseCDF:
        c = _checked_counts(counts)
        cum = np.concatenate([[0.0], np.cumsum(c)])
        m = GUIDE_CELLS_PER_BIN * c.size
        starts = np.arange(m + 1) * (cum[-1] / m)
        guide = np.searchsorted(cum, starts, side="right") - 1
        np.clip(guide, 0, c.size - 1, out=guide)
        return cls(cum=cum, guide=guide.astype(np.int64))

    def positions(self, u: np.ndarray, sweeps: int = 1) -> np.ndarray:
        """Continuous bin coordinate (bin + fraction) for float64 uniforms u in [0, 1)."""
        cum, m = self.cum, self.guide.size - 1
        total = cum[-1]
        x = np.minimum(np.asarray(u, dtype=np.float64) * total, np.nextafter(total, 0.0))
        i = self.guide[(x * (m / total)).astype(np.int64)]
        for _ in range(sweeps):
            i += cum[i + 1] <= x
        # A guide cell can point past x (x * m / total rounding up to m when the last bins are
        # empty); those, and long runs of (nearly) empty bins, get a binary search.
        bad = (cum[i + 1] <= x) | (cum[i] > x)
        if bad.any():
            i[bad] = np.searchsorted(cum, x[bad], side="right") - 1
        lo = cum[i]
        frac = x - lo
        frac /= cum[i + 1] - lo
        # i + frac must stay below i + 1 after rounding (ulp(65536) is 2^-36); the clamp moves
        # at most 2^-30 of a bin
        np.minimum(frac, 1.0 - 2.0 ** -30, out=frac)
        frac += i
        return frac


def load_histogram(path: str) -> tuple[np.ndarray, Grid]:
    """Read an NPZ with ``histval`` and ``binedges``; the edges must be an equal-width symmetric grid."""
    try:
        with np.load(path) as f:
            counts = np.asarray(f["histval"])
            edges = np.asarray(f["binedges"], dtype=np.float64)
    except FileNotFoundError:
        raise InputError(f"histogram file not found: {path}") from None
    except KeyError as exc:
        raise InputError(f"{path}: not an opsrg histogram (missing key {exc})") from None
    except Exception as exc:  # noqa: BLE001  zipfile, pickle and format errors all mean "not a valid NPZ"
        raise InputError(f"{path}: not a valid NPZ histogram (truncated or corrupt: "
                         f"{exc.__class__.__name__}: {exc})") from None
    if edges.size != counts.size + 1:
        raise InputError(f"{path}: binedges has {edges.size} entries for {counts.size} bins")
    grid = Grid(nbins=int(counts.size), zmax=float(edges[-1]))
    if not np.allclose(edges, grid.edges, rtol=0, atol=1e-9 * grid.zmax):
        raise InputError(f"{path}: bins are not equal-width on a symmetric range [-zmax, zmax]")
    return counts.astype(np.int64), grid


def save_histogram(path: str, counts: np.ndarray, grid: Grid) -> None:
    from opsrg.core.atomic import atomic_save_npz

    atomic_save_npz(path, histval=np.asarray(counts, dtype=np.int64), binedges=grid.edges,
                    bincenters=grid.centers)
