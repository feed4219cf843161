"""The fast backends: ``cpu`` (numba) here, ``cupy`` on a GPU machine (tests marked ``gpu``).

Checks per backend: the per-sample map against the float64 reference (RG_SPEC 3.1), the first
step from uniform G (RG_SPEC 3.2), agreement of one step's histogram moments with another
backend from the same input table, determinism of the Philox streams, and flat memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from opsrg.core.errors import BackendUnavailableError, InputError
from opsrg.rg import kernel
from opsrg.rg.backends import Backend, StepResult, get_backend
from opsrg.rg.histogram import AliasTable, Grid, InverseCDF, symmetrise
from opsrg.rg.streams import stream_key

from support import require, warm_once

REPO = Path(__file__).resolve().parents[2]
GRID = Grid()

# RG_SPEC 3.2, first step from uniform G; tolerance 0.003 at N = 1e6
FIRST_STD_Z = 2.0336
FIRST_VAR_G = 0.0949


# ------------------------------------------------------------------------------------ helpers
def moments(r: StepResult) -> dict[str, float]:
    k = r.counts.sum()
    mz = r.sum_z / k
    mg = r.sum_g / k
    return {"mean_z": mz, "std_z": float(np.sqrt(r.sum_z2 / k - mz * mz)),
            "mean_g": mg, "var_g": r.sum_g2 / k - mg * mg}


def random_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs as in the reference kernel tests: uniform-G z, a quarter with wider normal z."""
    rng = np.random.default_rng(seed)
    g = 1.0 - rng.random((5, n))
    z = np.log1p(-g) - np.log(g)
    z[:, : n // 4] = rng.normal(0.0, 4.0, (5, n // 4))
    return z, rng.random((4, n)) * 2 * np.pi


def coarse(counts: np.ndarray, groups: int = 100, lo: int = 15000, hi: int = 35000) -> np.ndarray:
    """Counts regrouped into ``groups`` equal cells over bins lo..hi (z in [-10, 10)); tails pooled."""
    mid = counts[lo:hi].reshape(groups, -1).sum(axis=1)
    return np.concatenate([[counts[:lo].sum()], mid, [counts[hi:].sum()]])


def chi2_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Two-sample chi^2 of equal-total histograms (cells with any counts)."""
    ka, kb = np.sqrt(b.sum() / a.sum()), np.sqrt(a.sum() / b.sum())
    m = (a + b) > 0
    stat = float((((ka * a - kb * b)[m]) ** 2 / (a + b)[m]).sum())
    return stat, int(m.sum()) - 1


def assert_chi2_ok(a: np.ndarray, b: np.ndarray) -> None:
    stat, dof = chi2_two_sample(coarse(a), coarse(b))
    # dof ~ 101: mean 101, sd 14; 101 + 6 sd is p ~ 1e-6
    assert stat < dof + 6 * np.sqrt(2 * dof), f"chi2 {stat:.1f} for {dof} dof"


@pytest.fixture(scope="module")
def cpu():
    b = get_backend("cpu")
    assert b.available(), b.unavailable_reason()
    warm_once(b)
    return b


@pytest.fixture(scope="module")
def step1(cpu) -> StepResult:
    """First step from uniform G, N = 1e6, float32 (also warms the compiled kernels)."""
    return cpu.sample_step(None, GRID, 1_000_000, stream_key(2024, 1, 0, "sample"))


@pytest.fixture(scope="module")
def table2(step1) -> np.ndarray:
    """Symmetrised step-1 histogram: the input of a second step."""
    return symmetrise(step1.counts)


# ------------------------------------------------------------------------------- the contract
def test_modules_import_without_numba_or_cupy():
    code = ("import sys, opsrg.rg.backends.cpu, opsrg.rg.backends.cupy_backend as c;"
            "print(int('numba' in sys.modules), int('cupy' in sys.modules), int(c.CupyBackend.name == 'cupy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["0", "0", "1"]


def test_cpu_backend_contract(cpu):
    from opsrg.rg.backends.cpu import CpuBackend

    assert isinstance(cpu, CpuBackend) and isinstance(cpu, Backend)
    assert cpu.name == "cpu" and {"alias", "icdf"} <= set(cpu.samplers)
    r = cpu.sample_step(None, GRID, 0, 1)
    assert r.n == 0 and r.counts.shape == (GRID.nbins,) and r.counts.dtype == np.int64 and r.counts.sum() == 0


@pytest.mark.parametrize("bad", [{"dtype": "float16"}, {"n": -1}, {"batch_size": 0}, {"shift": float("nan")},
                                 {"key": -1}, {"key": 1 << 64}])
def test_cpu_rejects_bad_arguments(cpu, bad):
    args = {"n": 10, "key": 1, "dtype": "float32", "batch_size": 1000, "shift": 0.0} | bad
    with pytest.raises(InputError):
        cpu.sample_step(None, GRID, args.pop("n"), args.pop("key"), **args)


def test_cpu_rejects_table_of_other_grid(cpu):
    table = AliasTable.from_counts(np.ones(1000, dtype=np.int64))
    with pytest.raises(InputError, match="1000 columns"):
        cpu.sample_step(table, GRID, 10, 1)


def test_philox_known_answers():
    """Random123 known-answer vectors of Philox4x32-10."""
    from opsrg.rg.backends import _cpu_kernels as k

    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, want in cases:
        got = k.philox_block(np.array(ctr, dtype=np.uint64), np.array(key, dtype=np.uint64))
        assert tuple(int(x) for x in got) == want


# ------------------------------------------------------------------------------------ the map
def test_cpu_map_float64_matches_reference(cpu):
    z, ph = random_inputs(200_000, seed=21)
    err = np.abs(cpu.map_z(z, ph, "float64") - kernel.rg_step_z(z, ph))
    assert err.max() <= 1e-10


def test_cpu_map_float32_accuracy(cpu):
    """RG_SPEC 3.1: median |dz'| ~ 2e-7, 0 of 2e5 samples off by more than the 1e-3 bin width."""
    z, ph = random_inputs(200_000, seed=22)
    z32 = z.astype(np.float32)
    got = cpu.map_z(z32, ph, "float32")
    assert got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - kernel.rg_step_z(z32.astype(np.float64), ph))
    assert np.median(err) < 4e-7
    assert np.count_nonzero(err > 1e-3) == 0
    assert err.max() < 1e-3


