"""Grid, symmetrisation, the two samplers (no off-by-one) and the random-stream keys."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from opsrg.core.errors import InputError
from opsrg.rg.histogram import AliasTable, Grid, InverseCDF, draw_bins, symmetrise
from opsrg.rg.streams import numpy_generator, stream_key


def test_grid_geometry():
    g = Grid()
    assert g.width == pytest.approx(0.001)
    assert g.edges.size == 50001 and g.edges[0] == -25 and g.edges[-1] == 25
    assert g.centers.size == 50000
    idx = g.bin_index(np.array([-25.0, -1e-12, 0.0, 24.9999, 25.0, -26.0, np.inf, -np.inf, np.nan]))
    assert idx.tolist() == [0, 24999, 25000, 49999, 50000, -1, 50000, -1, -2]
    with pytest.raises(InputError):
        Grid(nbins=3)


def test_symmetrise_exact_integer():
    h = np.array([3, 0, 5, 1, 0, 7], dtype=np.int64)
    s = symmetrise(h)
    assert s.dtype == np.int64 and s.tolist() == [10, 0, 6, 6, 0, 10]
    assert s.sum() == 2 * h.sum()
    np.testing.assert_array_equal(s, s[::-1])


@pytest.mark.parametrize("kind", ["alias", "icdf"])
def test_single_bin_lands_in_that_bin(kind):
    """The old inverse-CDF sampler put every draw one bin low; here a lone bin is hit exactly."""
    g = Grid(nbins=100, zmax=5.0)
    counts = np.zeros(100, dtype=np.int64)
    counts[37] = 9
    u = np.random.default_rng(0).random(100_000)
    if kind == "alias":
        pos = draw_bins(AliasTable.from_counts(counts), u) + np.random.default_rng(1).random(u.size)
    else:
        pos = InverseCDF.from_counts(counts).positions(u)
    z = -g.zmax + pos * g.width
    assert z.min() >= g.edges[37] and z.max() < g.edges[38]
    assert abs(z.mean() - g.centers[37]) < 1e-3 * g.width * 10


@pytest.mark.parametrize("kind", ["alias", "icdf"])
def test_sampler_frequencies(kind):
    rng = np.random.default_rng(4)
    counts = rng.integers(0, 50, 400)
    counts[:30] = 0
    counts[200:260] = 0
    n = 2_000_000
    u = rng.random(n)
    if kind == "alias":
        bins = draw_bins(AliasTable.from_counts(counts), u)
    else:
        bins = InverseCDF.from_counts(counts).positions(u).astype(np.int64)
    freq = np.bincount(bins, minlength=400)
    expect = counts / counts.sum() * n
    assert np.all(freq[counts == 0] == 0)
    chi2 = np.sum((freq - expect)[counts > 0] ** 2 / expect[counts > 0])
    dof = np.count_nonzero(counts) - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof)


def test_alias_table_is_exact():
    """Column mass prob[i] + alias mass must add up to the bin probabilities exactly."""
    counts = np.random.default_rng(2).integers(0, 1000, 5000)
    t = AliasTable.from_counts(counts)
    mass = t.prob.copy()
    np.add.at(mass, t.alias, 1.0 - t.prob)
    np.testing.assert_allclose(mass / mass.size, counts / counts.sum(), atol=1e-12)


def test_icdf_matches_binary_search_and_is_monotone():
    counts = np.random.default_rng(3).integers(0, 5, 50000) * (np.random.default_rng(4).random(50000) < 0.2)
    ic = InverseCDF.from_counts(counts)
    u = np.sort(np.concatenate([np.random.default_rng(5).random(200_000), [0.0, np.nextafter(1.0, 0.0)]]))
    pos = ic.positions(u)
    x = np.minimum(u * ic.cum[-1], np.nextafter(ic.cum[-1], 0))
    i = np.searchsorted(ic.cum, x, side="right") - 1
    np.testing.assert_allclose(pos, i + (x - ic.cum[i]) / (ic.cum[i + 1] - ic.cum[i]), atol=1e-9)
    assert np.all(np.diff(pos) >= 0)
    assert np.all(counts[pos.astype(np.int64)] > 0)


def test_bad_histograms_refused():
    for bad in (np.zeros(10), np.array([1, -1, 2]), np.array([[1, 2]])):
        with pytest.raises(InputError):
            AliasTable.from_counts(bad)
        with pytest.raises(InputError):
            InverseCDF.from_counts(bad)


def test_stream_keys_distinct():
    purposes = ("sample", "phase", "launder")
    keys = [stream_key(s, k, i, p) for s, k, i, p in
            itertools.product((1, 2), range(1, 13), range(40), purposes)]
    assert len(set(keys)) == len(keys)
    assert all(0 <= k < 2 ** 64 for k in keys)
    assert stream_key(5, 3, 2, "sample") == stream_key(5, 3, 2, "sample")
    a = numpy_generator(stream_key(5, 3, 2, "sample")).random(4)
    b = numpy_generator(stream_key(5, 3, 3, "sample")).random(4)
    assert not np.allclose(a, b)
    with pytest.raises(InputError):
        stream_key(-1, 0, 0, "sample")


def test_inverse_cdf_top_uniform_with_empty_last_bins():
    """u just below 1 with the last bins empty must land in the last non-empty bin, never -inf.

    The guide cell of the very top uniform can round up to the final cell, which points at an
    empty bin; these random tables include ones where that happens.
    """
    import numpy as np

    from opsrg.rg.histogram import InverseCDF

    rng = np.random.default_rng(0)
    u = np.array([np.nextafter(1.0, 0.0), 1.0 - 1e-12, 0.0, 0.5])
    for _ in range(5000):
        n = int(rng.integers(10, 3000))
        k = int(rng.integers(1, n))
        counts = np.zeros(n, dtype=np.int64)
        counts[:k] = rng.integers(1, 1000, k)
        pos = InverseCDF.from_counts(counts).positions(u)
        assert np.all(np.isfinite(pos)), (n, k)
        assert k - 1 <= pos[0] < k and pos[2] == 0.0
