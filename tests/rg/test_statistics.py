"""RG_SPEC 3.2/3.3 at small N: first-step moments, the FP width table, an EXP smoke run.

Tolerances follow the statistical errors SE(std z) ~ 1.8/sqrt(N), SE(mean z) ~ 2.17/sqrt(N).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from opsrg.rg.histogram import Grid
from opsrg.rg.streams import stream_key

FP_STD = [2.0335, 2.1172, 2.1499, 2.1627, 2.1679, 2.1700, 2.1708, 2.1711, 2.1712, 2.1712]
EXP_SLOPES = [1.3802, 1.864, 2.510]
LAMBDA = 1.3461


def test_first_step_from_uniform_g(backend):
    n = 4_000_000
    r = backend.sample_step(None, Grid(), n, stream_key(11, 1, 0, "sample"), dtype="float32")
    assert r.n == n and r.in_range + r.underflow + r.overflow + r.nonfinite == n
    assert r.nonfinite == 0
    mean = r.sum_z / r.in_range
    std = np.sqrt(r.sum_z2 / r.in_range - mean ** 2)
    g = r.sum_g / r.in_range
    var_g = r.sum_g2 / r.in_range - g * g
    assert std == pytest.approx(2.0336, abs=0.003)
    assert var_g == pytest.approx(0.0949, abs=0.003)
    assert g == pytest.approx(0.5, abs=0.003)
    assert abs(mean) < 5 * 2.17 / np.sqrt(n)
    assert r.counts.sum() == r.in_range and r.counts.dtype == np.int64


def test_fp_widths_follow_the_table(fp_run):
    n = 1_000_000
    for k in range(1, 7):
        st = json.loads((fp_run / f"DONE_RG{k}.json").read_text())["stats"][0]
        assert abs(st["std_z"] - FP_STD[k - 1]) < 4 * 1.8 / np.sqrt(n) + 1e-3, (k, st["std_z"])
        assert abs(st["mean_z"]) < 5 * 2.17 / np.sqrt(n), (k, st["mean_z"])
        assert st["underflow"] == st["overflow"] == st["nonfinite"] == 0
    last = json.loads((fp_run / "DONE_RG6.json").read_text())["stats"][0]
    assert last["var_g"] == pytest.approx(0.1008, abs=0.002)
    assert last["kurtosis_z"] == pytest.approx(3.775, abs=0.08)


def test_exp_smoke(fp_run, tmp_path):
    from opsrg.rg.pipeline import RunConfig, RunPaths, fp_fingerprint, run_loop, signed_shifts

    fp_file = str(fp_run / "sym_z_hist_RG6.npz")
    n = 300_000
    cfg = RunConfig(mode="exp", samples=n, seed=9, shards=4, shifts=signed_shifts([0.01]),
                    fp_sha256=fp_fingerprint(fp_file)[0])
    run_loop(cfg, RunPaths(tmp_path), 3, "numpy", fp_file=fp_file, log=lambda m: None)
    nu = json.loads((tmp_path / "nu.json").read_text())
    entry = nu["by_shift"]["0.01"]
    slopes = entry["mean"]["slope_n"]
    for got, want in zip(slopes, EXP_SLOPES, strict=False):
        assert got == pytest.approx(want, rel=0.03)
    for obs in ("mean", "median", "peak"):
        assert entry[obs]["observable"] == obs
        assert len(entry[obs]["slope_n"]) == 3 and len(entry[obs]["cumulative_nu_n"]) == 3
        assert len(entry[obs]["ratio_lambda_n"]) == 2
    assert entry["mean"]["fit_nu"] == pytest.approx(2.33, abs=0.35)
    assert entry["nu_err"] is not None and entry["nu_err"] > 0
    assert "bootstrap" in entry["error"]["method"]
    # the z0 = 0 control does not drift: fluctuations grow like lambda^n, no bias
    control = nu["control_z0_0"]["mean"]
    for k, m in enumerate(control, start=1):
        bound = 5 * 2.17 / np.sqrt(n) * np.sqrt(sum(LAMBDA ** (2 * j) for j in range(k)))
        assert abs(m) < bound, (k, m)
    assert (tmp_path / "shift_+0.010000" / "z_hist_unsym_RG3.npz").exists()
    assert (tmp_path / "shift_-0.010000" / "z_hist_unsym_RG3.npz").exists()


def _slope2(sampler_cls, counts, seed: int, n: int, z0: float = 0.01) -> float:
    """slope_2 from +-z0 with the same stream keys at both steps (common random numbers)."""
    from opsrg.rg.backends.numpy_backend import NumpyBackend

    b, grid = NumpyBackend(), Grid()
    means = {}
    for s in (-z0, z0):
        k1 = stream_key(seed, 1, 0, "sample")
        r1 = b.sample_step(sampler_cls.from_counts(counts), grid, n, k1, shift=s, dtype="float64")
        k2 = stream_key(seed, 2, 0, "sample")
        r2 = b.sample_step(sampler_cls.from_counts(r1.counts), grid, n, k2, dtype="float64")
        means[s] = r2.sum_z / r2.in_range
    return (means[z0] - means[-z0]) / (2 * z0)


def test_common_random_numbers_need_the_inverse_cdf(fp_run):
    """Alias tables built separately for +z0 and -z0 pair the uniforms differently and lose the
    CRN correlation at step 2; the inverse CDF keeps it (docs/rg.md, "Sampling")."""
    from opsrg.rg.histogram import AliasTable, InverseCDF, load_histogram

    counts, _ = load_histogram(str(fp_run / "sym_z_hist_RG6.npz"))
    n = 100_000
    icdf = [_slope2(InverseCDF, counts, s, n) for s in range(4)]
    alias = [_slope2(AliasTable, counts, s, n) for s in range(4)]
    assert np.std(icdf, ddof=1) < 0.03
    assert np.mean(icdf) == pytest.approx(EXP_SLOPES[1], abs=0.05)
    assert np.std(alias, ddof=1) > 3 * np.std(icdf, ddof=1)


def test_memory_is_flat_in_n():
    """Peak numpy allocation of a step depends on the batch, not on N (1e8 stays far below 1 GB)."""
    import tracemalloc

    from opsrg.rg.backends.numpy_backend import NumpyBackend
    from opsrg.rg.histogram import AliasTable

    grid = Grid()
    table = AliasTable.from_counts(np.ones(grid.nbins, dtype=np.int64))
    peaks = []
    for n in (100_000, 1_500_000):
        tracemalloc.start()
        NumpyBackend().sample_step(table, grid, n, 1, dtype="float32", batch_size=1 << 16)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.2 * peaks[0] + (1 << 20)
    assert peaks[1] < 200 * 2 ** 20