def test_cpu_map_limits(cpu):
    """All t = 2^-1/2, phases 0 gives z' = 0; open/closed saddles give -inf/+inf (float64)."""
    for dt, tol in (("float64", 1e-12), ("float32", 1e-5)):
        assert np.max(np.abs(cpu.map_z(np.zeros((5, 4)), np.zeros((4, 4)), dt))) <= tol
    z = np.array([[-np.inf, np.inf, -np.inf, np.inf, np.inf],  # saddles 1, 3 open: not connected
                  [-np.inf, np.inf, np.inf, np.inf, -np.inf]]).T  # 1, 5 open: connected
    zp = cpu.map_z(z, np.full((4, 2), 0.3), "float64")
    assert zp[0] == np.inf and zp[1] == -np.inf


def test_cpu_math_polynomials():
    from opsrg.rg.backends import _cpu_kernels as k

    x = -np.linspace(0.0, 40.0, 200_001).astype(np.float32)
    assert np.max(np.abs(k.exp_neg32_array(x) / np.exp(x.astype(np.float64)) - 1)) < 3e-7
    q = np.exp(np.random.default_rng(3).uniform(-80, 80, 200_000)).astype(np.float32)
    assert np.max(np.abs(k.log32_array(q) - np.log(q.astype(np.float64)))) < 1e-5
    x64 = -np.linspace(0.0, 60.0, 200_001)
    assert np.max(np.abs(k.exp_neg64_array(x64) / np.exp(x64) - 1)) < 5e-15
    assert k.exp_neg64_array(np.array([-np.inf, -800.0]))[0] == 0.0
    q64 = np.exp(np.random.default_rng(5).uniform(-700, 700, 200_000))
    assert np.max(np.abs(k.log64_array(q64) - np.log(q64))) < 2e-13  # |ln q| up to 700
    special = k.log64_array(np.array([0.0, 1e-310, np.inf, 1.0]))
    assert special[0] == special[1] == -np.inf and special[2] == np.inf and special[3] == 0.0
    ph = np.random.default_rng(4).random((4, 50_000)) * 2 * np.pi
    y = ph.ravel() * (2 / np.pi)
    qd = np.rint(y)
    c, s = k.sincos_reduced32((y - qd).astype(np.float32), np.mod(qd, 4).astype(np.uint64))
    assert np.max(np.abs(c - np.cos(ph.ravel()))) < 3e-7 and np.max(np.abs(s - np.sin(ph.ravel()))) < 3e-7


