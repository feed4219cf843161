"""What names a run and where its files live, without numpy: the ops side reads these too.

:class:`RunConfig` is everything that decides a run's random histograms (its hash pins a run
folder); :class:`RunPaths` spells the name of every file a run writes, its step markers included.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from opsrg.core.errors import InputError
from opsrg.rg.checks import check_grid

if TYPE_CHECKING:
    from opsrg.rg.histogram import Grid


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the random histograms of a run (and so enters the config hash).

    ``steps``, the backend and the batch size are not part of it: more steps continue a run,
    and the other two are execution choices recorded per step in the DONE markers.
    """

    mode: str  # "fp" or "exp"
    samples: int
    seed: int
    nbins: int = 50000
    zmax: float = 25.0
    method: str = "analytic"
    dtype: str = "float32"
    shards: int = 1
    shifts: tuple[float, ...] = (0.0,)  # signed and sorted; (0.0,) for fp
    fp_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("fp", "exp"):
            raise InputError(f"mode must be fp or exp (got {self.mode!r})")
        if self.samples < 1 or self.shards < 1 or self.samples < self.shards:
            raise InputError(f"need samples >= shards >= 1 (got samples={self.samples}, shards={self.shards})")
        if self.seed < 0:
            raise InputError(f"seed must be non-negative (got {self.seed})")
        if self.method not in ("analytic", "numerical"):
            raise InputError(f"method must be analytic or numerical (got {self.method!r})")
        if self.dtype not in ("float32", "float64"):
            raise InputError(f"dtype must be float32 or float64 (got {self.dtype!r})")
        check_grid(self.nbins, self.zmax)

    @property
    def grid(self) -> Grid:
        from opsrg.rg.histogram import Grid

        return Grid(self.nbins, self.zmax)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shifts"] = list(self.shifts)
        return d

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def shard_sizes(self) -> list[int]:
        q, rem = divmod(self.samples, self.shards)
        return [q + (1 if i < rem else 0) for i in range(self.shards)]


@dataclass(frozen=True)
class RunPaths:
    """The one place that spells the names of a run's files."""

    root: Path

    RUN_JSON: ClassVar[str] = "run.json"
    SUMMARY: ClassVar[str] = "summary.json"  # also what a shell row writes: ok and its exit code
    METRICS: ClassVar[str] = "metrics.json"  # what a user's program may write: SWEEP_METRICS are read from it

    @property
    def run_json(self) -> Path:
        return self.root / self.RUN_JSON

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    @property
    def logs(self) -> Path:
        """The logs of the run's task, every attempt's, copied in when it ends: they travel with
        the results (``fetch-run``)."""
        return self.root / "logs"

    @property
    def nu_json(self) -> Path:
        return self.root / "nu.json"

    @property
    def fp_input(self) -> Path:
        return self.root / "fp_input.npz"

    def done(self, k: int) -> Path:
        return self.root / f"DONE_RG{k}.json"

    def unsym(self, k: int, shift: float | None = None) -> Path:
        if shift is None:
            return self.root / f"z_hist_unsym_RG{k}.npz"
        return self.root / f"shift_{shift:+.6f}" / f"z_hist_unsym_RG{k}.npz"

    def sym(self, k: int) -> Path:
        return self.root / f"sym_z_hist_RG{k}.npz"

    def shard_dir(self, k: int) -> Path:
        return self.root / "shards" / f"RG{k}"

    @staticmethod
    def shard_glob() -> str:
        """The shard folders of every step, relative to a run's folder."""
        return "shards/RG*"

    def part(self, k: int, i: int) -> Path:
        return self.shard_dir(k) / f"part_{i:05d}.npz"

    def ready(self, k: int, i: int) -> Path:
        return self.shard_dir(k) / f"part_{i:05d}.READY"

    # the markers as patterns, for readers that look across runs (resume planning, doctor)
    DONE_GLOB: ClassVar[str] = "DONE_RG*.json"
    READY_GLOB: ClassVar[str] = "part_*.READY"
    DONE_RE: ClassVar[re.Pattern[str]] = re.compile(r"^DONE_RG(\d+)\.json$")
    READY_RE: ClassVar[re.Pattern[str]] = re.compile(r"^part_(\d+)\.READY$")

    def ready_shards(self, k: int) -> set[int]:
        """The shards of step ``k`` marked READY."""
        d = self.shard_dir(k)
        if not d.is_dir():
            return set()
        return {int(m.group(1)) for x in d.glob(self.READY_GLOB) if (m := self.READY_RE.match(x.name))}
