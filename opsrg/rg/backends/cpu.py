"""The ``cpu`` backend: one multi-threaded numba pass per RG step.

Per sample: 20 Philox4x32-10 words keyed by (key, global sample index), 5 draws (alias table,
inverse CDF, or uniform G on a first step), 4 loop phases, the map z' = ln(|N_r|^2/|N_t|^2) in
float32 (or float64) and a private int64 histogram per worker thread, reduced at the end. Moment sums are float64, kept per chunk and
added in chunk order, so a result depends only on (key, n, batch_size), never on the thread
count or scheduling; the counts do not even depend on batch_size. The kernels live in
:mod:`opsrg.rg.backends._cpu_kernels`, imported (and compiled, or loaded from numba's cache) on
first use, so importing this module costs nothing.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import numpy as np

from opsrg.core.errors import InputError
from opsrg.rg.backends import OptionalBackend

if TYPE_CHECKING:
    from opsrg.rg.backends import StepResult
    from opsrg.rg.histogram import AliasTable, Grid, InverseCDF

DTYPES = ("float32", "float64")
MAX_CHUNK = 1 << 16  # samples per chunk: the unit of work handed to a thread
MAX_CHUNKS = 1 << 16  # chunks per call (per-chunk sums are kept apart): larger n, larger chunks
TWO32 = 4294967296.0


def _kernels() -> Any:
    from opsrg.rg.backends import _cpu_kernels

    return _cpu_kernels


def check_dtype(dtype: str) -> str:
    d = str(np.dtype(dtype)) if dtype in DTYPES or dtype in (np.float32, np.float64) else str(dtype)
    if d not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    return d


def map_inputs(z: np.ndarray, phases: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked inputs of a per-sample ``map_z``: z (5, N) in ``dtype``, and the loop phases (4, N)
    reduced in float64 to (pi/2)(quad + frac) with frac in [-1/2, 1/2] (in ``dtype``), quad in 0..3."""
    z = np.asarray(z)
    ph = np.asarray(phases, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] != 5 or ph.shape != (4, z.shape[1]):
        raise InputError(f"need z of shape (5, N) and phases of shape (4, N); got {z.shape}, {ph.shape}")
    ft = np.dtype(check_dtype(dtype))
    y = ph * (2.0 / np.pi)
    q = np.rint(y)
    return np.ascontiguousarray(z, dtype=ft), (y - q).astype(ft), np.mod(q, 4).astype(np.uint32)


def split_key(key: int) -> tuple[np.uint64, np.uint64]:
    """The two 32-bit Philox key words (low, high) of a 64-bit stream key."""
    k = int(key)
    if not 0 <= k < 1 << 64:
        raise InputError(f"stream key must be an unsigned 64-bit integer (got {key})")
    return np.uint64(k & 0xFFFFFFFF), np.uint64(k >> 32)


def packed_table(table: AliasTable, grid: Grid) -> np.ndarray:
    """Alias table as one uint64 per column: ceil(prob * 2^32) << 32 | alias.

    A draw keeps column i when its 32-bit word x1 < ceil(prob[i] * 2^32), which is u2 < prob[i]
    for u2 = x1 / 2^32; full columns (prob = 1) alias to themselves. One 8-byte load per draw.
    """
    nb = int(grid.nbins)
    prob = np.asarray(table.prob, dtype=np.float64)
    alias = np.asarray(table.alias, dtype=np.int64)
    if prob.shape != (nb,) or alias.shape != (nb,):
        raise InputError(f"alias table has {prob.size} columns for a grid of {nb} bins")
    if nb >= 1 << 32:
        raise InputError(f"too many bins for the cpu backend ({nb})")
    if alias.size and (alias.min() < 0 or alias.max() >= nb):
        raise InputError("alias table refers to a bin outside the grid")
    thr = np.minimum(np.ceil(np.clip(prob, 0.0, 1.0) * TWO32), TWO32 - 1).astype(np.uint64)
    alias = np.where(prob >= 1.0, np.arange(nb), alias).astype(np.uint64)
    return (thr << np.uint64(32)) | alias


def compact_guide(cum: np.ndarray, cells_per_bin: int = 2) -> np.ndarray:
    """int32 guide of the inverse CDF: the bin at the start of each of cells_per_bin * nbins
    equal-probability cells (plus one). A guide only speeds up the search; the drawn bin is the
    same for any guide, so this small one (400 KB for 50 000 bins, against the core's 1.6 MB
    int64 table) gives the same samples and stays in cache."""
    nb = cum.size - 1
    m = cells_per_bin * nb
    starts = np.arange(m + 1) * (cum[-1] / m)
    guide = np.searchsorted(cum, starts, side="right") - 1
    return np.clip(guide, 0, nb - 1).astype(np.int32)