# -------------------------------------------------------------------------------- statistics
def test_cpu_first_step_from_uniform_g(step1):
    m = moments(step1)
    assert step1.n == 1_000_000 and step1.counts.sum() + step1.underflow + step1.overflow + step1.nonfinite == step1.n
    assert abs(m["std_z"] - FIRST_STD_Z) < 0.003
    assert abs(m["var_g"] - FIRST_VAR_G) < 0.003
    assert abs(m["mean_g"] - 0.5) < 0.003
    assert abs(m["mean_z"]) < 0.01  # SE 2.2e-3


def test_cpu_first_step_with_shift(cpu):
    """RG_SPEC 2.4: uniform G shifted by z0 = 0.5, one step gives <z'> = 0.711."""
    r = cpu.sample_step(None, GRID, 1_000_000, stream_key(2024, 1, 0, "shifted"), shift=0.5)
    assert abs(moments(r)["mean_z"] - 0.711) < 0.012


@pytest.mark.parametrize("sampler", [AliasTable, InverseCDF])
def test_cpu_step_agrees_with_numpy(cpu, table2, sampler):
    """Same input table, independent streams: moments within 5 SE and a coarse chi^2 test."""
    from opsrg.rg.backends.numpy_backend import NumpyBackend

    n = 1_000_000
    table = sampler.from_counts(table2)
    a = cpu.sample_step(table, GRID, n, stream_key(7, 2, 0, "sample"))
    b = NumpyBackend().sample_step(table, GRID, n, stream_key(7, 2, 1, "sample"))
    ma, mb = moments(a), moments(b)
    se = np.sqrt(2.0 / n)
    assert abs(ma["std_z"] - mb["std_z"]) < 5 * 1.8 * se
    assert abs(ma["mean_z"] - mb["mean_z"]) < 5 * 2.2 * se
    assert abs(ma["var_g"] - mb["var_g"]) < 5 * 0.1 * se
    assert abs(ma["mean_g"] - mb["mean_g"]) < 5 * 0.32 * se
    assert abs(ma["std_z"] - 2.1172) < 0.01  # RG_SPEC 3.2 step 2 (input table itself from 1e6)
    assert_chi2_ok(a.counts, b.counts)


def test_cpu_step_float64_same_stream_as_float32(cpu, table2):
    """float32 and float64 runs of one key draw the same samples: histograms differ only at edges."""
    table = AliasTable.from_counts(table2)
    key = stream_key(7, 2, 2, "sample")
    a = cpu.sample_step(table, GRID, 200_000, key, dtype="float32")
    b = cpu.sample_step(table, GRID, 200_000, key, dtype="float64")
    moved = np.abs(a.counts - b.counts).sum() / 2
    assert moved <= 0.002 * a.n  # |dz'| ~ 2e-7 against 1e-3 bins: ~1e-3 of samples change bin
    assert abs(a.sum_z - b.sum_z) / a.n < 1e-5


def test_cpu_inverse_cdf_draws_match_the_core_sampler(table2):
    """The kernel's inverse-CDF search (with its own compact guide) gives the core's positions."""
    from opsrg.rg.backends import _cpu_kernels as k
    from opsrg.rg.backends.cpu import compact_guide

    icdf = InverseCDF.from_counts(table2)
    u = np.random.default_rng(8).random(200_000)
    u[:3] = [0.0, 1e-12, 0.5]
    want = icdf.positions(u)
    for guide in (compact_guide(icdf.cum), compact_guide(icdf.cum, 1), icdf.guide.astype(np.int32)):
        assert np.array_equal(k.icdf_positions(u, icdf.cum, guide), want)
    # u -> 1 with empty trailing bins: the last non-empty bin, never an empty one
    last = np.flatnonzero(table2)[-1]
    top = k.icdf_positions(np.array([np.nextafter(1.0, 0.0)]), icdf.cum, compact_guide(icdf.cum))[0]
    assert last <= top < last + 1


