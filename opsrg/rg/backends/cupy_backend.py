"""The ``cupy`` backend: one fused CUDA kernel per RG step (``kernels/rg_step.cu``).

The kernel draws the same Philox4x32-10 words per (key, sample index) as the ``cpu`` backend,
so one key gives the same samples on both (up to float32 rounding), builds a block-private
histogram in shared memory and flushes it, with the moment sums, once per block: no per-sample
traffic to device memory. CuPy is imported only inside methods; without CuPy or a GPU the
backend reports itself unavailable and asking for it raises :class:`BackendUnavailableError`.

The CUDA source is found, in order, at ``$OPSRG_RG_KERNEL``, at ``kernels/rg_step.cu`` of the
source checkout (beside the ``opsrg`` package) and as package data ``opsrg/rg/backends/rg_step.cu``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from opsrg.core.errors import BackendUnavailableError, InputError
from opsrg.rg.backends import OptionalBackend
from opsrg.rg.backends.cpu import check_dtype, compact_guide, map_inputs, packed_table, split_key

if TYPE_CHECKING:
    from opsrg.rg.backends import StepResult
    from opsrg.rg.histogram import AliasTable, Grid, InverseCDF

KERNEL_FILE = "rg_step.cu"
KERNEL_NAMES = ("rg_step_f32", "rg_step_f64", "map_z_f32", "map_z_f64", "philox_words")
MODE_FIRST, MODE_ALIAS, MODE_ICDF = 0, 1, 2
THREADS = 1024  # the kernels' __launch_bounds__
MAX_LAUNCH = 1 << 31  # samples per launch: a uint32 shared-memory bin count cannot overflow
NVRTC_OPTIONS = ("--std=c++14",)


def kernel_path() -> Path:
    """Where the CUDA source is: env override, source checkout, then package data."""
    env = os.environ.get("OPSRG_RG_KERNEL")
    if env:
        p = Path(env)
        if not p.is_file():
            raise BackendUnavailableError(f"OPSRG_RG_KERNEL={env} is not a file")
        return p
    checkout = Path(__file__).resolve().parents[3] / "kernels" / KERNEL_FILE
    if checkout.is_file():
        return checkout
    try:
        res = resources.files("opsrg.rg.backends").joinpath(KERNEL_FILE)
        if res.is_file():
            with resources.as_file(res) as p:
                return Path(p)
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    raise BackendUnavailableError(
        f"CUDA kernel source {KERNEL_FILE} not found (looked at {checkout} and in the package)",
        hint="run from a source checkout, or set OPSRG_RG_KERNEL to kernels/rg_step.cu")


def kernel_source() -> str:
    return kernel_path().read_text(encoding="utf-8")


class CupyBackend(OptionalBackend):
    """Fused GPU backend (CuPy + NVRTC); float32 by default, float64 on request."""

    name = "cupy"
    samplers = ("alias", "icdf")

    install_hint = "use --backend cpu or --backend numpy"

    def __init__(self) -> None:
        super().__init__()
        self._module: Any = None
        self._shared_ok: dict[str, bool] = {}

    # ------------------------------------------------------------------------- availability
    def _probe(self) -> str | None:
        try:
            import cupy
        except Exception as exc:  # noqa: BLE001 - ImportError, or a broken CUDA install
            return f"cupy cannot be imported ({exc.__class__.__name__}: {exc})"
        try:
            ok = bool(cupy.cuda.is_available())
        except Exception as exc:  # noqa: BLE001 - CUDA errors on odd setups
            return f"CUDA error while looking for a GPU: {exc}"
        return None if ok else "cupy is installed but no CUDA GPU (or driver) is available"

    def _require(self) -> Any:
        self._require_available()
        import cupy

        if self._module is None:
            self._module = cupy.RawModule(code=kernel_source(), options=NVRTC_OPTIONS)
        return cupy

    def _function(self, name: str) -> Any:
        return self._module.get_function(name)

    @staticmethod
    def _device_attr(cp: Any, name: str, code: int) -> int:
        """A device attribute by CuPy's name, else by its cudaDeviceAttr number."""
        dev = cp.cuda.Device()
        try:
            return int(dev.attributes[name])
        except (KeyError, AttributeError):
            return int(cp.cuda.runtime.deviceGetAttribute(code, dev.id))

    def _blocks(self, cp: Any) -> int:
        return self._device_attr(cp, "MultiProcessorCount", 16)  # one 1024-thread block per SM

    def _step_function(self, cp: Any, dtype: str, nbins: int) -> tuple[Any, int, int]:
        """(kernel, dynamic shared bytes, use_shared): the shared histogram when it fits."""
        fn = self._function("rg_step_f32" if dtype == "float32" else "rg_step_f64")
        shmem = 4 * nbins
        key = f"{dtype}:{nbins}"
        if key not in self._shared_ok:
            optin = self._device_attr(cp, "MaxSharedMemoryPerBlockOptin", 97)
            static = int(getattr(fn, "shared_size_bytes", 2048))  # the block-reduction scratch
            ok = shmem + static <= optin
            if ok and shmem > 48 * 1024:
                fn.max_dynamic_shared_size_bytes = shmem
            self._shared_ok[key] = ok
        if self._shared_ok[key]:
            return fn, shmem, 1
        return fn, 0, 0

    # ------------------------------------------------------------------------------ one step
    def sample_step(self, table: AliasTable | InverseCDF | None, grid: Grid, n: int, key: int, *,
                    shift: float = 0.0, dtype: str = "float32",
                    batch_size: int = 1_000_000) -> StepResult:
        """One step of n samples on the GPU (``batch_size`` is ignored: the kernel streams)."""
        from opsrg.rg.backends import StepResult
        from opsrg.rg.histogram import InverseCDF

        cp = self._require()
        dtype = check_dtype(dtype)
        n = int(n)
        if n < 0:
            raise InputError(f"number of samples must be >= 0 (got {n})")
        if not np.isfinite(shift):
            raise InputError(f"shift must be finite (got {shift})")
        k0, k1 = split_key(key)
        nb = int(grid.nbins)
        packed = cp.zeros(1, dtype=cp.uint64)
        cum = cp.zeros(2, dtype=cp.float64)
        guide = cp.zeros(2, dtype=cp.int32)
        total = xmax = 1.0
        if table is None:
            mode = MODE_FIRST
        elif isinstance(table, InverseCDF):
            if table.nbins != nb:
                raise InputError(f"sampler has {table.nbins} bins, grid has {nb}")
            mode = MODE_ICDF
            cum_h = np.ascontiguousarray(table.cum, dtype=np.float64)
            cum, guide = cp.asarray(cum_h), cp.asarray(compact_guide(cum_h))
            total = float(cum_h[-1])
            xmax = float(np.nextafter(total, 0.0))
        else:
            mode = MODE_ALIAS
            packed = cp.asarray(packed_table(table, grid))
        counts = cp.zeros(nb, dtype=cp.uint64)
        flows = cp.zeros(3, dtype=cp.uint64)
        sums = cp.zeros(4, dtype=cp.float64)
        fn, shmem, use_shared = self._step_function(cp, dtype, nb)
        blocks = self._blocks(cp)
        done = 0
        while done < n:
            m = min(n - done, MAX_LAUNCH)
            fn((blocks,), (THREADS,),
               (np.uint64(done), np.uint64(m), np.uint32(k0), np.uint32(k1), np.int32(mode), packed, cum, guide,
                np.int64(guide.size), np.float64(total), np.float64(xmax), np.uint32(nb),
                np.float64(grid.width), np.float64(grid.zmax), np.float64(shift), np.int32(use_shared),
                counts, flows, sums),
               shared_mem=shmem)
            done += m
        c = cp.asnumpy(counts).astype(np.int64)
        f = cp.asnumpy(flows).astype(np.int64)
        s = cp.asnumpy(sums)
        return StepResult(counts=c, n=n, underflow=int(f[0]), overflow=int(f[1]), nonfinite=int(f[2]),
                          sum_z=float(s[0]), sum_z2=float(s[1]), sum_g=float(s[2]), sum_g2=float(s[3]),
                          extra={"backend": self.name, "dtype": dtype, "rng": "philox4x32-10",
                                 "blocks": blocks, "threads": THREADS, "shared_histogram": bool(use_shared)})

    # ---------------------------------------------------------------------- per-sample tools
    def map_z(self, z: np.ndarray, phases: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """The kernel's per-sample map: z (5, N), loop phases (4, N) -> z' (N,) in ``dtype``."""
        cp = self._require()
        dtype = check_dtype(dtype)
        z_h, frac_h, quad_h = map_inputs(z, phases, dtype)
        n = z_h.shape[1]
        zz, frac, quad = cp.asarray(z_h), cp.asarray(frac_h), cp.asarray(quad_h)
        out = cp.empty(n, dtype=z_h.dtype)
        fn = self._function("map_z_f32" if dtype == "float32" else "map_z_f64")
        blocks = max(1, min((n + 255) // 256, 65535))
        fn((blocks,), (256,), (zz, frac, quad, out, np.int64(n)))
        return cp.asnumpy(out)

    def philox_words(self, idx: np.ndarray, key: int) -> np.ndarray:
        """The 20 Philox words of each sample index (tests: same stream as the cpu backend)."""
        cp = self._require()
        k0, k1 = split_key(key)
        d_idx = cp.asarray(np.asarray(idx, dtype=np.uint64))
        n = int(d_idx.size)
        out = cp.empty((n, 20), dtype=cp.uint32)
        self._function("philox_words")((max(1, (n + 255) // 256),), (256,),
                                        (d_idx, np.int64(n), np.uint32(k0), np.uint32(k1), out))
        return cp.asnumpy(out)