def sampler_arrays(table: AliasTable | InverseCDF | None, grid: Grid,
                   kern: Any) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(mode, packed alias table, cum, guide) for the kernels; unused arrays are tiny dummies."""
    from opsrg.rg.histogram import InverseCDF

    dummy_f = np.zeros(2, dtype=np.float64)
    dummy_i = np.zeros(2, dtype=np.int32)
    if isinstance(table, InverseCDF):
        if table.nbins != grid.nbins:
            raise InputError(f"sampler has {table.nbins} bins, grid has {grid.nbins}")
        cum = np.ascontiguousarray(table.cum, dtype=np.float64)
        return kern.MODE_ICDF, np.zeros(1, dtype=np.uint64), cum, compact_guide(cum)
    if table is None:
        return kern.MODE_FIRST, np.zeros(1, dtype=np.uint64), dummy_f, dummy_i
    return kern.MODE_ALIAS, packed_table(table, grid), dummy_f, dummy_i


class CpuBackend(OptionalBackend):
    """Multi-threaded numba backend (float32 or float64 arithmetic, all cores)."""

    name = "cpu"
    samplers = ("alias", "icdf")
    default_batch_size = MAX_CHUNK

    install_hint = "install numba, or use --backend numpy"

    def _probe(self) -> str | None:
        if importlib.util.find_spec("numba") is None:
            return "numba is not installed"
        try:
            import numba  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - a broken numba install makes the backend unavailable
            return f"numba cannot be imported: {exc}"
        return None

    def _require(self) -> Any:
        self._require_available()
        return _kernels()

    @staticmethod
    def threads() -> int:
        import numba

        return int(numba.get_num_threads())

    def sample_step(self, table: AliasTable | InverseCDF | None, grid: Grid, n: int, key: int, *,
                    shift: float = 0.0, dtype: str = "float32",
                    batch_size: int = 1_000_000) -> StepResult:
        """One step of n samples drawn from ``table`` (uniform G when None), shifted by ``shift``.

        ``batch_size`` caps the chunk (the unit of work a thread claims, at most 65 536 samples
        unless n > 2^32); the counts do not depend on it, the float64 sums only through their
        summation order.
        """
        from opsrg.rg.backends import StepResult

        kern = self._require()
        dtype = check_dtype(dtype)
        n = int(n)
        if n < 0:
            raise InputError(f"number of samples must be >= 0 (got {n})")
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1 (got {batch_size})")
        if not np.isfinite(shift):
            raise InputError(f"shift must be finite (got {shift})")
        # chunks of at most 65 536 samples, and at most 65 536 chunks (their sums stay < 4 MB)
        chunk = max(int(min(int(batch_size), MAX_CHUNK)), -(-n // MAX_CHUNKS))
        k0, k1 = split_key(key)
        mode, packed, cum, guide = sampler_arrays(table, grid, kern)
        workers = self.threads()
        fn = kern.step32 if dtype == "float32" else kern.step64
        counts, sums, flows = fn(n, k0, k1, mode, packed, cum, guide, int(grid.nbins), float(grid.width),
                                 float(grid.zmax), float(shift), chunk, workers)
        tot = np.zeros(4)
        for row in sums:  # chunk order: independent of thread scheduling
            tot += row
        fl = flows.sum(axis=0)
        return StepResult(counts=counts.sum(axis=0), n=n, underflow=int(fl[0]), overflow=int(fl[1]),
                          nonfinite=int(fl[2]), sum_z=float(tot[0]), sum_z2=float(tot[1]),
                          sum_g=float(tot[2]), sum_g2=float(tot[3]),
                          extra={"backend": self.name, "dtype": dtype, "rng": "philox4x32-10",
                                 "chunk": chunk, "threads": workers})

    def warm(self) -> None:
        """Compile both step kernels now, or load them from numba's cache: a timed run then
        measures sampling, not compiling, and processes that share one cache compile once."""
        from opsrg.rg.histogram import Grid

        for dtype in ("float32", "float64"):
            self.sample_step(None, Grid(), 64, 0, dtype=dtype)

    def map_z(self, z: np.ndarray, phases: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """The per-sample map of this backend: z (5, N), loop phases (4, N) -> z' (N,) in ``dtype``.

        Phases are reduced to a quarter period in float64; sin, cos, exp and log are the
        backend's own polynomials (float32) or libm (float64, exp/log).
        """
        kern = self._require()
        dtype = check_dtype(dtype)
        zz, frac, quad = map_inputs(z, phases, dtype)
        sc = kern.sincos_reduced32 if dtype == "float32" else kern.sincos_reduced64
        c, s = sc(frac.ravel(), quad.ravel().astype(np.uint64))
        mz = kern.map_z32 if dtype == "float32" else kern.map_z64
        return mz(zz, c.reshape(4, -1), s.reshape(4, -1))