def test_cpu_under_and_overflow_match_numpy(cpu):
    grid = Grid(nbins=2000, zmax=2.0)
    n = 400_000
    a = cpu.sample_step(None, grid, n, 5)
    b = get_backend("numpy").sample_step(None, grid, n, 6)
    for r in (a, b):
        assert r.counts.sum() + r.underflow + r.overflow + r.nonfinite == n
    fa, fb = a.underflow / n, b.underflow / n
    assert fa > 0.1 and abs(fa - fb) < 5 * np.sqrt(2 * fa * (1 - fa) / n)
    assert abs(a.overflow - b.overflow) / n < 5 * np.sqrt(2 * fa * (1 - fa) / n)


# ------------------------------------------------------------------------------- determinism
def test_cpu_deterministic_streams(cpu, table2):
    import numba

    table = AliasTable.from_counts(table2)
    n = 300_000
    a = cpu.sample_step(table, GRID, n, 11, batch_size=50_000)
    b = cpu.sample_step(table, GRID, n, 11, batch_size=50_000)
    c = cpu.sample_step(table, GRID, n, 12, batch_size=50_000)
    d = cpu.sample_step(table, GRID, n, 11, batch_size=4_096)  # other chunking: same counts
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        e = cpu.sample_step(table, GRID, n, 11, batch_size=50_000)  # one thread: bit-identical
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(a.counts, b.counts) and a.scalars() == b.scalars()
    assert np.array_equal(a.counts, d.counts) and abs(a.sum_z - d.sum_z) < 1e-9 * n
    assert np.array_equal(a.counts, e.counts) and a.scalars() == e.scalars()
    assert not np.array_equal(a.counts, c.counts)
    assert np.abs(a.counts - c.counts).sum() > n // 10  # different keys: unrelated samples (~0.2 n)


def test_cpu_common_random_numbers_for_shifts(cpu, table2):
    """EXP: one key for +z0 and -z0 (inverse CDF) makes the slope of <z'> nearly noise-free."""
    table = InverseCDF.from_counts(table2)
    n = 400_000
    plus = moments(cpu.sample_step(table, GRID, n, 3, shift=0.01))["mean_z"]
    minus = moments(cpu.sample_step(table, GRID, n, 3, shift=-0.01))["mean_z"]
    slope = (plus - minus) / 0.02
    assert abs(slope - 1.38) < 0.05  # RG_SPEC 3.3 slope_1 (from the FP; here from step 1)


