"""Backend contract: one RG step's worth of samples -> a :class:`StepResult`.

A backend draws 5 input z per sample from an alias table (or uniform G when ``table is None``),
4 uniform loop phases, applies the map of RG_SPEC 2.2 and histograms z'. Backends: ``numpy``
(always), ``cpu`` (numba) and ``cupy`` (GPU), the last two imported lazily so a missing module or
device just makes them unavailable.

Samplers: FP steps pass an :class:`AliasTable`; EXP steps pass an :class:`InverseCDF`, because
common random numbers need the same uniform to give nearby z in the +z0 and -z0 histograms, which
alias tables do not (docs/rg.md, "Sampling"). A backend lists what it accepts in an optional
``samplers`` attribute (default ``("alias",)``); the EXP loop only runs on backends with "icdf".

Counting convention (all backends): z' < -zmax (including -inf) is ``underflow``, z' >= zmax
(including +inf) is ``overflow``, NaN is ``nonfinite``; the sums cover in-range samples only.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from opsrg.core.errors import BackendUnavailableError, InputError

if TYPE_CHECKING:
    import numpy as np

    from opsrg.rg.histogram import AliasTable, Grid, InverseCDF

BACKEND_NAMES = ("numpy", "cpu", "cupy", "auto")
_MODULES = {
    "numpy": ("opsrg.rg.backends.numpy_backend", "NumpyBackend"),
    "cpu": ("opsrg.rg.backends.cpu", "CpuBackend"),
    "cupy": ("opsrg.rg.backends.cupy_backend", "CupyBackend"),
}


@dataclass
class StepResult:
    """Histogram and moment sums of one shard of one step; ``a + b`` merges shards."""

    counts: np.ndarray  # int64, nbins
    n: int  # samples drawn (in range or not)
    underflow: int = 0
    overflow: int = 0
    nonfinite: int = 0
    sum_z: float = 0.0
    sum_z2: float = 0.0
    sum_g: float = 0.0
    sum_g2: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, nbins: int) -> StepResult:
        import numpy as np

        return cls(counts=np.zeros(nbins, dtype=np.int64), n=0)

    def __add__(self, other: StepResult) -> StepResult:
        if self.counts.shape != other.counts.shape:
            raise InputError(f"cannot merge histograms of {self.counts.size} and {other.counts.size} bins")
        return StepResult(
            counts=self.counts + other.counts,
            n=self.n + other.n,
            underflow=self.underflow + other.underflow,
            overflow=self.overflow + other.overflow,
            nonfinite=self.nonfinite + other.nonfinite,
            sum_z=self.sum_z + other.sum_z,
            sum_z2=self.sum_z2 + other.sum_z2,
            sum_g=self.sum_g + other.sum_g,
            sum_g2=self.sum_g2 + other.sum_g2,
        )

    @property
    def in_range(self) -> int:
        return int(self.counts.sum())

    def scalars(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in
                ("n", "underflow", "overflow", "nonfinite", "sum_z", "sum_z2", "sum_g", "sum_g2")}


def accumulate(z: np.ndarray, grid: Grid) -> StepResult:
    """Histogram z' on ``grid`` and sum z, z^2, G, G^2 in float64 over in-range samples."""
    import numpy as np

    z = np.asarray(z)
    idx = grid.bin_index(z)
    ok = (idx >= 0) & (idx < grid.nbins)
    zin = z[ok].astype(np.float64)
    # G = 1/(1+e^z), evaluated without overflow for either sign of z
    e = np.exp(-np.abs(zin))
    g = np.where(zin >= 0, e / (1.0 + e), 1.0 / (1.0 + e))
    return StepResult(
        counts=np.bincount(idx[ok], minlength=grid.nbins).astype(np.int64),
        n=int(z.size),
        underflow=int(np.count_nonzero(idx == -1)),
        overflow=int(np.count_nonzero(idx == grid.nbins)),
        nonfinite=int(np.count_nonzero(idx == -2)),
        sum_z=float(zin.sum()),
        sum_z2=float(np.dot(zin, zin)),
        sum_g=float(g.sum()),
        sum_g2=float(np.dot(g, g)),
    )


@runtime_checkable
class Backend(Protocol):
    name: str

    def available(self) -> bool: ...

    def sample_step(self, table: AliasTable | InverseCDF | None, grid: Grid, n: int, key: int, *,
                    shift: float = 0.0, dtype: str = "float32",
                    batch_size: int = 1_000_000) -> StepResult: ...


class OptionalBackend(abc.ABC):
    """A backend that needs something this machine may lack (numba, a GPU).

    Subclasses say what is missing in ``_probe``; availability, its reason and the refusal are
    shared, so every optional backend explains itself the same way.
    """

    name = "?"
    install_hint = ""

    def __init__(self) -> None:
        self._reason: str | None = None

    @abc.abstractmethod
    def _probe(self) -> str | None:
        """Why this backend cannot run here, or None when it can."""

    def available(self) -> bool:
        self._reason = self._probe()
        return self._reason is None

    def unavailable_reason(self) -> str:
        self.available()
        return self._reason or ""

    def _require_available(self) -> None:
        if not self.available():
            raise BackendUnavailableError(f"backend {self.name!r} cannot run here: {self._reason}",
                                          hint=self.install_hint)


def _load(name: str) -> Backend:
    modname, clsname = _MODULES[name]
    try:
        mod = importlib.import_module(modname)
        backend = getattr(mod, clsname)()
    except ImportError as exc:
        raise BackendUnavailableError(f"backend {name!r} cannot be imported: {exc}",
                                      hint="use --backend numpy, or install its dependencies") from exc
    return backend


def supports(backend: Backend, sampler: str) -> bool:
    return sampler in getattr(backend, "samplers", ("alias",))


def get_backend(name: str = "auto", sampler: str = "alias") -> Backend:
    """Backend by name; ``auto`` tries cupy, then cpu, then numpy (the first that has ``sampler``)."""
    if name not in BACKEND_NAMES:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        skipped = []
        for cand in ("cupy", "cpu"):
            try:
                b = _load(cand)
                if b.available() and supports(b, sampler):
                    return b
                skipped.append(f"{cand}: unavailable or no {sampler!r} sampler")
            except Exception as exc:  # noqa: BLE001 - a broken optional backend must not stop auto
                skipped.append(f"{cand}: {exc.__class__.__name__}: {exc}")
        b = _load("numpy")
        b.auto_skipped = skipped  # why auto fell back, for the run record
        return b
    b = _load(name)
    if not b.available():
        reason = getattr(b, "unavailable_reason", None)
        why = reason() if callable(reason) else "not available on this machine"
        raise BackendUnavailableError(f"backend {name!r} cannot run here: {why}",
                                      hint="use --backend numpy or --backend auto")
    if not supports(b, sampler):
        raise BackendUnavailableError(
            f"backend {name!r} has no {sampler!r} sampler, which this run needs"
            + (" (EXP draws by inverse CDF to keep common random numbers effective)" if sampler == "icdf" else ""),
            hint="use --backend numpy or --backend auto")
    return b
