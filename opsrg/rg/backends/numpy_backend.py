"""Plain vectorised NumPy backend: always available, the reference for the others.

Per batch: 5 z per sample from the alias table (one float64 uniform for column and keep/alias,
one uniform for the position inside the bin) or, for EXP, from the inverse CDF (one uniform), 4 uniform phases, the real-arithmetic map of
``kernel.map_z_fast`` in float32 or float64, then a float64-binned int64 histogram. Memory is
O(batch_size), not O(n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opsrg.core.errors import InputError
from opsrg.rg.backends import StepResult, accumulate
from opsrg.rg.histogram import AliasTable, Grid, InverseCDF, draw_bins
from opsrg.rg.kernel import map_z_fast
from opsrg.rg.streams import numpy_generator

TWO_PI = 2.0 * np.pi
DEFAULT_BATCH = 1 << 16


def draw_z(rng: np.random.Generator, table: AliasTable | InverseCDF | None, grid: Grid,
           shape: tuple[int, ...], shift: float, ft: np.dtype) -> np.ndarray:
    """Input z of the given shape: from the sampler, or from uniform G when ``table is None``."""
    if table is None:
        # G = t^2 uniform on (0, 1): z = ln(1/G - 1) = ln(1 - G) - ln(G); 1 - U is in (0, 1]
        g = 1.0 - rng.random(shape)
        with np.errstate(divide="ignore"):
            z = np.log1p(-g) - np.log(g)
        return (z + shift).astype(ft)
    if table.nbins != grid.nbins:
        raise InputError(f"sampler has {table.nbins} bins, grid has {grid.nbins}")
    if isinstance(table, InverseCDF):  # one uniform per z, monotone: keeps CRN pairs close
        pos = table.positions(rng.random(shape))
        return (-grid.zmax + shift + pos * grid.width).astype(ft)
    bins = draw_bins(table, rng.random(shape))
    # position in float64 (float32 would keep only 8 bits of the in-bin fraction at bin 50 000)
    return ((-grid.zmax + shift) + (bins + rng.random(shape)) * grid.width).astype(ft)


@dataclass
class NumpyBackend:
    """The reference backend; ``method='numerical'`` solves the cell's linear equations instead."""

    method: str = "analytic"
    name: str = "numpy"
    samplers: tuple[str, ...] = ("alias", "icdf")
    default_batch_size: int = DEFAULT_BATCH

    def available(self) -> bool:
        return True

    def map_z(self, z: np.ndarray, phases: np.ndarray, dtype: str = "float64") -> np.ndarray:
        """Per-sample map of this backend (z: (5, N), phases: (4, N) loop phases)."""
        ft = np.dtype(dtype)
        ph = np.asarray(phases, dtype=ft)
        return map_z_fast(np.asarray(z, dtype=ft), np.cos(ph), np.sin(ph), dtype=dtype)

    def sample_step(self, table: AliasTable | InverseCDF | None, grid: Grid, n: int, key: int, *,
                    shift: float = 0.0, dtype: str = "float32",
                    batch_size: int = DEFAULT_BATCH) -> StepResult:
        if dtype not in ("float32", "float64"):
            raise InputError(f"dtype must be float32 or float64 (got {dtype!r})")
        if int(n) < 0 or int(batch_size) < 1:
            raise InputError(f"need n >= 0 and batch_size >= 1 (got {n}, {batch_size})")
        if self.method not in ("analytic", "numerical"):
            raise InputError(f"unknown method {self.method!r}")
        ft = np.dtype(dtype)
        rng = numpy_generator(key)
        total = StepResult.empty(grid.nbins)
        done = 0
        while done < n:
            b = min(int(batch_size), int(n) - done)
            z = draw_z(rng, table, grid, (5, b), shift, ft)
            if self.method == "analytic":
                ph = rng.random((4, b), dtype=ft) * ft.type(TWO_PI)
                zp = map_z_fast(z, np.cos(ph), np.sin(ph), dtype=dtype)
            else:
                from opsrg.rg.numerical import solve_cell_z

                theta = rng.random((8, b)) * TWO_PI
                zp = solve_cell_z(z.astype(np.float64), theta)
            total = total + accumulate(zp, grid)
            done += b
        return total