def test_cpu_memory_flat_in_n():
    """Peak RSS after 2e7 samples is within 16 MiB of the peak after 1e5 (fresh process)."""
    code = """
import json, resource
from opsrg.rg.backends.cpu import CpuBackend
from opsrg.rg.histogram import Grid
b = CpuBackend(); g = Grid()
b.sample_step(None, g, 100_000, 1)
r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
b.sample_step(None, g, 20_000_000, 2)
r2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps([r1, r2]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    r1, r2 = json.loads(out.stdout.strip().splitlines()[-1])
    assert r2 - r1 < 16 * 1024, f"peak RSS grew by {(r2 - r1) / 1024:.1f} MiB"


# ------------------------------------------------------------------------------ cupy, no GPU
def test_cupy_unavailable_without_gpu_is_an_error_not_a_crash():
    from opsrg.rg.backends.cupy_backend import CupyBackend

    b = CupyBackend()
    if b.available():  # a GPU machine: the backend must then say nothing is missing and load
        assert not b.unavailable_reason() and get_backend("cupy").name == "cupy"
        return
    assert b.unavailable_reason()
    with pytest.raises(BackendUnavailableError, match="cupy"):
        get_backend("cupy")
    with pytest.raises(BackendUnavailableError):
        b.sample_step(None, GRID, 10, 1)


def test_cuda_kernel_source_is_found():
    from opsrg.rg.backends.cupy_backend import KERNEL_NAMES, kernel_source

    src = kernel_source()
    for name in KERNEL_NAMES:
        assert re.search(rf'extern "C" __global__ void (__launch_bounds__\([^)]*\)\s*)?{name}\(', src), name


# ------------------------------------------------------------------------------------ GPU
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


@pytest.mark.gpu
@pytest.mark.skipif(NVCC is None, reason="no nvcc (CUDA toolkit) on this machine")
def test_cuda_kernel_compiles_with_nvcc(tmp_path):
    src = REPO / "kernels" / "rg_step.cu"
    out = subprocess.run([NVCC, "-arch=sm_90", "--ptx", "-o", str(tmp_path / "rg_step.ptx"), str(src)],
                         check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr




@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    """kernels/rg_step.cu built for the host as one thread (kernels/host_check.cpp)."""
    require("g++", "it builds the host check of the CUDA kernel")
    exe = tmp_path_factory.mktemp("host_check") / "host_check"
    subprocess.run([shutil.which("g++"), "-O2", "-std=c++17", "-Wno-unknown-pragmas", "-o", str(exe),
                    str(REPO / "kernels" / "host_check.cpp")], check=True, capture_output=True, text=True)
    return exe


class EmulatedDevice:
    """Just enough of CuPy for ``CupyBackend``: arrays are numpy arrays and a kernel launch runs
    the CUDA code on the host through ``host_check``, after checking every argument's type
    against the kernel's C signature (a wrong scalar type would corrupt a real launch)."""

    SIGNATURES: ClassVar[dict[str, tuple]] = {
        "rg_step": (np.uint64, np.uint64, np.uint32, np.uint32, np.int32, ("a", np.uint64), ("a", np.float64),
                    ("a", np.int32), np.int64, np.float64, np.float64, np.uint32, np.float64, np.float64,
                    np.float64, np.int32, ("a", np.uint64), ("a", np.uint64), ("a", np.float64)),
        "map_z_f32": (("a", np.float32), ("a", np.float32), ("a", np.uint32), ("a", np.float32), np.int64),
        "map_z_f64": (("a", np.float64), ("a", np.float64), ("a", np.uint32), ("a", np.float64), np.int64),
        "philox_words": (("a", np.uint64), np.int64, np.uint32, np.uint32, ("a", np.uint32)),
    }

    def __init__(self, exe: Path, optin: int = 232_448) -> None:
        import types

        self.exe = exe
        self.launches: list[tuple[str, int]] = []
        cp = types.ModuleType("cupy")
        cp.uint64, cp.uint32, cp.int32, cp.int64, cp.float64 = np.uint64, np.uint32, np.int32, np.int64, np.float64
        cp.zeros, cp.empty = np.zeros, np.empty
        cp.asarray = lambda a: np.ascontiguousarray(a)
        cp.asnumpy = lambda a: np.array(a)
        dev = types.SimpleNamespace(attributes={"MultiProcessorCount": 3, "MaxSharedMemoryPerBlockOptin": optin},
                                    id=0)
        cp.cuda = types.SimpleNamespace(is_available=lambda: True, Device=lambda: dev)
        cp.RawModule = lambda code, options=(): types.SimpleNamespace(
            get_function=lambda name: EmulatedFunction(self, name))
        self.module = cp


class EmulatedFunction:
    shared_size_bytes = 1792

    def __init__(self, device: EmulatedDevice, name: str) -> None:
        self.device, self.name, self.max_dynamic_shared_size_bytes = device, name, 48 * 1024

    def __call__(self, grid, block, args, shared_mem=0):
        sig = EmulatedDevice.SIGNATURES["rg_step" if self.name.startswith("rg_step") else self.name]
        assert len(args) == len(sig), f"{self.name}: {len(args)} arguments for {len(sig)}"
        for i, (a, t) in enumerate(zip(args, sig, strict=True)):
            if isinstance(t, tuple):
                assert isinstance(a, np.ndarray) and a.dtype == t[1] and a.flags.c_contiguous, (self.name, i)
            else:
                assert type(a) is t, f"{self.name}: argument {i} is {type(a).__name__}, kernel takes {t.__name__}"
        assert shared_mem <= max(self.max_dynamic_shared_size_bytes, 48 * 1024), "launch would fail"
        self.device.launches.append((self.name, shared_mem))
        d = self.device.exe.parent
        files = []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                a.tofile(d / f"arg{i}.bin")
                files.append(str(d / f"arg{i}.bin"))
        scal = [repr(float(a)) if isinstance(a, np.floating) else str(int(a)) for a in args
                if not isinstance(a, np.ndarray)]
        exe = str(self.device.exe)
        if self.name.startswith("rg_step"):
            use_shared = int(args[15])
            assert (shared_mem > 0) == bool(use_shared) and shared_mem in (0, 4 * int(args[11]))
            dt = "float32" if self.name.endswith("f32") else "float64"
            cmd = [exe, "step", dt, *scal, *files]
            outs = [(16, np.uint64), (17, np.uint64), (18, np.float64)]
        elif self.name.startswith("map_z"):
            cmd = [exe, "map", "float32" if self.name.endswith("f32") else "float64", scal[0], *files[:3],
                   files[3]]
            outs = [(3, args[3].dtype)]
        else:
            cmd = [exe, "philox", *scal, files[0], files[1]]
            outs = [(4, np.uint32)]
        subprocess.run(cmd, check=True)
        for i, dt in outs:
            args[i][...] = np.fromfile(d / f"arg{i}.bin", dtype=dt).reshape(args[i].shape)


