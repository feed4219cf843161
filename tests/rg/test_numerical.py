"""--method numerical: the cell's linear equations agree with the closed form."""

from __future__ import annotations

import numpy as np

from opsrg.rg import kernel, numerical
from opsrg.rg.backends.numpy_backend import NumpyBackend
from opsrg.rg.histogram import Grid
from opsrg.rg.streams import stream_key


def test_per_sample_with_mapped_phases_any_n():
    rng = np.random.default_rng(8)
    n = 70_001  # not a multiple of anything: chunks of any size must work
    z = rng.normal(0, 2.2, (5, n))
    theta = rng.random((8, n)) * 2 * np.pi
    got = numerical.solve_cell_z(z, theta)
    want = kernel.rg_step_z(z, numerical.loop_phases(theta))
    assert got.shape == (n,)
    assert np.max(np.abs(got - want)) < 1e-9


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    ca, cb = np.cumsum(a) / a.sum(), np.cumsum(b) / b.sum()
    return float(np.max(np.abs(ca - cb)))


def test_distribution_matches_analytic():
    n = 200_000
    grid = Grid(nbins=2000, zmax=25.0)
    ra = NumpyBackend().sample_step(None, grid, n, stream_key(1, 1, 0, "sample"), dtype="float64")
    rn = NumpyBackend(method="numerical").sample_step(None, grid, n, stream_key(2, 1, 0, "sample"),
                                                      dtype="float64")
    assert rn.n == n
    assert _ks(ra.counts, rn.counts) < 1.63 * np.sqrt(2 / n) * 1.5
    sa = np.sqrt(ra.sum_z2 / ra.in_range - (ra.sum_z / ra.in_range) ** 2)
    sn = np.sqrt(rn.sum_z2 / rn.in_range - (rn.sum_z / rn.in_range) ** 2)
    assert abs(sa - sn) < 4 * 1.8 * np.sqrt(2 / n)