@pytest.fixture
def emulated(host_kernel, monkeypatch):
    """A CupyBackend whose device is the host (see EmulatedDevice)."""
    from opsrg.rg.backends.cupy_backend import CupyBackend

    dev = EmulatedDevice(host_kernel)
    monkeypatch.setitem(sys.modules, "cupy", dev.module)
    b = CupyBackend()
    assert b.available()
    b.device = dev
    return b


@pytest.mark.gpu
@pytest.mark.parametrize(("sampler", "dtype"), [(None, "float32"), (AliasTable, "float32"),
                                                (InverseCDF, "float32"), (AliasTable, "float64"),
                                                (InverseCDF, "float64")])
def test_cupy_backend_on_emulated_device_matches_cpu(emulated, cpu, table2, sampler, dtype):
    """The cupy backend's launch code and the CUDA kernel's code (run on the host) draw the same
    samples as the cpu backend: float64 histograms identical, float32 within a few edge moves."""
    table = None if sampler is None else sampler.from_counts(table2)
    n = 200_000
    key = stream_key(9, 2, 0, "sample")
    a = cpu.sample_step(table, GRID, n, key, shift=0.003, dtype=dtype)
    b = emulated.sample_step(table, GRID, n, key, shift=0.003, dtype=dtype)
    assert emulated.device.launches == [(f"rg_step_f{dtype[-2:]}", 4 * GRID.nbins)]
    assert np.abs(a.counts - b.counts).sum() / 2 <= (0.002 * n if dtype == "float32" else 0)
    assert (a.underflow, a.overflow, a.nonfinite) == (b.underflow, b.overflow, b.nonfinite)
    ma, mb = moments(a), moments(b)
    for k in ma:
        assert abs(ma[k] - mb[k]) < 1e-5, k


@pytest.mark.gpu
def test_cupy_backend_emulated_launch_splitting_and_global_histogram(emulated, cpu, table2, monkeypatch):
    """Several launches (sample offsets) and the no-shared-memory path give the same histogram."""
    from opsrg.rg.backends import cupy_backend

    table = AliasTable.from_counts(table2)
    want = cpu.sample_step(table, GRID, 100_000, 4, dtype="float64")
    monkeypatch.setattr(cupy_backend, "MAX_LAUNCH", 30_000)
    got = emulated.sample_step(table, GRID, 100_000, 4, dtype="float64")
    assert [s for _, s in emulated.device.launches] == [4 * GRID.nbins] * 4
    assert np.array_equal(got.counts, want.counts) and abs(got.sum_z - want.sum_z) < 1e-9 * got.n
    emulated.device.module.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"] = 100 * 1024
    emulated._shared_ok.clear()
    emulated.device.launches.clear()
    got = emulated.sample_step(table, GRID, 100_000, 4, dtype="float64")
    assert emulated.device.launches[0][1] == 0 and got.extra["shared_histogram"] is False
    assert np.array_equal(got.counts, want.counts)


@pytest.mark.gpu
def test_cupy_backend_emulated_map_and_philox(emulated):
    from opsrg.rg.backends import _cpu_kernels as k

    z, ph = random_inputs(20_000, seed=41)
    assert np.max(np.abs(emulated.map_z(z, ph, "float64") - kernel.rg_step_z(z, ph))) <= 1e-10
    z32 = z.astype(np.float32)
    err = np.abs(emulated.map_z(z32, ph, "float32").astype(np.float64) - kernel.rg_step_z(z32.astype(np.float64), ph))
    assert np.median(err) < 4e-7 and np.count_nonzero(err > 1e-3) == 0
    idx = np.array([0, 1, 2**32 + 5], dtype=np.uint64)
    got = emulated.philox_words(idx, key=0x0123456789ABCDEF)
    for row, i in zip(got, idx.tolist(), strict=True):
        want = []
        for j in range(5):
            want += [int(x) for x in k.philox_block(np.array([i & 0xFFFFFFFF, i >> 32, j, 0], dtype=np.uint64),
                                                   np.array([0x89ABCDEF, 0x01234567], dtype=np.uint64))]
        assert [int(x) for x in row] == want


def _gpu_or_skip():
    from opsrg.rg.backends.cupy_backend import CupyBackend

    b = CupyBackend()
    if not b.available():
        pytest.skip(f"no CUDA GPU with CuPy: {b.unavailable_reason()}")
    return b


@pytest.fixture(scope="module")
def gpu():
    return _gpu_or_skip()


@pytest.mark.gpu
def test_gpu_philox_matches_cpu(gpu):
    from opsrg.rg.backends import _cpu_kernels as k

    got = gpu.philox_words(np.array([0, 1, 2**32 + 5], dtype=np.uint64), key=0x0123456789ABCDEF)
    k0, k1 = np.uint64(0x89ABCDEF), np.uint64(0x01234567)
    for row, i in zip(got, (0, 1, 2**32 + 5), strict=True):
        want = []
        for j in range(5):
            want += [int(x) for x in k.philox_block(np.array([i & 0xFFFFFFFF, i >> 32, j, 0], dtype=np.uint64),
                                                   np.array([k0, k1], dtype=np.uint64))]
        assert [int(x) for x in row] == want


@pytest.mark.gpu
def test_gpu_map_float64_and_float32(gpu):
    z, ph = random_inputs(200_000, seed=31)
    ref = kernel.rg_step_z(z, ph)
    assert np.max(np.abs(gpu.map_z(z, ph, "float64") - ref)) <= 1e-10
    z32 = z.astype(np.float32)
    err = np.abs(gpu.map_z(z32, ph, "float32").astype(np.float64) - kernel.rg_step_z(z32.astype(np.float64), ph))
    assert np.median(err) < 4e-7 and np.count_nonzero(err > 1e-3) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_first_step_from_uniform_g(gpu, dtype):
    r = gpu.sample_step(None, GRID, 1_000_000, stream_key(2024, 1, 0, "sample"), dtype=dtype)
    m = moments(r)
    assert r.counts.sum() + r.underflow + r.overflow + r.nonfinite == r.n == 1_000_000
    assert abs(m["std_z"] - FIRST_STD_Z) < 0.003 and abs(m["var_g"] - FIRST_VAR_G) < 0.003
    assert abs(m["mean_g"] - 0.5) < 0.003


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", [None, AliasTable, InverseCDF])
def test_gpu_step_matches_cpu_same_stream(gpu, cpu, table2, sampler):
    """Same key and table: the GPU draws the same samples as the cpu backend (float32 rounding
    differs, so a few samples near bin edges move) and the moments agree closely."""
    table = None if sampler is None else sampler.from_counts(table2)
    n = 2_000_000
    key = stream_key(9, 2, 0, "sample")
    a = cpu.sample_step(table, GRID, n, key, shift=0.003)
    b = gpu.sample_step(table, GRID, n, key, shift=0.003)
    assert np.abs(a.counts - b.counts).sum() / 2 <= 0.003 * n
    assert (a.underflow, a.overflow, a.nonfinite) == (b.underflow, b.overflow, b.nonfinite)
    ma, mb = moments(a), moments(b)
    for k in ma:
        assert abs(ma[k] - mb[k]) < 1e-4, k


@pytest.mark.gpu
def test_gpu_deterministic_streams(gpu, table2):
    table = AliasTable.from_counts(table2)
    a = gpu.sample_step(table, GRID, 3_000_000, 11)
    b = gpu.sample_step(table, GRID, 3_000_000, 11)
    c = gpu.sample_step(table, GRID, 3_000_000, 12)
    assert np.array_equal(a.counts, b.counts) and a.underflow == b.underflow
    assert abs(a.sum_z - b.sum_z) < 1e-9 * a.n  # float64 atomics: order may differ in the last bits
    assert not np.array_equal(a.counts, c.counts)


@pytest.mark.gpu
def test_gpu_large_step_statistics(gpu):
    """1e8 samples of a first step in one call: std z' to +-5e-4."""
    r = gpu.sample_step(None, GRID, 100_000_000, stream_key(1, 1, 0, "sample"))
    assert abs(moments(r)["std_z"] - 2.0335) < 5e-4

